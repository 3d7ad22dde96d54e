"""Detection quality: train each recipe through `defakenet train` and score it with `defakenet evaluate`'s suite.

Every recipe is a `defakenet train` command line (the real Ray Train path, the same CLI a user runs) on --data,
followed by `defakenet evaluate --suite` on the trained model. Prints one table (recipe × set × degradation:
ROC-AUC [95 % CI]) with the minutes each took, and writes OUTPUT/quality.json with, per recipe, its command, the
trained model's directory and every number of its suite, so anyone can evaluate the same models on data of their
own afterwards (`defakenet evaluate --model MODEL_DIR --data NAME=ROOT`).

    python benchmarks/quality.py --data ../shared/datasets/faces-140k-sample \
        --also photoshop=../shared/datasets/photoshop-faces --output benchmarks/results/quality
    python benchmarks/quality.py --data ROOT --output DIR --recipe npr-crop       # one recipe (repeatable)
    python benchmarks/quality.py --list                                            # the recipes and their flags

The suite, unless --suite FILE: --data's test split (cut as training cut it) under --degrade, plus each --also set
whole (split all, the model never trained on it) clean. A recipe whose suite report exists under OUTPUT is not run
again (--force reruns it), so an interrupted benchmark continues where it stopped.

Recipes, in run order: defakenet's own named recipe (`defakenet config recipes`) and its learning curve (the same
recipe on 50 % and 25 % of the training split); the four inputs of the comparison at one image size and schedule
(--image-size, --epochs: today's default RGB + resize, RGB + crop at native resolution, NPR + crop, SRM + crop);
and patch-level training (a shallow network on native 64 px crops, scored over the whole image).

Not a test: numbers depend on the machine and on chance (runs are seeded, not bit-for-bit repeatable).
docs/quality.md records what we measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEGRADE = "none,jpeg:75,jpeg:50,blur:1,resize:0.5"
# the lines of a run echoed to the console (a worker's line comes prefixed by Ray)
_SHOWN = re.compile(r"epoch \d+/\d+ |test: |registry: |defakenet: error")
# the named recipe the comparison ends with, and its learning curve
BEST = "scratch-faces"


def recipes(image_size: int, epochs: int) -> dict[str, dict]:
    """name → {about, args}: extra `defakenet train` arguments after --data and the run's own flags, in run order
    (defakenet's recipe first, so that its timing comes from a quiet machine)."""
    common = ["--image-size", str(image_size), "--epochs", str(epochs)]
    crop = ["--set", "data.input_policy=crop"]
    return {
        BEST: {"about": f"defakenet's named recipe --recipe {BEST} (docs/quality.md)", "args": ["--recipe", BEST]},
        f"{BEST}-50pct": {"about": f"{BEST} on 50 % of the training split (learning curve)",
                          "args": ["--recipe", BEST, "--set", "data.train_fraction=0.5"]},
        f"{BEST}-25pct": {"about": f"{BEST} on 25 % of the training split (learning curve)",
                          "args": ["--recipe", BEST, "--set", "data.train_fraction=0.25"]},
        "default": {"about": "today's defaults: RGB, resize (random resized crop in training)", "args": common},
        "rgb-crop": {"about": "RGB, native-resolution crops", "args": [*common, *crop]},
        "npr-crop": {"about": "NPR residual (Tan et al. 2024), native-resolution crops",
                     "args": [*common, *crop, "--set", "model.input_filter=npr"]},
        "srm-crop": {"about": "SRM residuals (Fridrich & Kodovsky 2012), native-resolution crops",
                     "args": [*common, *crop, "--set", "model.input_filter=srm"]},
        "patches": {"about": "patch-level (Chai et al. 2020): conv2-conv3 on native 64 px crops, scored over the "
                             "whole 256 px image (data.eval_size)",
                    "args": ["--image-size", "64", "--epochs", str(epochs), *crop, "--set", "model.stages=2",
                             "--set", "data.eval_size=256"]},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="training dataset (its test split is the suite's first set)")
    p.add_argument("--also", action="append", default=[], metavar="NAME=ROOT",
                   help="another suite set, scored whole (split all) and clean; repeatable")
    p.add_argument("--suite", help="suite file to use instead of --data's test split + --also sets")
    p.add_argument("--degrade", default=DEFAULT_DEGRADE, help=f"degradations of --data's set (default {DEFAULT_DEGRADE})")
    p.add_argument("--output", help="results folder (models, logs, reports, quality.json)")
    p.add_argument("--recipe", action="append", default=[], help="run only this recipe (repeatable; see --list)")
    p.add_argument("--image-size", type=int, default=128, help="image size of the four compared inputs (default 128)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the four compared inputs (default 10)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers per run (default 2)")
    p.add_argument("--force", action="store_true", help="rerun recipes whose results exist")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")
    args = p.parse_args(argv)
    if not args.list and not (args.data and args.output):
        p.error("--data and --output are required (or --list)")
    return args


def write_suite(args: argparse.Namespace, out: Path) -> Path:
    """The suite file the benchmark scores every recipe with (kept in OUTPUT, so the numbers can be redone)."""
    if args.suite:
        return Path(args.suite).resolve()
    sets = {Path(args.data).name.replace(" ", "_") or "data": {"root": str(Path(args.data).resolve()), "split": "test"}}
    for item in args.also:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            raise SystemExit(f"quality: --also {item!r}: expected NAME=ROOT")
        if not Path(root).exists():
            raise SystemExit(f"quality: --also {item!r}: {root} does not exist")
        sets[name] = {"root": str(Path(root).resolve()), "split": "all", "degradations": ["none"]}
    path = out / "suite.yaml"
    path.write_text(yaml.safe_dump({"sets": sets, "degradations": args.degrade.split(","), "resamples": 1000,
                                    "seed": 0}, sort_keys=False))
    return path


def run(cmd: list[str], log: Path) -> float:
    """Run a defakenet command with its output in `log` (epoch lines echoed); seconds it took. Exits on failure."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        for line in proc.stdout:
            f.write(line)
            shown = _SHOWN.search(line)
            if shown:
                print(f"    {line[shown.start():].rstrip()}", flush=True)
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"quality: {' '.join(cmd[:3])} … failed (exit {rc}); see {log}")
    return time.perf_counter() - start


def run_recipe(name: str, recipe: dict, args: argparse.Namespace, out: Path, suite: Path) -> dict:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    home, report = out / "home", d / "suite"
    exe = [sys.executable, "-m", "defakenet.cli"]
    flags = ["--workers", str(args.workers), *recipe["args"]]
    # the run name carries the flags: rerun as it was, an interrupted run resumes (Ray Train's checkpoint, the MLflow
    # run); with other flags it is a new run
    run_name = f"{name}-{hashlib.sha256(json.dumps(flags).encode()).hexdigest()[:6]}"
    train = [*exe, "train", "--data", str(Path(args.data).resolve()), "--home", str(home), "--run-name", run_name,
             "--experiment", "quality", *flags]
    model_dir = home / "runs" / run_name / "model"
    done = out / name / "result.json"
    if done.is_file() and not args.force:
        prev = json.loads(done.read_text())
        if prev.get("train_command") == train[len(exe):] and prev.get("suite") == str(suite):
            print(f"  {name}: done before ({done}); --force reruns it", flush=True)
            return prev
    if args.force:  # a rerun of the same run name would resume the finished Ray Train run instead
        shutil.rmtree(home / "ray_results" / run_name, ignore_errors=True)
    print(f"  {name}: {recipe['about']}", flush=True)
    train_s = run(train, d / "train.log")
    evaluate = [*exe, "evaluate", "--model", str(model_dir), "--suite", str(suite), "--output", str(report),
                "--tracking-uri", f"sqlite:///{home / 'mlflow.db'}", "--experiment", "quality"]
    eval_s = run(evaluate, d / "evaluate.log")
    metrics = json.loads((report / "metrics.json").read_text())
    result = {"recipe": name, "about": recipe["about"], "train_command": train[len(exe):],
              "model_dir": str(model_dir), "suite": str(suite), "report": str(report / "report.md"),
              "train_seconds": round(train_s, 1), "evaluate_seconds": round(eval_s, 1),
              "test_metrics": json.loads((model_dir / "meta.json").read_text()).get("test_metrics", {}),
              "cells": [{k: c[k] for k in ("set", "degradation", "n", "roc_auc", "roc_auc_ci", "average_precision",
                                           "eer", "accuracy", "tpr", "fpr", "ece", "brier")}
                        for c in metrics["cells"]]}
    done.write_text(json.dumps(result, indent=2))
    return result


def table(results: list[dict]) -> str:
    """recipe × (set, degradation) ROC-AUC [95 % CI], with the minutes each recipe took."""
    cols = list(dict.fromkeys((c["set"], c["degradation"]) for r in results for c in r["cells"]))
    head = ["recipe", *[f"{s} {d}" for s, d in cols], "train min", "eval min"]
    rows = [head]
    for r in results:
        by = {(c["set"], c["degradation"]): c for c in r["cells"]}
        cells = [f"{by[k]['roc_auc']:.3f} [{by[k]['roc_auc_ci'][0]:.3f}, {by[k]['roc_auc_ci'][1]:.3f}]"
                 if k in by else "-" for k in cols]
        rows.append([r["recipe"], *cells, f"{r['train_seconds'] / 60:.1f}", f"{r['evaluate_seconds'] / 60:.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    all_recipes = recipes(args.image_size, args.epochs)
    if args.list:
        for name, r in all_recipes.items():
            print(f"{name:<22} {r['about']}\n{'':<22} defakenet train --data ROOT {' '.join(r['args'])}")
        return 0
    unknown = [n for n in args.recipe if n not in all_recipes]
    if unknown:
        raise SystemExit(f"quality: unknown recipe {unknown[0]!r}; recipes: {', '.join(all_recipes)}")
    if not Path(args.data).exists():
        raise SystemExit(f"quality: --data {args.data}: no such folder")
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    suite = write_suite(args, out)
    chosen = {n: r for n, r in all_recipes.items() if not args.recipe or n in args.recipe}
    print(f"quality: {len(chosen)} recipe(s) on {args.data}, suite {suite}; results in {out}", flush=True)
    results = [run_recipe(name, r, args, out, suite) for name, r in chosen.items()]
    summary = {"data": str(Path(args.data).resolve()), "suite": str(suite),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
               "recipes": {r["recipe"]: r for r in results}}
    (out / "quality.json").write_text(json.dumps(summary, indent=2))
    print("\nROC-AUC [95 % CI] per recipe, set and degradation")
    print(table(results))
    print(f"\nwrote {out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
