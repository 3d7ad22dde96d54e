"""Screen training settings fast: one plain-PyTorch process (no Ray), defakenet's own config, model, augmentation
and engine, the validation and test ROC-AUC after every epoch.

What `defakenet train` does, minus Ray: the same `engine.train_one_epoch` and `engine.predict`, the same
`Preprocess` pipelines, the same split (and `data.train_fraction` subset), decoding inline (`data.loader_workers`
0), so a setting that helps here can be checked through the real path with `benchmarks/quality.py`. One process
and one batch of `train.batch_size` per step: give `defakenet train --workers 2` half the batch size for the same
schedule.

    python benchmarks/recipe_search.py --data ../shared/datasets/faces-140k-sample \
        --set data.image_size=64 --set augment.scale_min=1.0 --set train.epochs=15
    python benchmarks/recipe_search.py --data ROOT --recipe scratch-faces --set augment.mixup_alpha=0

Prints one line per epoch and a RESULT line (the test ROC-AUC at the epoch of the best validation ROC-AUC, and at
the last epoch), and appends it as JSON to --log. Not a test: numbers depend on the machine and on chance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from defakenet.config import Config  # noqa: E402
from defakenet.data.layouts import read_manifest  # noqa: E402
from defakenet.data.splits import subsample_train  # noqa: E402
from defakenet.engine import (build_model, build_optimizer, build_scheduler, make_loader, predict,  # noqa: E402
                              train_one_epoch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--recipe", default="", help="named recipe to start from (defakenet config recipes)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: every core)")
    p.add_argument("--log", help="append the RESULT as one JSON line to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config.from_sources(None, [f"data.root={args.data}", "data.loader_workers=0",
                                     *([f"train.recipe={args.recipe}"] if args.recipe else []), *args.sets])
    torch.manual_seed(cfg.train.seed)
    manifest = read_manifest(cfg.data.root, ratios=cfg.data.split, seed=cfg.data.split_seed)
    manifest = subsample_train(manifest, cfg.data.train_fraction, cfg.data.split_seed)
    train = make_loader(manifest, "train", cfg, train=True)
    valid, test = (make_loader(manifest, s, cfg, train=False) for s in ("valid", "test"))
    model, cpu = build_model(cfg), torch.device("cpu")
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, len(train), cfg.train.epochs)
    start, best = time.perf_counter(), (-1.0, 0.0, 0)
    for epoch in range(1, cfg.train.epochs + 1):
        stats = train_one_epoch(model, train, opt, sched, device=cpu, grad_clip=cfg.optim.grad_clip,
                                label_smoothing=cfg.optim.label_smoothing, mixup_alpha=cfg.augment.mixup_alpha)
        val_auc, test_auc = (roc_auc_score(*predict(model, d, device=cpu)) for d in (valid, test))
        if val_auc > best[0]:
            best = (val_auc, test_auc, epoch)
        print(f"epoch {epoch}/{cfg.train.epochs}  loss {stats['loss']:.4f}  val_auc {val_auc:.4f}  test_auc "
              f"{test_auc:.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    result = {"recipe": args.recipe, "sets": args.sets, "best_val_epoch": best[2], "val_auc": round(best[0], 4),
              "test_auc_at_best_val": round(best[1], 4), "test_auc_last": round(test_auc, 4),
              "seconds": round(time.perf_counter() - start)}
    print("RESULT " + json.dumps(result), flush=True)
    if args.log:
        with open(args.log, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
