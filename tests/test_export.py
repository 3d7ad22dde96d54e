"""ONNX export and the onnx runtimes: `defakenet export` writes a graph that ONNX Runtime scores as PyTorch does
(p(fake) within 1e-4), int8 is calibrated on the valid split and kept or refused by its test ROC-AUC, and every
path that scores (Predictor, evaluate's Ray Data actors, offline predict) runs the graph it is asked for.

Models: a random-init DeFakeNet at 32 px with random BN statistics (scores spread, not saturated); data: the
session's synthetic set (flat layout, so the model's shares cut valid and test) and scikit-image's astronaut.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from defakenet.cli import main
from defakenet.data.image import load_rgb
from defakenet.export import EXPORT_FILE, INT8_TOL, PARITY_TOL, RUNTIME_FILES
from defakenet.inference import Predictor

SIZE = 32


def _cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    from defakenet.artifact import save_model
    from defakenet.config import Config
    from defakenet.model import DeFakeNet

    cfg = Config().replace(**{"data.image_size": SIZE})
    torch.manual_seed(3)
    model = DeFakeNet(dropout=cfg.model.dropout, freeze_depth=cfg.model.freeze_depth)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    return save_model(tmp_path_factory.mktemp("export") / "model", model, cfg, {"threshold": 0.5})


@pytest.fixture(scope="module")
def exported(model_dir, synth_small, tmp_path_factory) -> Path:
    """`defakenet export --format onnx-int8` with a guard that keeps any int8 graph: both graphs on disk."""
    out = tmp_path_factory.mktemp("exported") / "out"
    code = main(["export", "--model", str(model_dir), "--format", "onnx-int8", "--data", str(synth_small),
                 "--max-auc-drop", "1", "-o", str(out)])
    assert code == 0
    return out


def _images(synth_small) -> list[np.ndarray]:
    paths = sorted(Path(synth_small).rglob("*.png"))[::10]
    astronaut = load_rgb(files("skimage") / "data" / "astronaut.png")
    return [load_rgb(p) for p in paths] + [astronaut]


def test_export_writes_the_graph_with_a_dynamic_batch_and_its_facts(exported):
    import onnxruntime as ort

    for f in ("model.safetensors", "config.json", "meta.json", RUNTIME_FILES["onnx"], RUNTIME_FILES["onnx-int8"],
              EXPORT_FILE):
        assert (exported / f).is_file(), f
    facts = json.loads((exported / EXPORT_FILE).read_text())
    assert facts["onnx"]["opset"] == 17 and facts["onnx"]["parity_on"] == "images"
    assert 0 <= facts["onnx"]["parity_max_abs_p_fake"] <= PARITY_TOL
    assert facts["onnx"]["torch"] and facts["onnx"]["onnxruntime"] == ort.__version__
    session = ort.InferenceSession(str(exported / RUNTIME_FILES["onnx"]), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and isinstance(inp.shape[0], str) and inp.shape[1:] == [3, SIZE, SIZE]
    for n in (1, 5):  # the batch axis is dynamic
        assert session.run(None, {"input": np.zeros((n, 3, SIZE, SIZE), np.float32)})[0].shape == (n,)
    # the int8 graph is real QDQ int8: a quarter of the fp32 file, with QuantizeLinear nodes
    import onnx

    int8 = onnx.load(str(exported / RUNTIME_FILES["onnx-int8"]))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    assert (exported / RUNTIME_FILES["onnx-int8"]).stat().st_size < 0.4 * (exported / RUNTIME_FILES["onnx"]).stat().st_size
    guard = facts["int8"]["guard"]
    assert guard["passed"] and guard["max_drop"] == 1 and guard["images"] > 0
    assert 0 <= guard["auc_fp32"] <= 1 and 0 <= guard["auc_int8"] <= 1
    assert abs(guard["drop"] - (guard["auc_fp32"] - guard["auc_int8"])) < 1e-12


def test_each_runtime_scores_as_torch_does(exported, synth_small):
    images = _images(synth_small)
    torch_p = Predictor.from_dir(exported).score_images(images)
    onnx = Predictor.from_dir(exported, runtime="onnx", threads=1)
    int8 = Predictor.from_dir(exported, runtime="onnx-int8", threads=1)
    assert onnx.identity["runtime"] == "onnx" and onnx.device == "CPUExecutionProvider"
    assert np.abs(onnx.score_images(images) - torch_p).max() <= PARITY_TOL
    int8_p = int8.score_images(images)
    assert np.abs(int8_p - torch_p).max() <= INT8_TOL
    assert not np.allclose(int8_p, torch_p, atol=1e-6)  # a different graph really ran
    # verdicts too: the same label wherever p(fake) is not within the int8 tolerance of the threshold
    for v, p in zip(onnx.predict_images(images), torch_p):
        assert v["label"] == ("fake" if p >= 0.5 else "real")


def test_offline_predict_names_the_runtime(exported, synth_small, capsys):
    img = sorted(Path(synth_small).rglob("*.png"))[0]
    answers = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        code, out, _ = _cli(capsys, "predict", str(img), "--model", str(exported), "--runtime", runtime, "--json")
        assert code == 0
        (r,) = json.loads(out)
        assert r["model"]["runtime"] == runtime
        answers[runtime] = r["p_fake"]
    assert abs(answers["onnx"] - answers["torch"]) <= PARITY_TOL
    assert abs(answers["onnx-int8"] - answers["torch"]) <= INT8_TOL


def test_evaluate_actors_score_with_the_runtime(ray_session, exported, synth_small):
    from defakenet.artifact import load_model
    from defakenet.data.layouts import read_manifest
    from defakenet.evaluate import score_rows
    from defakenet.export import inputs_of

    rows = read_manifest(synth_small).head(24)
    labels, onnx_p = score_rows(exported, rows, runtime="onnx")
    saved = load_model(exported)
    torch_p = Predictor(saved).score_inputs(inputs_of(saved, rows["path"]))
    assert (labels == rows["label"].to_numpy()).all() and len(onnx_p) == 24
    assert np.abs(onnx_p - torch_p).max() <= PARITY_TOL


def test_the_guard_refuses_int8_that_loses_too_much(model_dir, synth_small, tmp_path, capsys):
    # a negative allowance asks int8 to beat fp32 by a whole point of ROC-AUC: no graph can, so it is refused
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "export", "--model", str(model_dir), "--format", "onnx-int8", "--data",
                        str(synth_small), "--max-auc-drop", "-1", "-o", str(out))
    assert code == 2
    (line,) = [ln for ln in err.splitlines() if ln.startswith("defakenet: error:")]
    assert "int8 lost" in line and "--max-auc-drop -1.0000" in line and "was not written" in line
    assert (out / RUNTIME_FILES["onnx"]).is_file() and not (out / RUNTIME_FILES["onnx-int8"]).exists()
    assert not list(out.glob("defakenet-int8-*"))  # no leftovers of the quantizer
    guard = json.loads((out / EXPORT_FILE).read_text())["int8"]
    assert guard["file"] is None and guard["guard"]["passed"] is False
    # serving int8 from it is one clear error naming the command that makes the graph
    code, _, err = _cli(capsys, "predict", str(next(Path(synth_small).rglob("*.png"))), "--model", str(out),
                        "--runtime", "onnx-int8")
    assert code == 2 and "has no model.int8.onnx" in err and "defakenet export --model" in err


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx-int8"], "--format onnx-int8 needs --data ROOT"),
    (["--format", "onnx", "--model", "/no/such/model"], "does not exist"),
    (["--format", "onnx-int8", "--data", "/no/such/data"], "/no/such/data"),
])
def test_export_refuses_bad_arguments(model_dir, tmp_path, capsys, argv, message):
    args = ["export", "--model", str(model_dir), "-o", str(tmp_path / "out"), *argv]
    code, _, err = _cli(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written for a refused command


def test_export_keeps_a_non_empty_output(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _cli(capsys, "export", "--model", str(model_dir), "-o", str(out))
    assert code == 2 and "is not empty" in err and (out / "keep.txt").read_text() == "mine"
