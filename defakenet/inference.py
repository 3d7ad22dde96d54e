"""The one inference path: a loaded model and decoded images (or already preprocessed tensors) → p(fake).

    images (RGB uint8) ─▶ [faces: detect, crop with margin] ─▶ the model's own preprocessing ─▶ forward in batches
                          (torch: device, channels_last, autocast | onnx, onnx-int8: an ONNX Runtime session)
                          ─▶ sigmoid ─▶ p(fake) per input, verdict per image

Training's validation (`engine.predict`), evaluation (Ray Data actors), serving (Serve replicas), `defakenet
predict`, `defakenet explain` and the MLflow pyfunc all score through `p_fake` here, so a number means the same
whichever of them computed it. `Predictor` is the object they hold: the model placed on its device (or its
exported graph in an ONNX Runtime session, `runtime`) with the preprocessing, threshold and face policy stored
with it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from defakenet.errors import DataError

if TYPE_CHECKING:
    from defakenet.artifact import SavedModel

# inputs per forward pass at most: CPU memory stays small; a GPU takes bigger batches
BATCH_CPU, BATCH_GPU = 32, 256
# how an image's verdict is made from its faces' scores (data.faces crop): the most suspicious face, or the mean
AGGREGATES = ("max", "mean")
NO_FACE_LABEL = "no-face"


def autocast(device: torch.device, amp: str = "auto"):
    """The autocast context for a device and `train.amp` setting ('auto' = bf16 on CUDA, nothing on CPU)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class Placement:
    """Where and how a model runs: its device, channels_last memory format (CUDA), the autocast setting."""

    device: torch.device
    channels_last: bool = False
    amp: str = "auto"

    @classmethod
    def choose(cls, use_gpu: bool = False, amp: str = "auto") -> Placement:
        """CUDA with channels_last when asked for and present, else the CPU."""
        cuda = use_gpu and torch.cuda.is_available()
        return cls(torch.device("cuda" if cuda else "cpu"), channels_last=cuda, amp=amp)

    def put(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last and x.ndim == 4 else torch.contiguous_format
        return x.to(self.device, non_blocking=True, memory_format=fmt)


class OnnxModel:
    """An exported graph (export.py: model.onnx or model.int8.onnx) in an ONNX Runtime session: what p_fake runs
    in place of the torch module for the onnx runtimes. `threads`: intra-op threads (0: ONNX Runtime's default,
    one per core); a replica passes the CPUs it reserved. The CUDA provider when asked for and installed
    (onnxruntime-gpu), else the CPU."""

    def __init__(self, graph: bytes | str, *, threads: int = 0, use_gpu: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(graph, options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.gpu = self.session.get_providers()[0] == "CUDAExecutionProvider"

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


def p_fake(model: torch.nn.Module | OnnxModel, x: torch.Tensor | np.ndarray, placement: Placement,
           batch_size: int = 0) -> np.ndarray:
    """p(fake) = sigmoid(logit) of preprocessed NCHW float32 inputs, as float64, `batch_size` inputs per forward
    (0: BATCH_GPU on CUDA, else BATCH_CPU). A torch model must already be on `placement.device`, in eval mode; an
    OnnxModel runs where its session does."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if len(x) == 0:
        return np.zeros(0, dtype=np.float64)
    gpu = model.gpu if isinstance(model, OnnxModel) else placement.device.type == "cuda"
    n = batch_size or (BATCH_GPU if gpu else BATCH_CPU)
    out = []
    with torch.inference_mode():
        for chunk in x.split(n):
            if isinstance(model, OnnxModel):
                logits = torch.from_numpy(model(np.ascontiguousarray(chunk.numpy(), dtype=np.float32)))
            else:
                with autocast(placement.device, placement.amp):
                    logits = model(placement.put(chunk))
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def place(model: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    """`model` on the placement's device, in eval mode, channels_last on CUDA."""
    model = model.to(placement.device).eval()
    return model.to(memory_format=torch.channels_last) if placement.channels_last else model


class Predictor:
    """A saved model ready to answer: placed on its device, with the preprocessing, threshold and face policy
    stored with it. `score_inputs` takes preprocessed tensors (Ray Data, the pyfunc), `score_images` decoded
    whole images as the network sees them, `predict_images` the per-image verdicts (faces found and cropped first
    when the model says `data.faces: crop`).

    `runtime` (export.RUNTIMES): torch runs the module; onnx and onnx-int8 run the graph stored beside the
    weights (`saved.graphs`, loaded by `load_model(runtime=…)`) with `threads` intra-op threads. The torch module
    stays loaded either way: Grad-CAM (explain) needs its gradients."""

    def __init__(self, saved: SavedModel, *, use_gpu: bool = False, batch_size: int = 0,
                 detector_threads: int = 1, name: str = "model", version: int | None = None,
                 alias: str | None = None, runtime: str = "torch", threads: int = 0):
        from defakenet.export import runtime_file

        runtime_file(runtime)  # UserError naming the choices for an unknown runtime
        self.saved = saved
        # which model answers: the registered name and version (an alias URI: the version it pointed at)
        self.name, self.version, self.alias = name, version, alias
        self.runtime = runtime
        self.placement = Placement.choose(use_gpu)
        self.torch_model = place(saved.model, self.placement)
        if runtime == "torch":
            self.model: torch.nn.Module | OnnxModel = self.torch_model
        else:
            if runtime not in saved.graphs:
                raise DataError(f"the model has no {runtime} graph loaded (load_model(..., runtime={runtime!r}))")
            self.model = OnnxModel(saved.graphs[runtime], threads=threads, use_gpu=use_gpu)
        self.preprocess = saved.preprocess()
        self.threshold = saved.threshold
        self.batch_size = batch_size
        self.faces = saved.config.data.faces
        self._detector_threads = detector_threads
        self._detector = None

    @classmethod
    def from_dir(cls, model_dir: str | Path, runtime: str = "torch", **kwargs) -> Predictor:
        from defakenet.artifact import load_model

        return cls(load_model(model_dir, runtime=runtime), runtime=runtime, **kwargs)

    @property
    def meta(self) -> dict:
        return self.saved.meta

    @property
    def identity(self) -> dict:
        """{"name", "version", "runtime"}: what every answer says about the model that gave it."""
        return {"name": self.name, "version": self.version, "runtime": self.runtime}

    @property
    def device(self) -> str:
        """Where the forward runs: cpu / cuda, and the ONNX Runtime provider for the onnx runtimes."""
        if isinstance(self.model, OnnxModel):
            return self.model.provider
        return self.placement.device.type

    @property
    def graph(self) -> dict | None:
        """The export facts (onnx.json) of the graph this runtime runs; None for torch."""
        if self.runtime == "torch":
            return None
        return self.saved.exported.get("int8" if self.runtime == "onnx-int8" else "onnx")

    @property
    def config(self):
        return self.saved.config

    def inputs(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The network's NCHW float32 input for decoded RGB uint8 images (the model's eval preprocessing)."""
        return np.stack([self.preprocess(img) for img in images])

    def score_inputs(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        return p_fake(self.model, x, self.placement, self.batch_size)

    def score_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """p(fake) of each image, whole, as the network sees it (no face stage)."""
        if not len(images):
            return np.zeros(0, dtype=np.float64)
        return self.score_inputs(self.inputs(images))

    # ---- the face stage and verdicts

    @property
    def detector(self):
        if self._detector is None:
            from defakenet.faces import FaceDetector

            self._detector = FaceDetector(threads=self._detector_threads)
        return self._detector

    def regions(self, image: np.ndarray) -> tuple[list, list[np.ndarray]]:
        """What the network scores for one image: ([], [image]) without the face stage, else (faces, their crops)
        with the model's margin; no face found gives ([], [])."""
        if self.faces == "off":
            return [], [image]
        from defakenet.faces import crop

        found = self.detector.detect(image)
        return found, [crop(image, f, self.config.data.face_margin) for f in found]

    def verdict(self, faces: list, scores: Sequence[float]) -> dict:
        """The answer for one image from its regions' scores: label, p_fake, threshold and, with the face stage,
        one entry per face ({box, detector_score, p_fake, label}) and the image's p_fake made from them by
        data.face_aggregate. No face: `faces: []`, label "no-face", p_fake None."""
        t = self.threshold
        if self.faces == "off":
            p = float(scores[0])
            return {"label": label_of(p, t), "p_fake": p, "threshold": t}
        per_face = [{**f.to_dict(), "p_fake": float(s), "label": label_of(float(s), t)} for f, s in zip(faces, scores)]
        if not per_face:
            return {"label": NO_FACE_LABEL, "p_fake": None, "threshold": t, "faces": []}
        ps = [f["p_fake"] for f in per_face]
        p = float(max(ps) if self.config.data.face_aggregate == "max" else np.mean(ps))
        return {"label": label_of(p, t), "p_fake": p, "threshold": t, "faces": per_face}

    def predict_images(self, images: Sequence[np.ndarray]) -> list[dict]:
        """The verdict of each decoded RGB uint8 image: every region of every image in one batched pass."""
        found, crops, owner = [], [], []
        for i, img in enumerate(images):
            faces, regions = self.regions(img)
            found.append(faces)
            crops.extend(regions)
            owner.extend([i] * len(regions))
        scores = self.score_images(crops)
        owner = np.asarray(owner, dtype=np.int64)
        return [self.verdict(found[i], scores[owner == i]) for i in range(len(images))]


def parse_uri(uri: str) -> tuple[str, int | None, str | None]:
    """(name, version, alias) of a model URI; a non-registry URI is its own name."""
    if uri.startswith("models:/") and not uri.startswith("models:/m-"):
        rest = uri[len("models:/"):]
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return name, None, alias
        name, _, version = rest.partition("/")
        return name, int(version) if version.isdigit() else None, None
    return uri.rstrip("/").rsplit("/", 1)[-1], None, None


def load_predictor(uri: str, *, tracking_uri: str = "", version: int | None = None, runtime: str = "torch",
                   **kwargs) -> Predictor:
    """The model behind `uri` (a model directory, models:/NAME/VERSION, models:/NAME@ALIAS, runs:/…), downloaded
    and placed; an alias is resolved once (or pinned to `version`), so the predictor names the version it runs.
    `runtime`: torch, onnx or onnx-int8 (the graph must be stored with the model). `kwargs` go to Predictor.
    UserError for an unknown model, version or alias, a missing graph, or an unreachable server."""
    from defakenet import tracking
    from defakenet.artifact import load_model

    name, pinned, alias = parse_uri(uri)
    if alias is not None:
        if version is None:
            version = tracking.get_version_by_alias(name, alias, tracking_uri=tracking_uri or None)
            if version is None:
                raise DataError(f"registered model {name!r} has no alias {alias!r}")
        uri = f"models:/{name}/{version}"  # what the alias pointed at when we looked: never a newer one
    else:
        version = pinned
    dst = tempfile.mkdtemp(prefix="defakenet-model-")
    try:
        saved = load_model(tracking.resolve_model(uri, dst, tracking_uri=tracking_uri or None), runtime=runtime,
                           what=uri)
    finally:
        shutil.rmtree(dst, ignore_errors=True)  # the weights are in memory now; a replica's swaps would leave ~100 MB each
    return Predictor(saved, name=name, version=version, alias=alias, runtime=runtime, **kwargs)


def model_label(predictor: Predictor) -> str:
    """`NAME vVERSION` (or the name alone): how answers name the model that gave them."""
    return predictor.name + (f" v{predictor.version}" if predictor.version is not None else "")


def label_of(p: float, threshold: float) -> str:
    """fake when p >= threshold (the validation split's), else real."""
    return "fake" if p >= threshold else "real"
