"""defakenet.suite without a model: suite files and --data arguments, their errors, the cell comparison the gate
uses, and the rows a suite scores (real manifests of small synthetic sets)."""

from __future__ import annotations

import pytest

from defakenet.errors import ConfigError, DataError, UserError
from defakenet.suite import (Suite, SuiteSet, cell_aucs_from_tags, compare_cells, load_suite, parse_data_arg,
                             suite_from_args, suite_rows)


def _write(tmp_path, text: str):
    p = tmp_path / "suite.yaml"
    p.write_text(text)
    return p


def test_data_args_name_sets():
    assert parse_data_arg("sample=/data/faces") == ("sample", "/data/faces")
    assert parse_data_arg("/data/photoshop-faces/") == ("photoshop-faces", "/data/photoshop-faces/")
    assert parse_data_arg("s3://bucket/a=b") == ("a_b", "s3://bucket/a=b")  # '=' inside a URI is not a name
    s = suite_from_args(["a=/x", "/y/b"], split="all", degrade="none,JPEG:75,jpeg:75")
    assert [(x.name, x.root, x.split) for x in s.sets] == [("a", "/x", "all"), ("b", "/y/b", "all")]
    assert s.degradations == ("none", "jpeg:75") and s.resamples == 1000
    assert [(c[0].name, c[1]) for c in s.cells()] == [("a", "none"), ("a", "jpeg:75"), ("b", "none"), ("b", "jpeg:75")]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"data": []}, UserError, "nothing to evaluate: pass --data"),
    ({"data": ["a=/x", "a=/y"]}, ConfigError, "two sets are named 'a'"),
    ({"data": ["/x"], "split": "holdout"}, DataError, "Invalid split 'holdout'. Only train, valid, test, all"),
    ({"data": ["/x"], "degrade": "jpg:75"}, ConfigError, "unknown degradation 'jpg:75'"),
    ({"data": ["/x"], "resamples": 10}, UserError, "--bootstrap 10: expected at least 100"),
])
def test_bad_arguments_are_one_line(kwargs, error, match):
    with pytest.raises(error, match=match):
        suite_from_args(**kwargs)


def test_suite_file_resolves_roots_next_to_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DATASETS", "/srv/data")
    p = _write(tmp_path, "sets:\n  sample: {root: faces, split: test}\n"
                         "  ps: {root: \"${DATASETS}/photoshop\", split: all, degradations: [none]}\n"
                         "  remote: s3://bucket/faces\n"
                         "degradations: [none, jpeg:75, blur:1]\nresamples: 200\nseed: 3\n")
    s = load_suite(p)
    assert [(x.name, x.root, x.split, x.degradations) for x in s.sets] == [
        ("sample", str(tmp_path / "faces"), "test", ()), ("ps", "/srv/data/photoshop", "all", ("none",)),
        ("remote", "s3://bucket/faces", "test", ())]
    assert (s.degradations, s.resamples, s.seed, s.source) == (("none", "jpeg:75", "blur:1"), 200, 3, str(p))
    assert [(c[0].name, c[1]) for c in s.cells()] == [
        ("sample", "none"), ("sample", "jpeg:75"), ("sample", "blur:1"), ("ps", "none"), ("remote", "none"),
        ("remote", "jpeg:75"), ("remote", "blur:1")]
    # --data adds a set, --degrade replaces the file's degradations
    both = suite_from_args(["extra=/e"], degrade="none", suite_file=str(p))
    assert [x.name for x in both.sets] == ["sample", "ps", "remote", "extra"] and both.degradations == ("none",)


def test_the_digest_follows_what_is_scored():
    a = Suite((SuiteSet("x", "/x"),), ("none", "jpeg:75"))
    assert a.digest() == Suite((SuiteSet("x", "/x"),), ("none", "jpeg:75"), source="elsewhere").digest()
    assert a.digest() != Suite((SuiteSet("x", "/x", "all"),), ("none", "jpeg:75")).digest()
    assert a.digest() != Suite((SuiteSet("x", "/x"),), ("none",)).digest()
    assert a.digest() != Suite((SuiteSet("x", "/x"),), ("none", "jpeg:75"), resamples=500).digest()


@pytest.mark.parametrize("text, match", [
    ("sets: [a, b]\n", "'sets' must map set names"),
    ("sets: {a: {split: test}}\n", "set 'a' needs a root"),
    ("sets: {a: {root: x, splt: test}}\n", "set 'a' has unknown key 'splt'; valid keys: root, split, degradations"),
    ("sets: {a: {root: x, split: holdout}}\n", "set 'a' has split 'holdout'"),
    ("sets: {a: x}\ndegradation: [none]\n", "unknown key 'degradation'; valid keys: sets, degradations"),
    ("sets: {a: x}\ndegradations: [none, blur:0]\n", "invalid degradation 'blur:0'"),
    ("sets: {'a b': x}\n", "set name 'a b' must be letters"),
    ("sets: {a: x}\nresamples: 5\n", "resamples must be an integer >= 100"),
    ("sets: {a: x\n", "is not valid YAML"),
])
def test_bad_suite_files_name_the_file_and_the_key(tmp_path, text, match):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as e:
        load_suite(p)
    assert str(p) in str(e.value)


