"""ONNX export and int8 quantization of a saved model: the graphs ONNX Runtime runs (`--runtime onnx | onnx-int8`).

    model dir ─▶ model.onnx       fp32: the input filter, backbone and head (everything after preprocessing);
                                  input `input` NCHW float32 preprocessed, dynamic batch; output `logit` (N,)
              ─▶ model.int8.onnx  static QDQ int8, calibrated on valid-split images; written only when its test
                                  ROC-AUC is within `max_auc_drop` of fp32's (the guard)
              ─▶ onnx.json        what made them: versions, opset, the parity check, the guard's numbers

The files sit in the model directory beside the weights and meta.json (the preprocessing), so a logged or
registered version carries them and `inference.Predictor(runtime=…)` finds them where it finds the weights.

torch and onnxruntime are imported where they are used: the CLI imports this module for RUNTIMES.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defakenet.errors import UserError

RUNTIMES = ("torch", "onnx", "onnx-int8")
RUNTIME_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
EXPORT_FILE = "onnx.json"
INPUT_NAME, OUTPUT_NAME = "input", "logit"
OPSET = 17
# export fails when ONNX Runtime and PyTorch disagree by more than this in p(fake) on the check inputs
PARITY_TOL = 1e-4
# int8 answers are not expected to match fp32 to PARITY_TOL; measured on the sample (docs/serving.md) they stay
# within this of fp32 in p(fake) for most images, and the guard on test ROC-AUC is what decides
INT8_TOL = 0.05


class ExportError(UserError):
    """An export that must not be used: parity failed, or int8 lost too much."""


@dataclass(frozen=True)
class Guard:
    """The int8 guard: test ROC-AUC of fp32 and int8 ONNX on the same images."""

    auc_fp32: float
    auc_int8: float
    max_drop: float
    images: int

    @property
    def drop(self) -> float:
        return self.auc_fp32 - self.auc_int8

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    def line(self) -> str:
        verdict = "kept" if self.passed else "refused"
        return (f"int8 {verdict}: test ROC-AUC {self.auc_fp32:.4f} (fp32) -> {self.auc_int8:.4f} (int8), "
                f"a drop of {self.drop:+.4f} against the allowed {self.max_drop:.4f}, on {self.images} images")

    def to_dict(self) -> dict:
        return {"auc_fp32": self.auc_fp32, "auc_int8": self.auc_int8, "drop": self.drop, "max_drop": self.max_drop,
                "images": self.images, "passed": self.passed}


def runtime_file(runtime: str) -> str:
    """The model-directory file a runtime runs; UserError naming the choices for an unknown one."""
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return RUNTIME_FILES.get(runtime, "")


def facts(model_dir: str | Path) -> dict:
    """onnx.json of a model directory ({} when it has none)."""
    p = Path(model_dir) / EXPORT_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def _write_facts(model_dir: Path, update: dict) -> dict:
    d = {**facts(model_dir), **update}
    (model_dir / EXPORT_FILE).write_text(json.dumps(d, indent=2, default=float))
    return d


def check_inputs(input_size: int, n: int = 8, seed: int = 0) -> np.ndarray:
    """Seeded inputs in the preprocessed range ([-1, 1], what both normalisations give) for the parity check when
    no real images are at hand."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(n, 3, input_size, input_size)).astype(np.float32)


