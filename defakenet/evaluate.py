"""Batch inference of a saved model with Ray Data.

`score_rows` runs the model over manifest rows with `map_batches` on a pool of actors (one model copy each, on a
GPU when asked), in row order. Rows may carry a `degrade` column (a degradation spec per row, applied to the
decoded image before the model's own preprocessing). Training's final evaluation and `defakenet evaluate`
(`suite.run_suite`, which recomputes each set's split with the shares and seed stored with the model) both score
through it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from defakenet.artifact import load_model, load_model_files
from defakenet.inference import BATCH_CPU, BATCH_GPU, Predictor

class _Scorer:
    """map_batches actor: one Predictor per actor, scores p(fake) for batches of preprocessed images.

    `model`: a model directory, or (what `score_rows` passes) a one-item list holding an object-store ref to the
    model's files, so that actors on other nodes, which cannot see the driver's disk, get them too. The list
    keeps Ray from resolving the ref on the way in."""

    def __init__(self, model: str | list, use_gpu: bool, runtime: str = "torch"):
        from defakenet.runtime import assigned_cpus

        if isinstance(model, str):
            saved = load_model(model, runtime=runtime)
        else:
            import ray

            saved = load_model_files(ray.get(model[0]), runtime=runtime)
        self.predictor = Predictor(saved, use_gpu=use_gpu, runtime=runtime, threads=assigned_cpus())

    def __call__(self, batch: dict) -> dict:
        return {"label": np.asarray(batch["label"]), "score": self.predictor.score_inputs(batch["image"])}


def score_rows(model_dir: str | Path, rows, *, use_gpu: bool = False, actors: int = 1, runtime: str = "torch",
               progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and p(fake) for manifest `rows` (columns path, label, optionally degrade), in row order, by Ray Data
    batch inference with `runtime` (torch, onnx, onnx-int8: its graph must be in the model directory);
    `progress(images scored so far)` is called after each batch."""
    import ray
    from ray.data import ActorPoolStrategy

    from defakenet.artifact import model_files
    from defakenet.data.pipeline import build_dataset

    saved = load_model(model_dir, runtime=runtime)  # a missing graph is one error here, not one per actor
    files = ray.put(model_files(saved))
    ds = build_dataset(rows, saved.config, train=False)
    batch = BATCH_GPU if use_gpu else BATCH_CPU
    scored = ds.map_batches(
        _Scorer, fn_constructor_kwargs={"model": [files], "use_gpu": use_gpu, "runtime": runtime}, batch_size=batch,
        batch_format="numpy", compute=ActorPoolStrategy(size=actors), num_gpus=1 if use_gpu else 0,
    )
    scored.context.execution_options.preserve_order = True
    labels, scores, done = [], [], 0
    for b in scored.iter_batches(batch_size=None, batch_format="numpy"):
        labels.append(b["label"])
        scores.append(b["score"])
        done += len(b["score"])
        if progress is not None:
            progress(done)
    return np.concatenate(labels).astype(np.int64), np.concatenate(scores).astype(np.float64)
