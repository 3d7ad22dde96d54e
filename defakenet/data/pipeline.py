"""Ray Data input pipeline: manifest rows → decoded, augmented (image, label) batches on the Ray Train workers.

    manifest rows (one split)
      │ from_pandas: path, label, key [, degrade] (small rows only)
      │ random_shuffle (train only): paths in a new order every execution
      │ map_batches(DecodeBatch), CPU tasks: read bytes, decode, [degrade,] [face crop,] augment (one Preprocess
      │ per process)
      ▼
    image float32 N×3×S×S, label float32 ──iter_batches──▶ (x, y) torch batches for engine.train_one_epoch

Bytes are read inside the decode stage through a pyarrow filesystem resolved from each path's scheme (plain or
file:// paths = local disk or an NFS mount, s3://, gs://, ...), so labels travel in the same row as their path (no
join on Ray's scheme-stripped paths), nothing lists or stats every file on the driver, raw bytes never enter the
object store, and a read or decode failure names the manifest path (`DataError`). The global shuffle moves paths,
not pixels, so it costs next to nothing.

Every iteration of a dataset re-executes it: a new epoch on the driver, and under Ray Train V2 each
`get_dataset_shard(name).iter_torch_batches()` pass re-runs the pipeline through the split coordinator. Ray Data
counts these executions (`DataContext._execution_idx`), which gives each epoch a new shuffle order
(`RandomSeedConfig(reseed_after_execution=True)`) and new augmentations: each image is augmented with a seed made
of (base seed, execution index, hash of its relative path), so the result does not depend on how rows land on
blocks, processes or machines, and a run with the same seed sees the same images epoch by epoch.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import ray
import ray.data
import ray.train
from ray.data import DataContext, ExecutionOptions, RandomSeedConfig, TaskPoolStrategy

from defakenet.config import AugmentConfig, Config, DataConfig
from defakenet.data.degrade import NONE, canonical, degrade
from defakenet.data.image import decode_rgb
from defakenet.data.storage import Files
from defakenet.errors import DataError, first_line

if TYPE_CHECKING:
    import torch

    from defakenet.data.augment import Preprocess

# rows per decode call: small enough to stream (32 × 3 × 224² float32 = 19 MB), large enough to amortise the call
DECODE_BATCH = 32
# the manifest is cut into blocks of about this many paths (between MIN_BLOCKS and MAX_BLOCKS blocks), the unit
# of parallel decoding; the shuffle's cost grows with blocks², so more blocks than this buys nothing
ROWS_PER_BLOCK = 512
MIN_BLOCKS = 8
MAX_BLOCKS = 128
# dataset names the default TorchTrainer wiring evaluates (split across workers without dropping rows)
EVAL_DATASETS = ("valid",)


def build_dataset(
    manifest_rows: pd.DataFrame,
    cfg: Config,
    *,
    train: bool,
    seed: int | None = None,
    num_cpus: float = 1.0,
    max_decoders: int | None = None,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of `image` (float32 N×3×S×S, S = data.image_size) and `label` (float32, 1 = fake).

    `manifest_rows` are the rows of one split (columns path and label; relpath, when present, keys the
    augmentation seed so it survives moving the dataset). An optional `degrade` column holds a degradation spec
    per row (`defakenet.data.degrade`; missing = none), applied to the decoded image before preprocessing and
    seeded by the same key, so a row gets the same degraded bytes on every run. train=True shuffles globally and
    augments with fresh randomness each time the dataset is iterated; train=False neither shuffles nor augments
    and yields rows in manifest order. `seed` defaults to `train.seed`. Decoding runs as Ray tasks of `num_cpus`
    each, at most `max_decoders` at once (None: as many as free CPUs allow); leave CPUs free for them besides the
    training workers, or the pipeline waits forever for a CPU.
    """
    for col in ("path", "label"):
        if col not in manifest_rows.columns:
            found = ", ".join(map(str, manifest_rows.columns))
            raise ValueError(f"manifest rows need columns path and label, got {found}")
    if len(manifest_rows) == 0:
        raise DataError("no images to read: the manifest rows for this split are empty")
    seed = cfg.train.seed if seed is None else seed
    keyed = manifest_rows["relpath"] if "relpath" in manifest_rows.columns else manifest_rows["path"]
    table = pd.DataFrame({
        "path": manifest_rows["path"].astype(str).to_numpy(),
        "label": manifest_rows["label"].to_numpy(dtype=np.float32),
        "key": np.array([_path_key(str(p)) for p in keyed], dtype=np.int64),
    })
    if "degrade" in manifest_rows.columns:
        # canonical here, so a bad spec is a ConfigError on the driver, not a failed task
        specs = manifest_rows["degrade"].fillna(NONE).astype(str)
        table["degrade"] = specs.map({s: canonical(s) for s in specs.unique()}).to_numpy(dtype=object)
    # from_pandas(override_num_blocks=...) is broken with pandas 3 (np.array_split returns bare arrays): cut here
    n, blocks = len(table), _num_blocks(len(table))
    bounds = [round(i * n / blocks) for i in range(blocks + 1)]
    ds = ray.data.from_pandas([table.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds, bounds[1:])])
    if train:
        ds = ds.random_shuffle(seed=RandomSeedConfig(seed=_u64(seed), reseed_after_execution=True))
    else:
        # ds.context is this dataset's own DataContext (from_pandas snapshots the process-wide one); Ray Train
        # replaces its execution options with DataConfig's, see dataset_config()
        ds.context.execution_options.preserve_order = True
    # a failing row raises its own DataError (naming the file), not a UserCodeException holding only its text
    ds.context.raise_original_map_exception = True
    return ds.map_batches(
        DecodeBatch(cfg.data, cfg.augment if train else None, cfg.model.preprocessing, seed),
        batch_size=DECODE_BATCH,
        batch_format="numpy",
        compute=TaskPoolStrategy(size=max_decoders),
        num_cpus=num_cpus,
        udf_modifying_row_count=False,
    )


