"""The saved-model format: weights as safetensors, config and metadata as JSON, nothing pickled.

A model directory holds
- `model.safetensors`: the DeFakeNet state dict;
- `config.json`: the full training config (`Config.to_dict()`), so the architecture is rebuilt from our own code;
- `meta.json`: what serving and evaluation need to see exactly what training saw — preprocessing mode, input
  size, crop policy, the decision threshold chosen on the validation split, and the metrics;
- optionally `model.onnx`, `model.int8.onnx` and `onnx.json` (export.py): the graphs of the onnx runtimes.
The same directory is what checkpoints, MLflow model artifacts and the serving replicas load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from defakenet import __version__
from defakenet.config import Config
from defakenet.data.augment import Preprocess
from defakenet.engine import build_model
from defakenet.errors import UserError
from defakenet.model import DeFakeNet

WEIGHTS_FILE, CONFIG_FILE, META_FILE = "model.safetensors", "config.json", "meta.json"


@dataclass
class SavedModel:
    model: DeFakeNet
    config: Config
    meta: dict
    # runtime -> its ONNX graph's bytes, for the runtimes load_model was asked for (export.RUNTIME_FILES)
    graphs: dict[str, bytes] = field(default_factory=dict)
    # onnx.json: what made the graphs the directory holds (export.py); {} without any
    exported: dict = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    def preprocess(self) -> Preprocess:
        """The eval-time preprocessing stored with the model."""
        return Preprocess(self.config.data, None, self.config.model.preprocessing)


def preprocessing_meta(cfg: Config) -> dict:
    """The preprocessing facts stored with a model (also logged as MLflow model metadata)."""
    policy = cfg.data.input_policy
    return {
        "mode": cfg.model.preprocessing,
        "image_size": cfg.data.image_size,
        "input_size": cfg.data.input_size,  # what evaluation and serving feed the network
        "input_policy": policy,
        "crop_pct": cfg.data.crop_pct,  # resize policy only
        "resize": ("centre crop input_size at native resolution, zero-padded when smaller" if policy == "crop"
                   else "shorter-side resize to image_size/crop_pct, centre crop image_size"),
        "layout": "NCHW float32 RGB",
    }


def save_model(out_dir: str | Path, model: torch.nn.Module, cfg: Config, meta: dict) -> Path:
    """Write a model directory; `meta` is merged over the preprocessing facts and format version."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    full = {"format": "defakenet-model/1", "defakenet_version": __version__, "classes": ["real", "fake"],
            "preprocessing": preprocessing_meta(cfg), **meta}
    (out / META_FILE).write_text(json.dumps(full, indent=2, default=float))
    return out


def model_files(saved: SavedModel) -> dict[str, bytes]:
    """The files of a model directory for `saved`, from memory (what actors on other nodes rebuild it from)."""
    from safetensors.torch import save

    from defakenet.export import EXPORT_FILE, RUNTIME_FILES

    state = {k: v.detach().cpu().contiguous() for k, v in saved.model.state_dict().items()}
    files = {WEIGHTS_FILE: save(state), CONFIG_FILE: json.dumps(saved.config.to_dict(), indent=2).encode(),
             META_FILE: json.dumps(saved.meta, indent=2, default=float).encode()}
    if saved.exported:
        files[EXPORT_FILE] = json.dumps(saved.exported, indent=2, default=float).encode()
    return {**files, **{RUNTIME_FILES[r]: g for r, g in saved.graphs.items()}}


def load_model_files(files: dict[str, bytes], runtime: str = "torch") -> SavedModel:
    """load_model of the files `model_files` made (what an actor on another node gets through the object store)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="defakenet-model-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return load_model(tmp, runtime=runtime)


def load_model(model_dir: str | Path, map_location: str | torch.device = "cpu", runtime: str = "torch",
               what: str = "") -> SavedModel:
    """Rebuild a DeFakeNet from a model directory, with the ONNX graph `runtime` runs (export.RUNTIMES) read into
    `graphs`; errors name the model (`what`, default the directory) and the missing file (for a graph: the
    command that makes it)."""
    from defakenet.export import facts, runtime_file

    d = Path(model_dir)
    if not d.is_dir():
        raise UserError(f"model {d} is not a directory (expected {WEIGHTS_FILE}, {CONFIG_FILE}, {META_FILE})")
    for name in (WEIGHTS_FILE, CONFIG_FILE, META_FILE):
        if not (d / name).is_file():
            raise UserError(f"model {d} has no {name}: not a defakenet model directory")
    cfg = Config.from_dict(json.loads((d / CONFIG_FILE).read_text()))
    meta = json.loads((d / META_FILE).read_text())
    # the architecture from the config (engine.build_model, as training builds it); the weights come from the
    # file, not from model.weights: never reload the original backbone
    model = build_model(cfg.replace(**{"model.weights": ""}))
    state = load_file(str(d / WEIGHTS_FILE), device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"model {d}: weights do not fit the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    graphs = {}
    graph = runtime_file(runtime)
    if graph:
        if not (d / graph).is_file():
            cmd = f"defakenet export --model {what or d} --format {runtime}" + (" --data ROOT" if runtime == "onnx-int8"
                                                                                 else "")
            why = " (int8 is calibrated on ROOT's valid split and checked on its test split)" if runtime == "onnx-int8" else ""
            raise UserError(f"model {what or d} has no {graph}, which --runtime {runtime} runs; make it with "
                            f"`{cmd} -o OUT`{why} and use OUT")
        graphs[runtime] = (d / graph).read_bytes()
    return SavedModel(model, cfg, meta, graphs, facts(d))
