"""Training drivers.

`fit_local` trains in this process (one device), the smoke-test and demo path: per-epoch validation, best
checkpoint by val ROC-AUC, threshold chosen on valid, test evaluation and report of the best model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import torch

from defakenet.artifact import load_model, save_model
from defakenet.config import Config
from defakenet.data.layouts import read_manifest
from defakenet.engine import build_model, build_optimizer, build_scheduler, make_loader, predict, train_one_epoch, bce
from defakenet.errors import DataError
from defakenet.metrics import choose_threshold, compute_metrics
from defakenet.model import count_parameters
from defakenet.report import write_report


def default_home(cfg: Config) -> Path:
    """The one data folder for embedded defaults (runs, MLflow store, Ray results)."""
    return Path(cfg.tracking.home or ".defakenet")


def default_run_name(prefix: str = "train") -> str:
    return f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}"


def check_splits(manifest, needed: tuple[str, ...] = ("train", "valid")) -> None:
    """Every needed split must hold both classes, or training and thresholding are meaningless."""
    for split in needed:
        rows = manifest[manifest["split"] == split]
        n_fake = int(rows["label"].sum())
        n_real = len(rows) - n_fake
        if n_real == 0 or n_fake == 0:
            raise DataError(
                f"split {split!r} has {n_real} real and {n_fake} fake images; each split needs both classes "
                f"(add images or change data.split)"
            )


def _fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def fit_local(cfg: Config, out_dir: str | Path, *, log: Callable[[str], None] = print) -> dict:
    """Train `cfg` in-process; writes `out_dir/{best,model,report}` and returns the summary dict."""
    out = Path(out_dir)
    manifest = read_manifest(cfg.data.root, ratios=cfg.data.split, seed=cfg.data.split_seed)
    check_splits(manifest)
    counts = manifest.groupby("split")["label"].agg(["count", "sum"])
    log("data: " + ", ".join(f"{s} {int(r['count'])} ({int(r['sum'])} fake)" for s, r in counts.iterrows()))

    torch.manual_seed(cfg.train.seed)
    device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
    channels_last = cfg.train.channels_last and device.type == "cuda"
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    log(f"model: ResNet50V2 DeFakeNet, freeze_depth {cfg.model.freeze_depth}, "
        f"{count_parameters(model, trainable_only=True):,} trainable of {count_parameters(model):,} parameters")

    train_loader = make_loader(manifest, "train", cfg, train=True)
    val_loader = make_loader(manifest, "valid", cfg, train=False)
    steps = len(train_loader) if not cfg.train.max_steps else min(len(train_loader), cfg.train.max_steps)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps, cfg.train.epochs)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" and device.type == "cuda" else None

    history, best_auc, stale, start = [], -1.0, 0, time.perf_counter()
    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        stats = train_one_epoch(
            model, train_loader, optimizer, scheduler, device=device, amp=cfg.train.amp,
            channels_last=channels_last, grad_clip=cfg.optim.grad_clip, label_smoothing=cfg.optim.label_smoothing,
            max_steps=cfg.train.max_steps, scaler=scaler,
        )
        labels, scores = predict(model, val_loader, device=device, amp=cfg.train.amp, channels_last=channels_last)
        val = compute_metrics(labels, scores, threshold=0.5)
        row = {"epoch": epoch, "train_loss": stats["loss"], "val_loss": bce(labels, scores),
               "val_accuracy": val["accuracy"], "val_roc_auc": val["roc_auc"],
               "images_per_s": stats["images_per_s"], "epoch_time_s": time.perf_counter() - t0}
        history.append(row)
        eta = (time.perf_counter() - start) / epoch * (cfg.train.epochs - epoch)
        log(f"epoch {epoch}/{cfg.train.epochs}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_acc {row['val_accuracy']:.4f}  val_auc {row['val_roc_auc']:.4f}  "
            f"{row['images_per_s']:.1f} img/s  {row['epoch_time_s']:.1f}s  ETA {_fmt_eta(eta)}")
        if row["val_roc_auc"] > best_auc:
            best_auc, stale = row["val_roc_auc"], 0
            save_model(out / "best", model, cfg, {"epoch": epoch, "val_roc_auc": best_auc})
        else:
            stale += 1
            if cfg.train.patience and stale >= cfg.train.patience:
                log(f"early stop: val_auc has not improved for {stale} epochs (best {best_auc:.4f})")
                break

    return finish(cfg, out, manifest, history, log=log)


def finish(cfg: Config, out: Path, manifest, history: list[dict], *, log: Callable[[str], None] = print) -> dict:
    """Best checkpoint → threshold on valid → test metrics and report → final model directory."""
    best = load_model(out / "best")
    device = torch.device("cpu")
    val_loader = make_loader(manifest, "valid", cfg, train=False)
    labels, scores = predict(best.model, val_loader, device=device)
    threshold = choose_threshold(labels, scores, method=cfg.train.threshold_method, target_fpr=cfg.train.target_fpr)
    val_metrics = compute_metrics(labels, scores, threshold=threshold)
    summary = {"best_epoch": best.meta["epoch"], "threshold": threshold, "val": val_metrics, "history": history}
    test_rows = manifest[manifest["split"] == "test"]
    if len(test_rows) and test_rows["label"].nunique() == 2:
        test_loader = make_loader(manifest, "test", cfg, train=False)
        t_labels, t_scores = predict(best.model, test_loader, device=device)
        paths = write_report(out / "report", t_labels, t_scores, threshold,
                             title=f"defakenet test split ({cfg.data.root})",
                             extra={"split": "test", "best_epoch": best.meta["epoch"], "data": cfg.data.root})
        summary["test"] = compute_metrics(t_labels, t_scores, threshold=threshold)
        summary["report"] = str(paths["markdown"])
        log(f"test: accuracy {summary['test']['accuracy']:.4f}  roc_auc {summary['test']['roc_auc']:.4f}  "
            f"threshold {threshold:.4f} (chosen on valid by {cfg.train.threshold_method})")
    else:
        log("test: split 'test' is empty or single-class; no test evaluation")
    meta = {"threshold": threshold, "best_epoch": best.meta["epoch"], "val_metrics": val_metrics,
            "test_metrics": summary.get("test", {})}
    summary["model_dir"] = str(save_model(out / "model", best.model, cfg, meta))
    return summary
