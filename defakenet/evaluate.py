"""Evaluate a saved model on one split of a dataset and write the report.

The split is recomputed with the data.split shares and seed stored with the model, so "test" means the same
files it meant during training, and the decision threshold is the one chosen on valid at training time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from defakenet.artifact import load_model
from defakenet.data.layouts import read_manifest
from defakenet.engine import make_loader, predict
from defakenet.errors import DataError
from defakenet.metrics import compute_metrics
from defakenet.report import write_report

SPLITS = ("train", "valid", "test", "all")


def evaluate_model(
    model_dir: str | Path, data_root: str, *, split: str = "test", output: str | Path | None = None,
    batch_size: int | None = None, use_gpu: bool = False,
) -> dict:
    """Score `split` of `data_root` with the model in `model_dir`; returns metrics, writes a report if `output`."""
    if split not in SPLITS:
        raise DataError(f"Invalid split {split!r}. Only {', '.join(SPLITS)} are supported.")
    saved = load_model(model_dir)
    cfg = saved.config.replace(**{"data.root": data_root, "data.loader_workers": 0,
                                  **({"train.batch_size": batch_size} if batch_size else {})})
    manifest = read_manifest(data_root, ratios=cfg.data.split, seed=cfg.data.split_seed)
    if split == "all":
        manifest = manifest.assign(split="all")
    if not len(manifest[manifest["split"] == split]):
        raise DataError(f"split {split!r} of {data_root} has no images")
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    loader = make_loader(manifest, split, cfg, train=False)
    labels, scores = predict(saved.model.to(device), loader, device=device)
    metrics = compute_metrics(labels, scores, threshold=saved.threshold)
    if output:
        write_report(output, labels, scores, saved.threshold, title=f"defakenet {split} split ({data_root})",
                     extra={"model": str(model_dir), "data": data_root, "split": split})
    return metrics
