"""Typed, frozen configuration: one nested-dict form, YAML files and `--set section.key=value` overrides.

Every default lives here and only here. `Config.from_sources(file, sets)` merges defaults ← YAML ← overrides,
coerces each value to its field's type and rejects unknown keys, listing the valid ones. `Config.flat()` gives
`section.key` strings that `--set` accepts back, so a run can be reproduced from its logged params.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from defakenet.faces import DEFAULT_MARGIN
from defakenet.errors import ConfigError


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text, shown by `defakenet config show` and the CLI flags."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class DataConfig:
    root: str = _f("", "dataset folder or CSV root (split folders, flat real/fake, Kaggle 140k or RVF10K CSVs)")
    image_size: int = _f(224, "square input size fed to the network (the paper uses 224)")
    input_policy: str = _f("resize", "how an image becomes the network input: resize = shorter side to image_size/crop_pct "
                                     "and centre crop (random resized crop in training); crop = image_size crops at the "
                                     "image's native resolution (random in training, centre otherwise; smaller images are "
                                     "padded, never upscaled), which keeps the generator's pixel-level traces")
    crop_pct: float = _f(1.0, "input_policy resize: eval resize = image_size / crop_pct on the short side, then centre crop")
    eval_size: int = _f(0, "input_policy crop: evaluation and serving take a centre crop of this size (>= image_size; "
                           "0 = image_size): the network averages its patch scores over more of the image (Chai et "
                           "al. 2020)")
    split: tuple = _f((0.7, 0.15, 0.15), "train/valid/test shares for layouts without split folders")
    split_seed: int = _f(0, "seed of the hash split; changing it reshuffles which files land in which split")
    loader_workers: int = _f(2, "decode/augment worker processes for in-process loading")
    train_fraction: float = _f(1.0, "share of the training split used, per class, chosen by data.split_seed (learning "
                                    "curves); valid and test are unchanged")
    faces: str = _f("off", "face stage: off = the network sees the whole image; crop = faces are found in each image "
                           "(RetinaFace, docs/faces.md), cropped with data.face_margin and scored one by one, in "
                           "training, evaluation and serving alike")
    face_margin: float = _f(DEFAULT_MARGIN, "faces crop: share of the face box's side added on each side (DFDC's winning "
                                 "solutions used ~30 %)")
    face_aggregate: str = _f("max", "faces crop: an image's p_fake from its faces' scores: max = the most suspicious "
                                    "face, mean = their mean")


    @property
    def input_size(self) -> int:
        """The side of the images evaluation and serving feed the network (training crops image_size)."""
        return self.eval_size or self.image_size


@dataclass(frozen=True)
class AugmentConfig:
    scale_min: float = _f(0.6, "random resized crop: smallest area share kept")
    flip_p: float = _f(0.5, "horizontal flip probability")
    jitter_p: float = _f(0.3, "colour jitter probability (brightness/contrast/saturation 0.2, hue 0.02)")
    jpeg_p: float = _f(0.1, "JPEG re-compression probability, quality 30-100 (Wang et al. 2020)")
    jpeg_quality_min: int = _f(30, "lowest JPEG quality used by re-compression")
    blur_p: float = _f(0.1, "Gaussian blur probability, sigma 0-blur_sigma_max (Wang et al. 2020)")
    blur_sigma_max: float = _f(3.0, "largest Gaussian blur sigma")
    noise_p: float = _f(0.1, "Gaussian noise probability")
    noise_std_max: float = _f(0.03, "largest noise std as a share of 255")
    erase_p: float = _f(0.0, "random erasing probability (Zhong et al. 2020): 1-3 zero-filled holes of 10-25 % of the "
                             "side each")
    mixup_alpha: float = _f(0.0, "mixup (Zhang et al. 2018): each batch blended with a shuffled copy of itself by "
                                 "lambda ~ Beta(alpha, alpha), labels alike; 0 = off")


@dataclass(frozen=True)
class ModelConfig:
    weights: str = _f("", "backbone weights: Keras .h5, .safetensors, timm or plain state dict; empty = random init")
    preprocessing: str = _f("tf", "input normalisation: 'tf' = x/127.5-1 (Keras weights), 'torch' = ImageNet mean/std")
    input_filter: str = _f("none", "fixed high-pass filter in front of the backbone: none, npr (x minus its nearest "
                                   "2x down-up copy, Tan et al. CVPR 2024) or srm (three SRM residual filters, "
                                   "Fridrich & Kodovsky 2012)")
    stages: int = _f(4, "backbone stages kept of conv2..conv5: 4 = the whole ResNet50V2, fewer = a shallower network "
                        "that sees local patches (Chai et al. ECCV 2020)")
    dropout: float = _f(0.2, "dropout before the single-logit head")
    freeze_depth: int = _f(0, "freeze the first k of [stem, conv2, conv3, conv4, conv5] (as many as model.stages "
                              "keeps); 0 = train all, stages + 1 = head only")
    unfreeze_epoch: int = _f(0, "staged unfreezing: from this epoch on every layer trains (new optimizer); 0 = never")


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f("adamw", "optimizer: adamw or sgd")
    lr: float = _f(1e-3, "peak learning rate after warmup")
    weight_decay: float = _f(1e-4, "decoupled (adamw) or L2 (sgd) weight decay")
    momentum: float = _f(0.9, "sgd momentum (ignored by adamw)")
    warmup_epochs: float = _f(0.5, "linear warmup length in epochs, then cosine decay to zero")
    label_smoothing: float = _f(0.0, "binary label smoothing: targets become eps/2 and 1-eps/2")
    grad_clip: float = _f(1.0, "max global gradient norm; 0 disables clipping")


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = _f("", "named recipe whose settings replace the defaults (`defakenet config recipes`); what you set "
                         "yourself still wins; empty = the defaults")
    epochs: int = _f(10, "training epochs")
    batch_size: int = _f(32, "images per step per worker")
    seed: int = _f(0, "seed for weights, shuffling and augmentation")
    amp: str = _f("auto", "mixed precision: auto (bf16 on GPU, off on CPU), bf16, fp16 or off")
    channels_last: bool = _f(True, "channels_last memory format on GPU")
    patience: int = _f(0, "early stopping after this many epochs without val ROC-AUC gain; 0 = off")
    threshold_method: str = _f("youden", "how the decision threshold is chosen on valid: youden, fpr or eer")
    target_fpr: float = _f(0.05, "false-positive rate targeted by threshold_method=fpr")
    max_steps: int = _f(0, "stop each epoch after this many steps (smoke runs); 0 = full epochs")
    log_level: str = _f("WARNING", "Ray Train's console messages: WARNING = problems only; INFO adds its per-report "
                                   "and restart lines (its log files under /tmp/ray keep every level)")


@dataclass(frozen=True)
class ResourcesConfig:
    workers: int = _f(2, "data-parallel training workers")
    use_gpu: bool = _f(False, "one GPU per worker (NCCL) instead of CPU (gloo)")
    cpus_per_worker: float = _f(1.0, "CPUs reserved per training worker")
    max_failures: int = _f(2, "worker failures survived per run by restarting from the latest checkpoint")
    placement_strategy: str = _f("PACK", "where workers go: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD (one per node)")


@dataclass(frozen=True)
class TrackingConfig:
    home: str = _f("", "data folder for the embedded defaults (runs, MLflow store, Ray results); empty = ./.defakenet")
    tracking_uri: str = _f("", "MLflow tracking URI; empty = $MLFLOW_TRACKING_URI or sqlite under `home`")
    experiment: str = _f("defakenet", "MLflow experiment name")
    run_name: str = _f("", "run name; reusing one resumes that run; empty = generated")
    register: str = _f("", "register the final model under this name; empty = train doesn't register, tune "
                           "registers as 'defakenet'")
    storage: str = _f("", "Ray Train storage_path for checkpoints: folder, NFS mount or s3:// URI; empty = HOME/ray_results")
    wait_for_server_s: float = _f(120.0, "at the end of training, how long to wait for an MLflow server that does not "
                                         "answer before giving up on logging the model (it stays saved in "
                                         "HOME/runs/RUN/model)")


@dataclass(frozen=True)
class PromoteConfig:
    auc_margin: float = _f(0.0, "a new version becomes champion only if its test ROC-AUC beats the champion's by more")
    max_accuracy_drop: float = _f(0.01, "… and its test accuracy is at most this much below the champion's")
    suite: str = _f("", "evaluation suite file (YAML, see docs/quality.md) run on a new version and the champion "
                        "before the gate; empty = the test-split rule only")
    max_set_auc_drop: float = _f(0.02, "with promote.suite: … and no suite cell (set × degradation) has a ROC-AUC more "
                                       "than this below the champion's")


@dataclass(frozen=True)
class ExportConfig:
    onnx: bool = _f(True, "save the ONNX graph (model.onnx, fp32) with every final model, so a logged or registered "
                          "version carries it: serve/evaluate/predict --runtime onnx")
    int8: bool = _f(False, "also quantize it to int8 at the end of training (static QDQ, calibrated on the valid "
                           "split), kept only when its test ROC-AUC passes export.int8_max_auc_drop: --runtime onnx-int8")
    int8_max_auc_drop: float = _f(0.005, "int8 is kept only if its test ROC-AUC is at most this below fp32's")
    calibration_images: int = _f(256, "valid-split images the int8 calibration runs (activation ranges)")


def _default_space() -> dict:
    # learning rate and freeze depth (fine-tuning), and the augmentation strength that mattered on real faces:
    # random resized crops that rescale the face cost ROC-AUC (docs/quality.md)
    return {"optim": {"lr": {"loguniform": [1e-5, 1e-2]}}, "model": {"freeze_depth": {"int": [0, 5]}},
            "augment": {"scale_min": {"uniform": [0.6, 1.0]}}}


@dataclass(frozen=True)
class TuneConfig:
    num_samples: int = _f(8, "trials in the study")
    max_concurrent: int = _f(0, "trials at once; 0 = as many as the cluster's GPUs (or CPUs) fit")
    search: str = _f("optuna", "search algorithm: optuna (TPE) or random")
    grace_period: int = _f(1, "ASHA: epochs every trial trains before it can be stopped")
    reduction_factor: float = _f(2.0, "ASHA: each rung keeps the best 1/reduction_factor of trials")
    space: dict = field(default_factory=_default_space, metadata={
        "help": "search space, nested like the config: {section: {key: {loguniform|uniform: [lo, hi] | "
                "int: [lo, hi] | choice: [v, …]}}}"})


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    # ---- construction

    @classmethod
    def from_dict(cls, d: dict | None) -> Config:
        """Build from a nested dict; missing keys take the recipe's values (train.recipe) or the defaults, unknown
        keys raise ConfigError."""
        return _build(cls, _with_recipe(d or {}), prefix="")

    @classmethod
    def from_sources(cls, path: str | Path | None = None, sets: typing.Iterable[str] = ()) -> Config:
        """Defaults ← YAML/JSON file ← `section.key=value` overrides (later wins)."""
        d = load_file(path) if path else {}
        for item in sets:
            key, value = parse_set(item)
            _put(d, key, value)
        return cls.from_dict(d)

    def replace(self, **flat: Any) -> Config:
        """A copy with `section.key` values replaced (keys use '.' or '__' as separator)."""
        d = self.to_dict()
        for key, value in flat.items():
            _put(d, key.replace("__", "."), value)
        return Config.from_dict(d)

    # ---- views

    def to_dict(self) -> dict:
        """Nested plain dict (tuples become lists), the form YAML files and MLflow artifacts use."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def flat(self) -> dict[str, Any]:
        """`section.key` → value, the strings `--set` accepts back."""
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() for k, v in sub.items()}