def iter_batches(
    ds_or_shard: ray.data.Dataset | ray.data.DataIterator,
    batch_size: int,
    *,
    train: bool,
    seed: int | None = None,
    device: Any = None,
    shuffle_buffer: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x float32 N×3×S×S, y float32 N) torch batches from a dataset or a Ray Train shard, for `engine` loops.

    Each call is one pass (one epoch) and re-executes the pipeline. train=True drops the last incomplete batch, so
    every worker of an equal split takes the same number of steps (see steps_per_epoch). The row order is already
    shuffled by build_dataset; `shuffle_buffer` > 0 adds a local shuffle buffer (seeded by `seed`) for datasets
    built elsewhere. `device` None means Ray's "auto" (the worker's device under Ray Train, else CPU). A bad image
    surfaces as the DataError raised in the decode task, naming the file.
    """
    import torch

    kwargs: dict[str, Any] = {}
    if train and shuffle_buffer > 0:
        kwargs = {"local_shuffle_buffer_size": max(shuffle_buffer, batch_size), "local_shuffle_seed": seed}
    batches = ds_or_shard.iter_torch_batches(
        batch_size=batch_size, dtypes=torch.float32, device="auto" if device is None else device,
        drop_last=train, **kwargs,
    )
    try:
        for batch in batches:
            yield batch["image"], batch["label"]
    except Exception as e:  # noqa: BLE001 - re-raised unchanged unless a DataError is inside
        cause = find_data_error(e)
        if cause is None:
            raise
        raise DataError(first_line(cause)) from None


def dataset_config(eval_datasets: Sequence[str] = EVAL_DATASETS, *, split_eval: bool = True) -> ray.train.DataConfig:
    """The `dataset_config=` for `TorchTrainer(datasets={"train": ..., "valid": ...})`.

    Training datasets are split into equal shards (n // workers rows each; DDP needs every worker to take the
    same number of steps). Eval datasets are, by default, split without dropping rows: each worker predicts its
    shard and `gather_predictions` collects the labels and scores, so the metrics cover every validation image
    once and N workers evaluate N times faster. Predict with the unwrapped model (`model.module` under DDP): a
    shard may be smaller than the others or empty, and DDP's forward can issue a collective. split_eval=False
    gives every worker the whole eval dataset instead (no gather; N times the compute).
    """
    if split_eval:
        return _SplitEvalDataConfig(eval_datasets)
    options = {name: _ordered_options() for name in eval_datasets}
    return _IngestDataConfig(datasets_to_split=["train"], execution_options=options)


def gather_predictions(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every worker's (labels, scores) on every worker; a no-op outside torch.distributed.

    A collective: all workers call it, each with its own shard's predictions (possibly empty).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return labels, scores
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (np.asarray(labels), np.asarray(scores)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def steps_per_epoch(num_rows: int, batch_size: int, workers: int = 1) -> int:
    """Optimizer steps each worker takes per epoch on an equal split with drop_last (for LR schedules)."""
    return (num_rows // max(workers, 1)) // batch_size


class DecodeBatch:
    """map_batches callable: read each path's bytes, decode to RGB, degrade (rows with a `degrade` spec), preprocess.

    An instance, not a class: Ray Data runs it as tasks on pooled worker processes that stay warm between
    epochs, and each process builds the Albumentations pipeline once (`_preprocess`). A callable class would run
    on actors, which Ray Data starts afresh for every execution, so every epoch would pay the albumentations +
    torch import and pipeline build again (about 5 s per actor on a laptop).
    """

    def __init__(self, data: DataConfig, augment: AugmentConfig | None, mode: str, seed: int):
        self.data, self.augment, self.mode, self.seed = data, augment, mode, _u64(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pre = _preprocess(self.data, self.augment, self.mode)
        epoch = _execution_index()
        images = []
        specs = batch["degrade"] if "degrade" in batch else [NONE] * len(batch["path"])
        for path, key, spec in zip(batch["path"], batch["key"], specs):
            path = str(path)
            rgb = decode_rgb(_files().read(path), name=path)
            if spec != NONE:
                rgb = degrade(rgb, str(spec), int(key))
            if self.data.faces == "crop":
                rgb = face_crop(rgb, self.data.face_margin)
            if self.augment is not None:
                from defakenet.data.augment import reseed

                reseed(pre.transform, [self.seed, epoch, int(key)])
            images.append(pre(rgb))
        return {"image": np.stack(images), "label": np.asarray(batch["label"], dtype=np.float32)}


# ---- internals


@functools.lru_cache(maxsize=8)
def _preprocess(data: DataConfig, augment: AugmentConfig | None, mode: str) -> Preprocess:
    # one pipeline per process and config (frozen dataclasses hash by value); train pipelines are reseeded per row.
    # imported here: albumentations pulls in torch (~4 s), which Ray Data's split coordinators never need
    from defakenet.data.augment import Preprocess

    return Preprocess(data, augment, mode, seed=0 if augment is not None else None)


@functools.lru_cache(maxsize=1)
def _files() -> Files:
    return Files()


@functools.lru_cache(maxsize=1)
def _detector():
    from defakenet.faces import FaceDetector

    return FaceDetector(threads=1)  # one per decode process; Ray runs as many processes as it has CPUs for


def face_crop(rgb: np.ndarray, margin: float) -> np.ndarray:
    """data.faces crop in training and evaluation: the crop of the detector's most confident face, or the whole
    image when it finds none (a row needs an input; `defakenet data inspect --set data.faces=crop` lists those
    images). Serving scores every face and takes data.face_aggregate of them (docs/faces.md)."""
    from defakenet.faces import crop

    found = _detector().detect(rgb)
    return crop(rgb, found[0], margin) if found else rgb


def _execution_index() -> int:
    # how many times this dataset has been executed before (the epoch, for a dataset iterated once per epoch).
    # Ray Data ships each execution's DataContext to its tasks and actors; its own random() expression and file
    # shuffling read the same counter. tests/test_pipeline.py fails if it stops changing between epochs.
    return int(getattr(DataContext.get_current(), "_execution_idx", 0))


def _path_key(path: str) -> int:
    """A stable 63-bit key of a path (not Python's salted hash())."""
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "little") >> 1


