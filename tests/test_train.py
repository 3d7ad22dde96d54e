"""End to end, in-process: a few epochs of the real ResNet50V2 learn the synthetic fakes, evaluation agrees."""

import json

import pytest
import yaml

from defakenet.artifact import load_model
from defakenet.cli import main
from defakenet.demo import DEMO_SETTINGS
from defakenet.report import REPORT_FILES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(synth_64, tmp_path_factory):
    """`defakenet train --config demo.yaml --data SYNTH` at 64 px, 4 epochs: the run folder."""
    home = tmp_path_factory.mktemp("train")
    nested: dict = {}
    for key, value in DEMO_SETTINGS.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    (home / "demo.yaml").write_text(yaml.safe_dump(nested))
    out = home / "run"
    code = main(["train", "--config", str(home / "demo.yaml"), "--data", str(synth_64), "--output", str(out),
                 "--set", "train.seed=0"])
    assert code == 0
    return out


def test_model_learns_the_synthetic_fakes(trained):
    saved = load_model(trained / "model")
    assert saved.meta["val_metrics"]["roc_auc"] >= 0.9
    assert saved.meta["test_metrics"]["roc_auc"] >= 0.9
    assert 0.0 < saved.threshold < 1.0
    assert saved.meta["preprocessing"] == {**saved.meta["preprocessing"], "mode": "tf", "image_size": 64}


def test_run_folder_has_report_and_best_checkpoint(trained):
    for name in REPORT_FILES.values():
        assert (trained / "report" / name).stat().st_size > 0
    assert (trained / "best" / "model.safetensors").is_file()
    metrics = json.loads((trained / "report" / "metrics.json").read_text())
    saved = load_model(trained / "model")
    assert metrics["roc_auc"] == pytest.approx(saved.meta["test_metrics"]["roc_auc"], abs=1e-12)


def test_evaluate_reproduces_logged_test_metrics(trained, synth_64, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(trained / "model"), "--data", str(synth_64), "--output", str(out)]) == 0
    got = json.loads((out / "metrics.json").read_text())
    want = load_model(trained / "model").meta["test_metrics"]
    for key in ("accuracy", "roc_auc", "average_precision", "tp", "fp", "tn", "fn", "threshold"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert "ROC-AUC" in capsys.readouterr().out
