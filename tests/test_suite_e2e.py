"""The evaluation suite end to end on the session's Ray instance and `mlflow server`: a model trained by
`defakenet train` with the crop policy and the NPR filter is scored by `defakenet evaluate` on two synthetic sets
× two degradations; each cell equals a single-set evaluation, the suite is one MLflow run and tags the version;
one image scores the same in evaluate, over HTTP from Serve and through the MLflow pyfunc; the promotion gate
refuses a version that loses on a suite set and names it."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest
import requests
from output import own_output
from serving import serve_app

from defakenet import registry, tracking
from defakenet.artifact import load_model, save_model
from defakenet.cli import main
from defakenet.data.image import load_rgb

pytestmark = pytest.mark.slow
SIZE = 32  # crops of the 64 px synthetic images: the crop policy matters
CELL_KEYS = ("n", "roc_auc", "roc_auc_ci", "average_precision", "eer", "accuracy", "tpr", "fpr", "ece", "brier")


@pytest.fixture(scope="module")
def trained(ray_session, mlflow_server, synth_64, tmp_path_factory):
    """`defakenet train --set data.input_policy=crop --set model.input_filter=npr --register NAME` (v1)."""
    home = tmp_path_factory.mktemp("suite_home")
    name = f"suite-test-{uuid.uuid4().hex[:8]}"
    argv = ["train", "--data", str(synth_64), "--image-size", str(SIZE), "--epochs", "3", "--batch-size", "16",
            "--workers", "1", "--home", str(home), "--run-name", "crop-npr", "--tracking-uri", mlflow_server,
            "--register", name, "--experiment", "suite-e2e", "--set", "data.input_policy=crop",
            "--set", "model.input_filter=npr", "--set", "augment.jitter_p=0", "--set", "augment.jpeg_p=0",
            "--set", "augment.blur_p=0", "--set", "augment.noise_p=0"]
    assert main(argv) == 0
    return {"home": home, "name": name, "model_dir": home / "runs" / "crop-npr" / "model"}


@pytest.fixture(scope="module")
def suite_file(synth_64, synth_small, tmp_path_factory):
    p = tmp_path_factory.mktemp("suite") / "suite.yaml"
    p.write_text(f"sets:\n  big: {{root: {synth_64}, split: test}}\n  small: {{root: {synth_small}, split: all}}\n"
                 "degradations: [none, jpeg:50]\nresamples: 200\n")
    return p


@pytest.fixture(scope="module")
def suite_run(trained, suite_file, mlflow_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("suite_out") / "report"
    assert main(["evaluate", "--model", f"models:/{trained['name']}/1", "--suite", str(suite_file),
                 "--output", str(out), "--tracking-uri", mlflow_server]) == 0
    return json.loads((out / "metrics.json").read_text()), out


def test_matrix_has_the_suite_shape_and_every_file(suite_run):
    doc, out = suite_run
    assert doc["sets"] == ["big", "small"] and doc["degradations"] == ["none", "jpeg:50"]
    assert [(c["set"], c["degradation"]) for c in doc["cells"]] == [
        ("big", "none"), ("big", "jpeg:50"), ("small", "none"), ("small", "jpeg:50")]
    for f in ("report.md", "auc_heatmap.png", "roc.png", "reliability.png", "scores.csv"):
        assert (out / f).stat().st_size > 0, f
    assert doc["cells"][2]["n"] == 80  # synth_small whole: 40 real + 40 fake
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == sum(c["n"] for c in doc["cells"])
    big = scores[scores["set"] == "big"].pivot(index="path", columns="degradation", values="score")
    assert (big["none"] != big["jpeg:50"]).mean() > 0.9  # JPEG 50 changes what the model sees
    # the gallery: each set's most confident mistakes on clean images, with their Grad-CAM overlays
    report = (out / "report.md").read_text()
    threshold = doc["info"]["threshold"]
    for name in ("big", "small"):
        clean = scores[(scores["set"] == name) & (scores["degradation"] == "none")]
        n_fp = int(((clean["label"] == 0) & (clean["score"] >= threshold)).sum())
        n_fn = int(((clean["label"] == 1) & (clean["score"] < threshold)).sum())
        pngs = sorted((out / "gallery").glob(f"{name}_*.png")) if (out / "gallery").is_dir() else []
        assert len(pngs) == min(3, n_fp) + min(3, n_fn), (name, n_fp, n_fn, pngs)
        for png in pngs:
            assert f"](gallery/{png.name})" in report and png.stat().st_size > 0
    assert ("## Most confident mistakes" in report) == bool(list(out.glob("gallery/*.png")))


@pytest.mark.parametrize("set_name, split, degradation", [("big", "test", "jpeg:50"), ("small", "all", "none")])
def test_each_cell_equals_a_single_set_evaluation(suite_run, trained, synth_64, synth_small, tmp_path, set_name,
                                                   split, degradation):
    doc, suite_out = suite_run
    root = synth_64 if set_name == "big" else synth_small
    out = tmp_path / "one"
    assert main(["evaluate", "--model", str(trained["model_dir"]), "--data", f"{set_name}={root}", "--split", split,
                 "--degrade", degradation, "--bootstrap", "200", "--output", str(out), "--no-mlflow"]) == 0
    (single,) = json.loads((out / "metrics.json").read_text())["cells"]
    cell = next(c for c in doc["cells"] if (c["set"], c["degradation"]) == (set_name, degradation))
    # the two runs batch the images differently, and a float32 forward differs in the 7th digit with the batch:
    # scores agree to 1e-5 (the parity bound), the metrics computed from them to 1e-6
    for key in CELL_KEYS:
        assert single[key] == pytest.approx(cell[key], abs=1e-6), key
    ours = pd.read_csv(out / "scores.csv").set_index("path")["score"]
    theirs = pd.read_csv(suite_out / "scores.csv")
    theirs = theirs[(theirs["set"] == set_name) & (theirs["degradation"] == degradation)].set_index("path")["score"]
    assert sorted(ours.index) == sorted(theirs.index)
    assert np.abs(ours - theirs.loc[ours.index]).max() < 1e-5


def test_the_suite_is_one_mlflow_run_and_tags_the_version(suite_run, trained, mlflow_server, capsys):
    doc, _ = suite_run
    client = tracking.client(mlflow_server)
    version = client.get_model_version(trained["name"], "1")
    run = client.get_run(version.tags["suite.run_id"])
    assert run.data.tags["kind"] == "suite" and run.data.params["model_uri"] == f"models:/{trained['name']}/1"
    cells = {(c["set"], c["degradation"]): c for c in doc["cells"]}
    assert run.data.metrics["big.jpeg50.roc_auc"] == pytest.approx(cells["big", "jpeg:50"]["roc_auc"])
    assert run.data.metrics["small.none.ece"] == pytest.approx(cells["small", "none"]["ece"])
    assert run.data.metrics["big.none.roc_auc_lo"] == pytest.approx(cells["big", "none"]["roc_auc_ci"][0])
    worst = min(("big", "small"), key=lambda s: cells[s, "none"]["roc_auc"])
    assert version.tags["suite.worst_set"] == worst
    assert float(version.tags["suite.worst_set_auc"]) == pytest.approx(cells[worst, "none"]["roc_auc"], abs=1e-6)
    assert "report.md" in [f.path.split("/")[-1] for f in client.list_artifacts(run.info.run_id, "suite")]
    capsys.readouterr()
    assert main(["registry", "show", "1", "--name", trained["name"], "--tracking-uri", mlflow_server]) == 0
    shown = own_output(capsys.readouterr().out)
    assert f"suite:    worst set {worst} ROC-AUC {cells[worst, 'none']['roc_auc']:.4f}" in shown


def test_one_image_scores_the_same_in_evaluate_serve_and_pyfunc(suite_run, trained, mlflow_server, tmp_path):
    import mlflow

    from defakenet.serve import ServeArgs

    _, out = suite_run
    scores = pd.read_csv(out / "scores.csv")
    rows = scores[(scores["set"] == "big") & (scores["degradation"] == "none")].head(4)
    saved = load_model(trained["model_dir"])
    assert saved.config.data.input_policy == "crop" and saved.config.model.input_filter == "npr"
    pre = saved.preprocess()
    x = np.stack([pre(load_rgb(p)) for p in rows["path"]])
    assert x.shape == (4, 3, SIZE, SIZE)
    (tmp_path / "pyfunc").mkdir()
    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{trained['name']}/1", dst_path=str(tmp_path / "pyfunc"))
    assert np.abs(pyfunc.predict(x) - rows["score"].to_numpy()).max() < 1e-5

    args = ServeArgs(model=f"models:/{trained['name']}/1", tracking_uri=mlflow_server, poll_interval_s=0,
                     auth_token_env="")
    with serve_app(args) as url:
        for path, score in zip(rows["path"], rows["score"]):
            with open(path, "rb") as f:
                r = requests.post(f"{url}/v1/predict", data=f.read(), headers={"Content-Type": "image/png"},
                                  timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["p_fake"] == pytest.approx(score, abs=1e-5)


def _register_variant(trained, mlflow_server, tmp_path, *, flip: bool, test_auc: float) -> int:
    """v1's weights (its head negated if `flip`: every score s becomes about 1 - s) registered as a new version whose
    run logged `test_auc`, so the test-split rule alone would promote it."""
    import torch

    saved = load_model(trained["model_dir"])
    if flip:
        with torch.no_grad():
            saved.model.head.weight.neg_()
            saved.model.head.bias.neg_()
    d = save_model(tmp_path / ("flipped" if flip else "copy"), saved.model, saved.config, saved.meta)
    with tracking.Tracker(mlflow_server).start("suite-e2e") as tracker:
        tracker.log_metrics({"test_roc_auc": test_auc, "test_accuracy": 1.0})
        info = tracker.log_model(d, registered_model_name=trained["name"])
    return info["version"]


def test_the_gate_refuses_a_version_that_loses_on_a_suite_set(suite_run, trained, suite_file, mlflow_server,
                                                               tmp_path):
    from defakenet.suite import load_suite

    doc, _ = suite_run
    name, suite = trained["name"], load_suite(suite_file)
    assert registry.list_table(name, tracking_uri=mlflow_server)[0]["aliases"] == ["champion"]
    assert all(c["roc_auc"] > 0.5 for c in doc["cells"])  # the flipped head then loses on every cell
    # v1 scores test ROC-AUC 1.0 on the synthetic set: a margin of -1 lets the test-split rule pass any version,
    # so the suite rule alone decides
    flipped = _register_variant(trained, mlflow_server, tmp_path, flip=True, test_auc=0.999)
    d = registry.gate(name, flipped, tracking_uri=mlflow_server, auc_margin=-1.0, max_accuracy_drop=1.0, suite=suite,
                      max_set_auc_drop=0.05, log=lambda _: None)
    assert d["decision"] == "challenger" and "test ROC-AUC 0.9990 beats" in d["reason"], d["reason"]
    # 1 - auc falls furthest where auc is highest; of equal drops the gate names the first cell
    worst = max(doc["cells"], key=lambda c: 2 * c["roc_auc"] - 1)
    assert f"on suite set '{worst['set']}' ({worst['degradation']})" in d["reason"]
    tags = tracking.client(mlflow_server).get_model_version(name, str(flipped)).tags
    assert tags["gate.suite_passed"] == "false" and tags["gate.suite_digest"] == suite.digest()
    # the same weights again: no cell falls, and the test rule promotes it
    same = _register_variant(trained, mlflow_server, tmp_path, flip=False, test_auc=0.999)
    d = registry.gate(name, same, tracking_uri=mlflow_server, auc_margin=-1.0, max_accuracy_drop=1.0, suite=suite,
                      max_set_auc_drop=0.05, log=lambda _: None)
    assert d["decision"] == "champion", d["reason"]
    assert "no suite cell loses more than 0.0500" in d["reason"]