def _u64(seed: int) -> int:
    return int(seed) % (1 << 63)


def _num_blocks(n: int) -> int:
    return max(min(n, MIN_BLOCKS), min(MAX_BLOCKS, math.ceil(n / ROWS_PER_BLOCK)))


def find_data_error(e: BaseException) -> DataError | None:
    """The DataError behind an exception that crossed Ray (a RayTaskError whose cause is the DataError)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, DataError) and not isinstance(x, ray.exceptions.RayError):
            return x
        stack += [x.__context__, x.__cause__, getattr(x, "cause", None)]
    return None


def _ordered_options():
    opts = _IngestDataConfig.default_ingest_options()
    opts.preserve_order = True
    return opts


class _IngestDataConfig(ray.train.DataConfig):
    """ray.train.DataConfig without a deprecation warning on every run.

    Ray 2.60's default_ingest_options() hands DataContext's `exclude_resources` (deprecated, zero unless set)
    back to ExecutionOptions, which prints a RayDeprecationWarning from the dataset manager on every training run.
    This carries over the same options from DataContext, less that one.
    """

    @staticmethod
    def default_ingest_options():
        current = DataContext.get_current().execution_options
        return ExecutionOptions(
            resource_limits=current.resource_limits,
            preserve_order=current.preserve_order,
            verbose_progress=current.verbose_progress,
        )


class _SplitEvalDataConfig(_IngestDataConfig):
    """Splits every dataset; the eval datasets with equal=False, so no validation row is dropped."""

    def __init__(self, eval_datasets: Iterable[str]):
        super().__init__(datasets_to_split="all")
        self._eval = frozenset(eval_datasets)

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        # Ray Train V2 calls this once per dataset name, on rank 0's first get_dataset_shard(name)
        rest = {k: v for k, v in datasets.items() if k not in self._eval}
        output = super().configure(rest, world_size, worker_handles, worker_node_ids, **kwargs)
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            if name not in self._eval:
                continue
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self.default_ingest_options()
            for i, it in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                output[i][name] = it
        return output