def describe() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every config key, in declaration order."""
    rows = []
    hints = typing.get_type_hints(Config)
    for sect in dataclasses.fields(Config):
        sub = hints[sect.name]
        sub_hints = typing.get_type_hints(sub)
        for f in dataclasses.fields(sub):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{sect.name}.{f.name}", _type_name(sub_hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def valid_keys() -> list[str]:
    return [row[0] for row in describe()]


def load_file(path: str | Path, what: str = "config file") -> dict:
    """Read a YAML (or JSON) file holding a mapping into a dict; errors name `what` and the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p} is not valid YAML: {e}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{what} {p} must hold a mapping, got {type(d).__name__}")
    return d


class SetText(str):
    """The text of a `--set` value: kept verbatim for string keys, read as YAML for the others."""

    def parsed(self) -> Any:
        try:
            return yaml.safe_load(self) if self.strip() else ""
        except yaml.YAMLError:
            return str(self)


def parse_set(item: str) -> tuple[str, SetText]:
    """`section.key=value` → (key, value text); the value's type comes from the key it sets."""
    if "=" not in item:
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(f"--set key must look like section.key (e.g. optim.lr), got {key!r}")
    return key, SetText(raw)


# ---- internals


def _with_recipe(d: dict) -> dict:
    """`d` laid over the settings of the recipe it names (train.recipe), if any."""
    train = d.get("train")
    name = train.get("recipe") if isinstance(train, dict) else None
    if isinstance(name, SetText):
        name = str(name)
    if not name:
        return d
    from defakenet.recipes import recipe_settings

    out: dict = {}
    for key, value in recipe_settings(str(name)).items():
        _put(out, key, value)
    for section, sub in d.items():
        if isinstance(sub, dict) and isinstance(out.get(section), dict):
            out[section] = {**out[section], **sub}
        else:
            out[section] = sub
    return out


