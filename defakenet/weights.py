"""Backbone weights: the official Keras ResNet50V2 .h5, safetensors, torch state dicts and timm checkpoints.

The Keras file is the legacy HDF5 layout that `keras.applications` downloads
(`resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5`): a root attribute `layer_names`, one group per layer
with an attribute `weight_names`, datasets named `<layer>/<weight>` with or without a `:0` suffix, and for full-model
files all of it under `model_weights`. Conv kernels are HWIO (torch wants OIHW); BatchNorm gamma / beta /
moving_mean / moving_variance become weight / bias / running_mean / running_var.

A truncated backbone (`stages` < 4) loads from a full-network file: the layers it keeps are taken and checked,
the removed stages and the differently shaped `post_bn` are skipped (`post_bn` keeps its own initialisation).

Nothing here unpickles arbitrary code: torch files go through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from defakenet.errors import DataError
from defakenet.model import RESNET50V2_STACKS, ResNet50V2Backbone, keras_layer_paths

# copied from keras/src/applications/resnet.py (BASE_WEIGHTS_PATH, WEIGHTS_HASHES["resnet50v2"][1])
KERAS_WEIGHTS_FILE = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + KERAS_WEIGHTS_FILE
KERAS_WEIGHTS_MD5 = "fac2f116257151a9d068a22e544a4917"

# keras weight name -> torch parameter / buffer name
_KERAS_TO_TORCH = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}

# timm resnetv2 block part -> keras layer suffix
_TIMM_TO_KERAS = {
    "norm1": "preact_bn",
    "conv1": "1_conv",
    "norm2": "1_bn",
    "conv2": "2_conv",
    "norm3": "2_bn",
    "conv3": "3_conv",
    "downsample.conv": "0_conv",
}
_TIMM_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(norm1|norm2|norm3|conv1|conv2|conv3|downsample\.conv)\.(.+)")

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


def _reference_state() -> dict[str, torch.Tensor]:
    # shapes only: build on the meta device, no memory or init cost
    with torch.device("meta"):
        return ResNet50V2Backbone().state_dict()


def _keras_layer_paths() -> dict[str, str]:
    with torch.device("meta"):
        return keras_layer_paths(ResNet50V2Backbone())


def _names(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _attr_list(group: h5py.Group, name: str) -> list[str]:
    # keras splits long attributes into name0, name1, ... (HDF5 header limit); values may be bytes or str
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for chunk in chunks for n in chunk]


def _check_state(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source: str, optional: tuple[str, ...] = ()
) -> None:
    # strict: every key present (num_batches_tracked and keys under `optional` may be absent), none extra,
    # shapes equal
    missing = [k for k in reference if k not in state and not k.endswith("num_batches_tracked")
               and not k.startswith(optional)]
    unexpected = [k for k in state if k not in reference]
    if missing or unexpected:
        raise DataError(
            f"{source}: weights do not match ResNet50V2Backbone: "
            f"missing {len(missing)} [{_names(missing)}], unexpected {len(unexpected)} [{_names(unexpected)}]"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(reference[key].shape):
            raise DataError(
                f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(reference[key].shape)}"
            )


def import_keras_h5(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a Keras ResNet50V2 legacy .h5 weights file into a `ResNet50V2Backbone` state dict.

    Raises DataError for a missing or non-HDF5 file, and for missing / extra layers or wrong shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a Keras ResNet50V2 .h5 weights file")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file; expected a Keras ResNet50V2 .h5 such as {KERAS_WEIGHTS_FILE}")
    reference = _reference_state()
    layer_paths = _keras_layer_paths()
    state: dict[str, torch.Tensor] = {}
    extra, seen = [], set()
    try:
        with h5py.File(path, "r") as f:
            root = f
            if not _attr_list(f, "layer_names") and "model_weights" in f:
                root = f["model_weights"]  # full-model file
            layer_names = _attr_list(root, "layer_names")
            if not layer_names:
                raise DataError(
                    f"{path}: no 'layer_names' attribute; expected the legacy Keras .h5 weights layout "
                    "(a Keras 3 .weights.h5 file must be re-saved with model.save_weights('x.h5') in Keras 2 format)"
                )
            for layer in layer_names:
                group = root.get(layer)
                weight_names = _attr_list(group, "weight_names") if group is not None else []
                if not weight_names:
                    continue  # padding, activation, pooling, input
                if layer not in layer_paths:
                    extra.append(layer)
                    continue
                seen.add(layer)
                for weight_name in weight_names:
                    kind = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
                    if kind not in _KERAS_TO_TORCH:
                        raise DataError(f"{path}: layer {layer} has an unknown weight {weight_name!r}")
                    value = np.asarray(group[weight_name], dtype=np.float32)
                    if kind == "kernel":
                        value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
                    key = f"{layer_paths[layer]}.{_KERAS_TO_TORCH[kind]}"
                    state[key] = torch.from_numpy(np.ascontiguousarray(value))
    except (OSError, KeyError) as e:
        raise DataError(f"{path}: cannot read the Keras weights ({e})") from e
    missing = [name for name in layer_paths if name not in seen]
    if missing or extra:
        hint = " (a file with the classifier: use the _notop weights)" if "predictions" in extra else ""
        raise DataError(
            f"{path}: layers do not match Keras ResNet50V2 (include_top=False): "
            f"missing {len(missing)} [{_names(missing)}], extra {len(extra)} [{_names(extra)}]{hint}"
        )
    _check_state(state, reference, str(path))
    for key in reference:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0, dtype=torch.long)
    return {key: state[key] for key in reference}


def convert_timm_resnetv2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm `resnetv2_50` state dict to ResNet50V2Backbone keys; biases timm lacks become zeros.

    An initialisation, not an exact port: timm strides in the first block of a stage and Keras in the last, timm
    pads the stem max-pool with -inf and uses BN eps 1e-5, so the same weights give different numbers here.
    The classifier (`head.*`) is dropped; keys that do not map are kept as they are (strict loading reports them).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            continue
        if match := _TIMM_BLOCK.fullmatch(key):
            stage, block, part, param = match.groups()
            key = f"conv{int(stage) + 2}.block{int(block) + 1}.{_TIMM_TO_KERAS[part]}.{param}"
        elif key.startswith("stem.conv."):
            key = "conv1_conv." + key.removeprefix("stem.conv.")
        elif key.startswith("norm."):
            key = "post_bn." + key.removeprefix("norm.")
        out[key] = value
    for key, value in list(out.items()):
        # keras conv1_conv, _0_conv and _3_conv have biases, timm's convs do not
        if key.endswith(("conv1_conv.weight", "0_conv.weight", "3_conv.weight")):
            out.setdefault(key.removesuffix("weight") + "bias", torch.zeros(value.shape[0], dtype=value.dtype))
    return out


def save_safetensors(
    state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write a state dict as safetensors (tensors made contiguous, on CPU); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(path), metadata=metadata)
    return path


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a CPU state dict; DataError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a .safetensors weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable safetensors file ({e})") from e


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a torch state dict that loads with weights_only=True ({first})") from e
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: expected a state dict of tensors (name -> tensor)")
    return obj


def _truncate(
    state: dict[str, torch.Tensor], backbone: ResNet50V2Backbone, reference: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    # a full (or deeper) backbone file into a truncated backbone: drop the stages it does not keep, and post_bn
    # when its width differs; returns the state and the prefixes that may then be missing
    removed = tuple(f"{name}." for name, *_ in RESNET50V2_STACKS[backbone.stages:])
    state = {k: v for k, v in state.items() if not k.startswith(removed)}
    post = state.get("post_bn.weight")
    if post is not None and tuple(post.shape) != tuple(reference["post_bn.weight"].shape):
        state = {k: v for k, v in state.items() if not k.startswith("post_bn.")}
        return state, ("post_bn.",)
    return state, ()


def _format(path: Path) -> str:
    # by content, so a misnamed file still loads; the suffix only breaks ties for legacy torch pickles
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected backbone weights (.h5, .safetensors, .pt/.pth/.bin)")
    with path.open("rb") as f:
        head = f.read(9)
    if head[:8] == _HDF5_MAGIC or h5py.is_hdf5(path):
        return "keras"
    if head[:4] == _ZIP_MAGIC or (head[:1] == b"\x80" and path.suffix.lower() in {".pt", ".pth", ".bin"}):
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size:
        return "safetensors"
    raise DataError(
        f"{path}: unrecognised weights file; expected a Keras .h5, a .safetensors file or a torch .pt/.pth/.bin "
        "state dict"
    )


def load_backbone_weights(backbone: ResNet50V2Backbone, path: str | Path) -> ResNet50V2Backbone:
    """Load weights into `backbone` in place, strictly; returns it.

    Accepts a Keras ResNet50V2 .h5 (exact port), a safetensors or torch file holding our own keys (with or
    without a `backbone.` prefix, e.g. a whole DeFakeNet state dict) or a timm `resnetv2_50` state dict
    (an initialisation only, see `convert_timm_resnetv2`). DataError on missing / unexpected keys or shapes.
    A truncated backbone (`backbone.stages` < 4) takes the layers it keeps from a full file, shapes checked;
    the removed stages are skipped, and so is `post_bn` when its width differs (it keeps its initialisation).
    """
    path = Path(path)
    kind = _format(path)
    if kind == "keras":
        state = import_keras_h5(path)
    else:
        state = load_safetensors(path) if kind == "safetensors" else _load_torch(path)
        state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
        if any(k.startswith("backbone.") for k in state):
            state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        if any(k.startswith(("stem.", "stages.")) for k in state):
            state = convert_timm_resnetv2(state)
    reference = backbone.state_dict()
    optional: tuple[str, ...] = ()
    if backbone.stages < len(RESNET50V2_STACKS):
        state, optional = _truncate(state, backbone, reference)
    _check_state(state, reference, str(path), optional)
    full = {k: state.get(k, reference[k]) for k in reference}
    backbone.load_state_dict(full, strict=True)
    return backbone


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_keras_weights(dest_dir: str | Path) -> Path:
    """Download the official Keras ResNet50V2 notop weights into `dest_dir` (md5-checked); returns the file.

    A file already there with the right checksum is reused. Needs internet; air-gapped users copy the file in.
    """
    dest = Path(dest_dir) / KERAS_WEIGHTS_FILE
    if dest.is_file() and _md5(dest) == KERAS_WEIGHTS_MD5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(KERAS_WEIGHTS_URL, timeout=60) as response, part.open("wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DataError(
            f"cannot download {KERAS_WEIGHTS_URL} ({getattr(e, 'reason', e)}); fetch it on a machine with "
            f"internet access and pass the file path instead"
        ) from e
    got = _md5(part)
    if got != KERAS_WEIGHTS_MD5:
        part.unlink(missing_ok=True)
        raise DataError(f"{KERAS_WEIGHTS_URL}: md5 {got} does not match the expected {KERAS_WEIGHTS_MD5}")
    part.replace(dest)
    return dest


def import_keras_cli(h5_path: str | Path, out_path: str | Path) -> dict:
    """Convert a Keras ResNet50V2 .h5 to a backbone safetensors file; returns a summary for the CLI to print."""
    state = import_keras_h5(h5_path)
    metadata = {"architecture": "resnet50v2", "source": Path(h5_path).name, "preprocess": "tf"}
    out = save_safetensors(state, out_path, metadata=metadata)
    return {
        "source": str(h5_path),
        "output": str(out),
        "tensors": len(state),
        "layers": len(_keras_layer_paths()),
        "keras_params": sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")),
    }