def export_onnx(model, model_dir: str | Path, input_size: int, *,
                inputs: np.ndarray | None = None) -> dict:
    """Write `model_dir/model.onnx` from `model` (eval mode, CPU) and check it against PyTorch on `inputs`
    (preprocessed NCHW float32; default: seeded noise). Returns the export facts (also in onnx.json); ExportError
    when p(fake) differs by more than PARITY_TOL."""
    import onnxruntime as ort
    import torch

    d = Path(model_dir)
    model = model.cpu().eval()
    example = torch.zeros(1, 3, input_size, input_size)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # the TorchScript-based exporter (dynamo=False): ~1 s here where the dynamo exporter takes 11-14 s on 2
        # cores, for the same graph and the same parity; it writes one self-contained file and ONNX Runtime's
        # quantizer takes it as is. torch marks it deprecated, hence the filter.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(d / RUNTIME_FILES["onnx"]), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    seconds = time.perf_counter() - t0
    x = check_inputs(input_size) if inputs is None else np.ascontiguousarray(inputs, dtype=np.float32)
    session = ort.InferenceSession(str(d / RUNTIME_FILES["onnx"]), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = torch.sigmoid(model(torch.from_numpy(x)).float()).numpy()
    got = _sigmoid(session.run(None, {INPUT_NAME: x})[0])
    diff = float(np.abs(got - ref).max()) if len(x) else 0.0
    out = _write_facts(d, {"onnx": {
        "file": RUNTIME_FILES["onnx"], "opset": OPSET, "input": [INPUT_NAME, ["batch", 3, input_size, input_size]],
        "output": [OUTPUT_NAME, ["batch"]], "torch": torch.__version__, "onnxruntime": ort.__version__,
        "parity_max_abs_p_fake": diff, "parity_inputs": int(len(x)),
        "parity_on": "images" if inputs is not None else "seeded noise", "export_s": round(seconds, 2)}})
    if diff > PARITY_TOL:
        (d / RUNTIME_FILES["onnx"]).unlink()
        raise ExportError(f"{d / RUNTIME_FILES['onnx']}: ONNX Runtime differs from PyTorch by {diff:.2e} in p(fake), "
                          f"over the {PARITY_TOL:.0e} allowed; the file was removed")
    return out


def export_saved(saved, model_dir: str | Path, *, inputs: np.ndarray | None = None) -> dict:
    """export_onnx of a loaded SavedModel, at the input size its preprocessing feeds the network."""
    return export_onnx(saved.model, model_dir, saved.config.data.input_size, inputs=inputs)


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed inputs, a batch at a time."""

    def __init__(self, x: np.ndarray, batch: int = 16):
        self.batches = iter([{INPUT_NAME: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(model_dir: str | Path, calibration: np.ndarray) -> Path:
    """Static QDQ int8 of model_dir/model.onnx, calibrated (MinMax) on `calibration` (preprocessed valid-split
    inputs): per-channel int8 weights, uint8 activations, reduce_range (7-bit weights: no VPMADDUBSW saturation
    on CPUs without VNNI). Writes a temp file beside the model and returns its path; `keep_int8` moves it in."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    d = Path(model_dir)
    fp32 = d / RUNTIME_FILES["onnx"]
    if not fp32.is_file():
        raise UserError(f"{d} has no {RUNTIME_FILES['onnx']}: export the fp32 graph first (--format onnx)")
    if not len(calibration):
        raise UserError("int8 calibration needs images: the valid split is empty")

    class Reader(_Calibration, CalibrationDataReader):
        pass

    tmp = Path(tempfile.mkdtemp(prefix="defakenet-int8-", dir=d))
    pre, out = tmp / "pre.onnx", tmp / RUNTIME_FILES["onnx-int8"]
    root = logging.getLogger()
    level = root.level
    # the quantizer warns on the root logger for every per-channel weight of rank 1 (the pre-activation BN
    # scales, which it quantizes per tensor, as it should): 30 lines that say nothing to a user
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(out), Reader(np.ascontiguousarray(calibration, dtype=np.float32)),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    pre.unlink()
    return out


def guard(labels: np.ndarray, fp32: np.ndarray, int8: np.ndarray, max_drop: float) -> Guard:
    """The int8 guard from test-split labels and both runtimes' p(fake) on the same images."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise UserError(f"the int8 guard needs real and fake test images; the test split has {len(labels)} images "
                        f"of one class")
    return Guard(float(roc_auc_score(labels, fp32)), float(roc_auc_score(labels, int8)), float(max_drop), len(labels))


def keep_int8(model_dir: str | Path, candidate: Path, result: Guard, calibration_images: int) -> dict:
    """Record the guard in onnx.json; move the int8 graph in when it passed, else delete it."""
    d = Path(model_dir)
    target = d / RUNTIME_FILES["onnx-int8"]
    if result.passed:
        candidate.replace(target)
    else:
        target.unlink(missing_ok=True)
    _rmtree(candidate.parent)
    return _write_facts(d, {"int8": {"file": RUNTIME_FILES["onnx-int8"] if result.passed else None,
                                     "format": "QDQ", "weights": "int8 per-channel (reduce_range)",
                                     "activations": "uint8", "calibration": "MinMax",
                                     "calibration_images": int(calibration_images), "guard": result.to_dict()}})


def int8_from_splits(model_dir: str | Path, score: Callable[[str, np.ndarray], np.ndarray], calibration: np.ndarray,
                     test_x: np.ndarray, test_labels: np.ndarray, max_drop: float) -> Guard:
    """Quantize, score the test inputs with both graphs (`score(runtime, x)`), guard, keep or refuse: the whole
    int8 step that export and training share."""
    candidate = quantize_int8(model_dir, calibration)
    fp32 = score(str(Path(model_dir) / RUNTIME_FILES["onnx"]), test_x)
    int8 = score(str(candidate), test_x)
    result = guard(test_labels, fp32, int8, max_drop)
    keep_int8(model_dir, candidate, result, len(calibration))
    return result


def inputs_of(saved, paths) -> np.ndarray:
    """The network's inputs for image files (paths or URIs) as evaluation feeds them: decoded, the most confident face cropped
    when the model has the face stage (data.pipeline.face_crop), then the model's own preprocessing."""
    from defakenet.data.image import decode_rgb
    from defakenet.data.pipeline import face_crop
    from defakenet.data.storage import Files

    pre = saved.preprocess()
    crop = saved.config.data.faces == "crop"
    files = Files()  # paths or URIs (s3://, gs://), as the training pipeline reads them
    out = []
    for p in paths:
        rgb = decode_rgb(files.read(str(p)), name=str(p))
        out.append(pre(face_crop(rgb, saved.config.data.face_margin) if crop else rgb))
    return np.stack(out) if out else np.zeros((0, 3, saved.config.data.input_size, saved.config.data.input_size),
                                              np.float32)


def _sample(rows, n: int, seed: int = 0):
    """At most `n` rows, the same share of each class, chosen by `seed`."""
    if len(rows) <= n:
        return rows
    return rows.groupby("label", group_keys=False).sample(frac=n / len(rows), random_state=seed)


def export_model(model_dir: str | Path, *, int8: bool = False, manifest=None, max_auc_drop: float = 0.005,
                 calibration_images: int = 256, log: Callable[[str], None] = print) -> dict:
    """The export step that `defakenet export` and the end of training share: model.onnx into `model_dir`
    (parity on up to 16 test images of `manifest`, else seeded noise) and, with `int8`, model.int8.onnx
    calibrated on `calibration_images` valid-split images and guarded on the whole test split. Returns onnx.json;
    its "int8" entry says whether the guard kept the graph."""
    from defakenet.artifact import load_model

    d = Path(model_dir)
    saved = load_model(d)
    test = manifest[manifest["split"] == "test"] if manifest is not None else None
    check = inputs_of(saved, _sample(test, 16)["path"]) if test is not None and len(test) else None
    out = export_saved(saved, d, inputs=check)
    e = out["onnx"]
    log(f"onnx: {d / e['file']} (opset {e['opset']}), p(fake) within {e['parity_max_abs_p_fake']:.1e} of PyTorch on "
        f"{e['parity_inputs']} {'test images' if check is not None else 'noise inputs'}")
    if not int8:
        return out
    if manifest is None:
        raise UserError("int8 needs data: calibration runs on the valid split and the guard on test (--data ROOT)")
    valid = manifest[manifest["split"] == "valid"]
    if not len(valid) or test is None or test["label"].nunique() < 2:
        raise UserError(f"int8 needs a valid split and a test split of both classes; this data has {len(valid)} "
                        f"valid and {0 if test is None else len(test)} test images")
    t0 = time.perf_counter()
    calib = inputs_of(saved, _sample(valid, calibration_images)["path"])
    test_x = inputs_of(saved, test["path"])
    result = int8_from_splits(d, onnx_scores, calib, test_x, test["label"].to_numpy(), max_auc_drop)
    log(f"{result.line()} ({time.perf_counter() - t0:.0f} s)")
    return facts(d)


def onnx_scores(path: str, x: np.ndarray, threads: int = 0) -> np.ndarray:
    """p(fake) of preprocessed inputs through the ONNX graph at `path` (inference.OnnxModel, p_fake)."""
    from defakenet.inference import OnnxModel, Placement, p_fake

    return p_fake(OnnxModel(path, threads=threads), x, Placement.choose(False))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # as inference.p_fake computes it: torch's float32 sigmoid
    import torch

    return torch.sigmoid(torch.from_numpy(np.asarray(z, dtype=np.float32))).numpy()


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