def _put(d: dict, key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    if not name:
        raise ConfigError(f"config key must look like section.key, got {key!r}")
    sub = d.setdefault(section, {})
    if not isinstance(sub, dict):
        raise ConfigError(f"config section {section!r} must be a mapping")
    sub[name] = value


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def _build(cls: type, d: dict, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or 'root'} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        valid = ", ".join(prefix + n for n in names)
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; valid keys: {valid}")
    kwargs = {}
    for name in names:
        if name not in d:
            continue
        t = hints[name]
        if dataclasses.is_dataclass(t):
            kwargs[name] = _build(t, d[name] or {}, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(d[name], t, f"{prefix}{name}")
    obj = cls(**kwargs)
    _validate(obj, prefix)
    return obj


def _coerce(value: Any, t: Any, key: str) -> Any:
    if isinstance(value, SetText):
        # a string key takes the text as typed (`--set train.amp=off` is "off", not False)
        value = str(value) if t is str else value.parsed()
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if t is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if t is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t is str:
            return "" if value is None else str(value)
        if t is dict:
            if not isinstance(value, dict):
                raise ValueError
            return _lists_of_numbers(value)
        if t is tuple:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split()]
            return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"unhandled config type {t} for {key}")
    raise ConfigError(f"config key {key} expects {_type_name(t)}, got {value!r}")


