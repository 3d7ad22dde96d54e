"""Plain-PyTorch training and evaluation steps (no Ray): the loop that every driver calls.

`train_one_epoch` and `predict` take any iterable of (images NCHW float32, labels) batches, so the same code runs
under a torch DataLoader in-process, under Ray Data's `iter_torch_batches` in a Ray Train worker, and in the
benchmarks' single-process baseline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from defakenet.config import Config, OptimConfig
from defakenet.data.augment import Preprocess
from defakenet.data.image import load_rgb
from defakenet.inference import Placement, autocast, p_fake
from defakenet.model import DeFakeNet, create_defakenet


class ImageDataset(Dataset):
    """Manifest rows → (CHW float32 tensor, float label); decoding and augmentation happen here."""

    def __init__(self, paths: list[str], labels: list[int], preprocess: Preprocess):
        self.paths, self.labels, self.preprocess = list(paths), list(labels), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocess(load_rgb(self.paths[i]))
        return torch.from_numpy(x), torch.tensor(float(self.labels[i]))


def make_loader(manifest, split: str, cfg: Config, *, train: bool, workers: int | None = None) -> DataLoader:
    """A DataLoader over one split of a manifest: augmented and shuffled for training, plain otherwise."""
    rows = manifest[manifest["split"] == split]
    pre = Preprocess(cfg.data, cfg.augment if train else None, cfg.model.preprocessing, seed=cfg.train.seed)
    ds = ImageDataset(rows["path"].tolist(), rows["label"].tolist(), pre)
    g = torch.Generator().manual_seed(cfg.train.seed)
    n = cfg.data.loader_workers if workers is None else workers
    return DataLoader(
        ds, batch_size=cfg.train.batch_size, shuffle=train, drop_last=train and len(ds) > cfg.train.batch_size,
        num_workers=n, generator=g, persistent_workers=n > 0,
    )


def build_model(cfg: Config) -> DeFakeNet:
    """The network a config describes (filter, stages, head), with backbone weights when `model.weights` is set."""
    m = cfg.model
    return create_defakenet(
        dropout=m.dropout, freeze_depth=m.freeze_depth, input_filter=m.input_filter, stages=m.stages,
        weights=m.weights or None,
    )


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over trainable parameters; no weight decay on biases and norm parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=True)
    raise RuntimeError(f"Invalid optimizer {optim.name}. Only adamw and sgd are supported.")


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, steps_per_epoch: int, epochs: int):
    """Linear warmup for `warmup_epochs`, then cosine decay to zero over the remaining steps."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(optim.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy on logits with symmetric label smoothing."""
    targets = labels.float() * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


def _to_device(batches: Iterable, device: torch.device, channels_last: bool) -> Iterator:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, y in batches:
        yield x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)


def train_one_epoch(
    model: torch.nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler,
    *,
    device: torch.device,
    amp: str = "auto",
    channels_last: bool = False,
    grad_clip: float = 0.0,
    label_smoothing: float = 0.0,
    mixup_alpha: float = 0.0,
    max_steps: int = 0,
    scaler: torch.amp.GradScaler | None = None,
) -> dict:
    """One pass over `batches`; returns mean loss, images seen, seconds and images/s.

    `mixup_alpha` > 0 blends each batch with a shuffled copy of itself (Zhang et al., "mixup", ICLR 2018): images
    and labels by the same lambda ~ Beta(alpha, alpha), drawn from torch's generator (seeded by train.seed)."""
    model.train()
    total_loss, images, steps = 0.0, 0, 0
    beta = torch.distributions.Beta(mixup_alpha, mixup_alpha) if mixup_alpha > 0 else None
    start = time.perf_counter()
    for x, y in _to_device(batches, device, channels_last):
        if beta is not None:
            lam, perm = float(beta.sample()), torch.randperm(len(y), device=y.device)
            x, y = lam * x + (1.0 - lam) * x[perm], lam * y + (1.0 - lam) * y[perm]
        with autocast(device, amp):
            loss = loss_fn(model(x), y, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        images += len(y)
        steps += 1
        if max_steps and steps >= max_steps:
            break
    seconds = time.perf_counter() - start
    return {
        "loss": total_loss / max(images, 1),
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else 0.0,
    }


def predict(
    model: torch.nn.Module, batches: Iterable, *, device: torch.device, amp: str = "auto", channels_last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and p(fake) scores over `batches` (one forward each, through inference.p_fake), model in eval mode."""
    model.eval()
    where = Placement(device, channels_last, amp)
    labels, scores = [], []
    for x, y in batches:
        if len(y):
            scores.append(p_fake(model, x, where, batch_size=len(y)))
            labels.append(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y))
    if not scores:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    return np.concatenate(labels).astype(np.int64), np.concatenate(scores).astype(np.float64)