def test_a_missing_suite_file():
    with pytest.raises(ConfigError, match="suite file /no/suite.yaml does not exist"):
        load_suite("/no/suite.yaml")


def test_rows_are_every_image_once_per_degradation(synth_small, tmp_path):
    from defakenet.data.layouts import read_manifest

    s = Suite((SuiteSet("a", str(synth_small), "test"), SuiteSet("b", str(synth_small), "all", ("none",))),
              ("none", "blur:1"))
    rows = suite_rows(s, (0.7, 0.15, 0.15), 0)
    manifest = read_manifest(synth_small)
    n_test = int((manifest["split"] == "test").sum())
    assert rows.groupby(["set", "degrade"], sort=False).size().to_dict() == {
        ("a", "none"): n_test, ("a", "blur:1"): n_test, ("b", "none"): len(manifest)}
    assert set(rows[rows["set"] == "a"]["path"]) == set(manifest[manifest["split"] == "test"]["path"])


def test_a_missing_or_one_class_set_is_one_line_naming_it(synth_small, tmp_path):
    with pytest.raises(DataError, match=r"^suite set 'gone': .*/nowhere"):
        suite_rows(Suite((SuiteSet("gone", str(tmp_path / "nowhere")),)), (0.7, 0.15, 0.15), 0)
    (tmp_path / "one" / "real").mkdir(parents=True)
    (tmp_path / "one" / "fake").mkdir()
    for png in sorted((synth_small / "real").glob("*.png"))[:5]:
        (tmp_path / "one" / "real" / png.name).write_bytes(png.read_bytes())
    with pytest.raises(DataError, match=r"^suite set 'one'"):
        suite_rows(Suite((SuiteSet("one", str(tmp_path / "one"), "all"),)), (0.7, 0.15, 0.15), 0)


def test_compare_cells_names_the_cell_that_fell_furthest():
    champ = {("a", "none"): 0.95, ("a", "jpeg:75"): 0.90, ("b", "none"): 0.80}
    ok, why = compare_cells({("a", "none"): 0.96, ("a", "jpeg:75"): 0.89, ("b", "none"): 0.81}, champ, 0.02)
    assert ok and "set 'a' (jpeg:75) falls 0.0100" in why
    ok, why = compare_cells({("a", "none"): 0.96, ("a", "jpeg:75"): 0.91, ("b", "none"): 0.70}, champ, 0.02)
    assert not ok
    assert why == ("on suite set 'b' (none) its ROC-AUC 0.7000 is 0.1000 below the champion's 0.8000, more than the "
                   "allowed 0.0200")


def test_version_tags_are_reused_only_for_the_same_suite():
    s = Suite((SuiteSet("a", "/a"),), ("none", "jpeg:75"))
    tags = {"suite.digest": s.digest(), "suite.auc.a.none": "0.9", "suite.auc.a.jpeg75": "0.8"}
    assert cell_aucs_from_tags(tags, s) == {("a", "none"): 0.9, ("a", "jpeg:75"): 0.8}
    assert cell_aucs_from_tags({**tags, "suite.digest": "other"}, s) is None
    assert cell_aucs_from_tags({k: v for k, v in tags.items() if k != "suite.auc.a.jpeg75"}, s) is None


def _cli(capsys, *argv) -> tuple[int, str]:
    from output import own_output

    from defakenet.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    return rc, own_output(capsys.readouterr().err)


def test_evaluate_with_a_missing_suite_set_is_one_line(synth_small, tmp_path, capsys):
    from defakenet.artifact import save_model
    from defakenet.config import Config
    from defakenet.engine import build_model

    cfg = Config().replace(**{"data.image_size": 32})
    model_dir = save_model(tmp_path / "model", build_model(cfg), cfg, {"threshold": 0.5})
    suite = _write(tmp_path, f"sets:\n  ok: {{root: {synth_small}, split: all}}\n  gone: {{root: nowhere}}\n")
    rc, err = _cli(capsys, "evaluate", "--model", str(model_dir), "--suite", str(suite), "--no-mlflow")
    assert rc == 2
    assert err.startswith(f"defakenet: error: suite set 'gone': ") and str(tmp_path / "nowhere") in err
    assert len(err.strip().splitlines()) == 1
    rc, err = _cli(capsys, "evaluate", "--model", str(model_dir), "--data", str(synth_small), "--degrade", "jpeg:101")
    assert rc == 2 and "invalid degradation 'jpeg:101'" in err


def test_train_checks_the_promotion_suite_before_training(synth_small, tmp_path, capsys):
    suite = _write(tmp_path, "sets:\n  gone: {root: nowhere, split: all}\n")
    rc, err = _cli(capsys, "train", "--data", str(synth_small), "--home", str(tmp_path / "home"),
                   "--set", f"promote.suite={suite}", "--register", "x")
    assert rc == 2
    assert err.startswith("defakenet: error: suite set 'gone': ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "ray_results").exists()  # nothing trained