_CHOICES = {
    "model.preprocessing": ("tf", "torch"),
    "model.input_filter": ("none", "npr", "srm"),
    "data.input_policy": ("resize", "crop"),
    "data.faces": ("off", "crop"),
    "data.face_aggregate": ("max", "mean"),
    "optim.name": ("adamw", "sgd"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.threshold_method": ("youden", "fpr", "eer"),
    "train.log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "resources.placement_strategy": ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    "tune.search": ("optuna", "random"),
}
# search-space domains: name → what its list holds
DOMAINS = {"loguniform": "[low, high], low > 0", "uniform": "[low, high]", "int": "[low, high], both inclusive",
           "choice": "[value, …]"}


def search_space(space: dict) -> dict[str, tuple[str, list]]:
    """`tune.space` (nested like the config) → {"section.key": (domain, args)}, every key and domain checked."""
    if not isinstance(space, dict) or not space:
        raise ConfigError("config key tune.space must map sections to keys to domains, e.g. "
                          "{optim: {lr: {loguniform: [1e-5, 1e-2]}}}")
    rows = {key: typ for key, typ, _, _ in describe()}
    out = {}
    for section, keys in space.items():
        if not isinstance(keys, dict):
            raise ConfigError(f"tune.space.{section} must map keys to domains, got {keys!r}")
        for name, spec in keys.items():
            key = f"{section}.{name}"
            if key not in rows or section in ("tune", "promote", "tracking"):
                raise ConfigError(f"tune.space names {key}, which is not a config key that a trial can vary "
                                  f"(see `defakenet config keys`)")
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DOMAINS:
                raise ConfigError(f"tune.space.{key} must be one of " + ", ".join(f"{{{d}: {a}}}" for d, a in DOMAINS.items())
                                  + f"; got {spec!r}")
            domain, args = next(iter(spec.items()))
            ok = isinstance(args, (list, tuple)) and len(args) >= 1
            if ok and domain != "choice":  # YAML 1.1 reads 1e-5 (no dot) as a string
                args = [_number(a) for a in args]
            if ok and domain != "choice":
                ok = len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) \
                    and args[0] <= args[1] and rows[key] in ("int", "float") \
                    and (domain != "loguniform" or args[0] > 0) and (domain != "int" or (rows[key] == "int" and all(float(a).is_integer() for a in args)))
            if not ok:
                raise ConfigError(f"tune.space.{key}: {domain} expects {DOMAINS[domain]} for a {rows[key]} key, "
                                  f"got {args!r}")
            out[key] = (domain, list(args))
    return out


def _lists_of_numbers(d: Any) -> Any:
    """Numbers inside lists parsed (YAML 1.1 reads 1e-5 as a string); everything else as it is."""
    if isinstance(d, dict):
        return {k: _lists_of_numbers(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_number(v) for v in d]
    return d


def _number(a: Any) -> Any:
    if isinstance(a, str):
        try:
            return float(a)
        except ValueError:
            pass
    return a


def _validate(obj: Any, prefix: str) -> None:
    """Range and choice checks for one section; errors name the key and the allowed values."""
    for f in dataclasses.fields(obj):
        key, v = f"{prefix}{f.name}", getattr(obj, f.name)
        if key in _CHOICES and v not in _CHOICES[key]:
            raise ConfigError(f"config key {key} must be one of {', '.join(_CHOICES[key])}, got {v!r}")
        if key.endswith("_p") and not 0.0 <= v <= 1.0:
            raise ConfigError(f"config key {key} is a probability in [0, 1], got {v}")
    positive = {"data.image_size", "train.epochs", "train.batch_size", "resources.workers", "optim.lr"}
    for f in dataclasses.fields(obj):
        key, v = f"{prefix}{f.name}", getattr(obj, f.name)
        if key in positive and v <= 0:
            raise ConfigError(f"config key {key} must be > 0, got {v}")
    if prefix == "data.":
        if len(obj.split) != 3 or any(s < 0 for s in obj.split) or abs(sum(obj.split) - 1) > 1e-6 or obj.split[0] <= 0:
            raise ConfigError(f"config key data.split needs three non-negative shares summing to 1, got {list(obj.split)}")
        if not 0 < obj.crop_pct <= 1:
            raise ConfigError(f"config key data.crop_pct must be in (0, 1], got {obj.crop_pct}")
        if obj.eval_size and (obj.input_policy != "crop" or obj.eval_size < obj.image_size):
            raise ConfigError(f"config key data.eval_size {obj.eval_size} needs data.input_policy crop and a size >= "
                              f"data.image_size {obj.image_size} (0 = image_size)")
        if not 0 <= obj.face_margin <= 2:
            raise ConfigError(f"config key data.face_margin must be in [0, 2] (a share of the face box per side), "
                              f"got {obj.face_margin}")
        if not 0 < obj.train_fraction <= 1:
            raise ConfigError(f"config key data.train_fraction must be in (0, 1], got {obj.train_fraction}")
    if prefix == "tune.":
        search_space(obj.space)
        if obj.num_samples < 1 or obj.max_concurrent < 0 or obj.grace_period < 1 or obj.reduction_factor <= 1:
            raise ConfigError("config keys tune.num_samples >= 1, tune.max_concurrent >= 0, tune.grace_period >= 1 "
                              f"and tune.reduction_factor > 1 are required, got {obj.num_samples}, "
                              f"{obj.max_concurrent}, {obj.grace_period}, {obj.reduction_factor}")
    if prefix == "model." and obj.unfreeze_epoch < 0:
        raise ConfigError(f"config key model.unfreeze_epoch must be >= 0, got {obj.unfreeze_epoch}")
    if prefix == "model." and not 1 <= obj.stages <= 4:
        raise ConfigError(f"config key model.stages must be in 1..4 (of conv2..conv5), got {obj.stages}")
    if prefix == "model." and not 0 <= obj.freeze_depth <= obj.stages + 1:
        raise ConfigError(f"config key model.freeze_depth must be in 0..{obj.stages + 1} (stem + {obj.stages} "
                          f"stages), got {obj.freeze_depth}")
    if prefix == "augment." and obj.mixup_alpha < 0:
        raise ConfigError(f"config key augment.mixup_alpha must be >= 0 (0 = off), got {obj.mixup_alpha}")
    if prefix == "tracking." and obj.wait_for_server_s < 0:
        raise ConfigError(f"config key tracking.wait_for_server_s must be >= 0 (0 = no wait), got {obj.wait_for_server_s}")
    if prefix == "promote." and obj.max_set_auc_drop < 0:
        raise ConfigError(f"config key promote.max_set_auc_drop must be >= 0, got {obj.max_set_auc_drop}")
