"""The `defakenet` command line.

Every command that takes a config accepts `--config FILE.yaml` and repeatable `--set section.key=value`; the
common knobs are also flags, generated from one table (`FLAGS`) whose help comes from the config fields, so
`train` and later commands can't drift apart. User mistakes print one line and exit 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from defakenet import __version__
from defakenet.config import Config, describe
from defakenet.errors import UserError
from defakenet.export import RUNTIMES

# flag → config key; `store_true` flags are the bool keys
FLAGS = {
    "--recipe": "train.recipe",
    "--data": "data.root",
    "--epochs": "train.epochs",
    "--batch-size": "train.batch_size",
    "--image-size": "data.image_size",
    "--lr": "optim.lr",
    "--freeze-depth": "model.freeze_depth",
    "--weights": "model.weights",
    "--workers": "resources.workers",
    "--gpu": "resources.use_gpu",
    "--experiment": "tracking.experiment",
    "--run-name": "tracking.run_name",
    "--register": "tracking.register",
    "--home": "tracking.home",
    "--storage": "tracking.storage",
    "--tracking-uri": "tracking.tracking_uri",
    "--num-samples": "tune.num_samples",
    "--max-concurrent": "tune.max_concurrent",
}
TRAIN_FLAGS = tuple(f for f in FLAGS if not FLAGS[f].startswith("tune."))


def _add_config_args(p: argparse.ArgumentParser, flags: tuple[str, ...] = ()) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (sections data, model, optim, train, …)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set optim.lr=3e-4 (repeatable; see `defakenet config keys`)")
    rows = {key: (typ, default, help_) for key, typ, default, help_ in describe()}
    for flag in flags:
        key = FLAGS[flag]
        typ, default, help_ = rows[key]
        dest = "flag_" + key.replace(".", "__")
        if typ == "bool":
            p.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=f"{help_} [{key}]")
        else:
            conv = {"int": int, "float": float}.get(typ, str)
            p.add_argument(flag, dest=dest, type=conv, default=None, metavar=typ.upper(),
                           help=f"{help_} [{key}, default {default!r}]")


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="also print Ray Serve's request and deployment logs and "
                                                          "Ray Data's execution plans (otherwise only in Ray's log "
                                                          "files, under the session's logs/ folder)")


def _config(args: argparse.Namespace) -> Config:
    """Defaults ← --config file ← flags ← --set."""
    flag_sets = [f"{k[5:].replace('__', '.')}={v}" for k, v in vars(args).items()
                 if k.startswith("flag_") and v is not None]
    return Config.from_sources(args.config, [*flag_sets, *args.sets])


# ---- commands


def cmd_data_synth(args: argparse.Namespace) -> int:
    from defakenet.data.synth import make_dataset

    out = make_dataset(args.out, n=args.n, size=args.size, seed=args.seed, strength=args.strength, progress=True)
    print(f"wrote {args.n} real + {args.n} fake {args.size}px images to {out}/{{real,fake}}")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from defakenet.data.inspect import inspect_dataset

    cfg = _config(args)
    report = inspect_dataset(args.root, ratios=cfg.data.split, seed=cfg.data.split_seed, progress=True,
                             faces=cfg.data.faces == "crop")
    print(report.to_text())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {args.json}")
    if args.strict and report.problems:
        print(f"defakenet: --strict: {len(report.problems)} problem(s) found", file=sys.stderr)
        return 1
    return 0


def cmd_weights_import_keras(args: argparse.Namespace) -> int:
    from defakenet.weights import import_keras_cli

    summary = import_keras_cli(args.h5, args.output)
    print(f"wrote {args.output}: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                for k, v in summary.items()))
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    print(yaml.safe_dump(_config(args).to_dict(), sort_keys=False), end="")
    return 0


def cmd_config_recipes(args: argparse.Namespace) -> int:
    import textwrap

    from defakenet.recipes import RECIPES

    for name, r in RECIPES.items():
        print(name)
        print(textwrap.indent(textwrap.fill(r["about"], 100), "    "))
        settings = r["settings"]
        shown = [f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in settings.items()]
        print(textwrap.indent(textwrap.fill("settings: " + (" ".join(shown) or "the defaults"), 100,
                                            break_long_words=False, break_on_hyphens=False), "    "))
    print("use one: defakenet train --recipe NAME … (anything you set yourself still wins)")
    return 0


def cmd_config_keys(args: argparse.Namespace) -> int:
    for key, typ, default, help_ in describe():
        print(f"{key:<26} {typ:<6} {default!r:<22} {help_}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from defakenet.train import fit

    summary = fit(_config(args), address=args.address)
    print(f"model:   {summary['model_dir']}")
    if "report" in summary:
        print(f"report:  {summary['report']}")
    if "registered" in summary:
        print(f"registry: {summary['registered']}")
    print(f"mlflow:  run {summary.get('mlflow_run_id')} (browse with: mlflow ui --backend-store-uri "
          f"{summary.get('tracking_uri', '...')})")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from defakenet.tune import run_study

    summary = run_study(_config(args), resume=args.resume, address=args.address)
    print(f"study:   {summary['study']}, {len(summary['trials'])} trials, best {summary['best_trial']}")
    print(f"model:   {summary['model_dir']}")
    if "report" in summary:
        print(f"report:  {summary['report']}")
    if "registered" in summary:
        print(f"registry: {summary['registered']}" + (f" → {summary['alias']}" if summary.get("alias") else ""))
    print(f"mlflow:  run {summary.get('mlflow_run_id')} (browse with: mlflow ui --backend-store-uri "
          f"{summary['tracking_uri']})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from defakenet.suite import format_result, run_suite, suite_from_args

    suite = suite_from_args(args.data, split=args.split, degrade=args.degrade, suite_file=args.suite,
                            resamples=args.bootstrap)
    result = run_suite(args.model, suite, output=args.output, use_gpu=args.gpu, actors=args.actors,
                       runtime=args.runtime, tracking_uri=args.tracking_uri, experiment=args.experiment, log_run=not args.no_mlflow)
    print(format_result(result))
    if args.output:
        print(f"report:  {Path(args.output) / 'report.md'}")
    if result["run_id"]:
        tags = f"; suite.* tags on models:/{result['name']}/{result['version']}" if result["version"] else ""
        print(f"mlflow:  run {result['run_id']}{tags}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A model directory at --output with the ONNX graph (and, for onnx-int8, the guarded int8 graph): what
    --runtime onnx / onnx-int8 serve. 0 when written; 2 when the int8 guard refused the graph."""
    import shutil
    import tempfile

    from defakenet import tracking
    from defakenet.artifact import CONFIG_FILE, META_FILE, WEIGHTS_FILE, load_model
    from defakenet.export import EXPORT_FILE, RUNTIME_FILES, export_model

    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise UserError(f"--output {out} exists and is not empty; pick a new folder or pass --force")
    if args.format == "onnx-int8" and not args.data:
        raise UserError("--format onnx-int8 needs --data ROOT: the int8 graph is calibrated on the valid split and "
                        "kept only if its test ROC-AUC stays within --max-auc-drop of fp32's")
    uri = args.model
    tracking_uri = _registry_uri(args) if uri.startswith(("models:/", "runs:/")) else None
    manifest = None
    with tempfile.TemporaryDirectory(prefix="defakenet-export-") as tmp:
        src = tracking.resolve_model(uri, Path(tmp) / "model", tracking_uri=tracking_uri)
        cfg = load_model(src).config
        if args.data:  # read (and refused) before anything is written to --output
            from defakenet.data.layouts import read_manifest

            manifest = read_manifest(args.data, ratios=cfg.data.split, seed=cfg.data.split_seed)
        out.mkdir(parents=True, exist_ok=True)
        for f in (WEIGHTS_FILE, CONFIG_FILE, META_FILE):
            shutil.copy2(src / f, out / f)
    for f in (*RUNTIME_FILES.values(), EXPORT_FILE):  # --force over an earlier export: nothing stale stays
        (out / f).unlink(missing_ok=True)
    max_drop = cfg.export.int8_max_auc_drop if args.max_auc_drop is None else args.max_auc_drop
    calibration = cfg.export.calibration_images if args.calibration_images is None else args.calibration_images
    facts = export_model(out, int8=args.format == "onnx-int8", manifest=manifest, max_auc_drop=max_drop,
                         calibration_images=calibration, log=lambda line: print(line, flush=True))
    if args.format == "onnx-int8" and not facts["int8"]["guard"]["passed"]:
        g = facts["int8"]["guard"]
        print(f"defakenet: error: int8 lost {g['drop']:.4f} test ROC-AUC ({g['auc_fp32']:.4f} -> {g['auc_int8']:.4f}), "
              f"more than --max-auc-drop {g['max_drop']:.4f}: {out / RUNTIME_FILES['onnx-int8']} was not written "
              f"(serve --runtime onnx instead)", file=sys.stderr)
        return 2
    print(f"exported {uri} -> {out} (serve it: defakenet serve --model {out} --runtime {args.format})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from defakenet.report import format_metrics, write_report

    path = Path(args.scores)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a CSV with columns label,score)")
    df = pd.read_csv(path)
    missing = {"label", "score"} - set(df.columns)
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected label,score")
    paths = write_report(args.output, df["label"].to_numpy(), df["score"].to_numpy(), args.threshold,
                         title=f"defakenet report ({path.name})")
    print(format_metrics(json.loads(paths["metrics"].read_text())))
    print(f"report: {paths['markdown']}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from defakenet.submit import submit

    return submit(args.job, address=args.address, sets=args.sets, extra=args.extra, follow=args.follow,
                  token=args.token)


def cmd_demo(args: argparse.Namespace) -> int:
    from defakenet.demo import run_demo

    return run_demo(Path(args.home))


def serve_args(args: argparse.Namespace):
    """`defakenet serve`'s flags and `--arg KEY=VALUE`s as a checked ServeArgs (UserError naming a bad one)."""
    import pydantic

    from defakenet import tracking
    from defakenet.serve import ServeArgs

    tracking_uri = args.tracking_uri or ""
    if args.model.startswith(("models:/", "runs:/")):
        tracking_uri = tracking.resolve_tracking_uri(tracking_uri, args.home or tracking.DEFAULT_HOME)
    if args.replicas < 1:
        raise UserError(f"--replicas {args.replicas}: expected 1 or more")
    values: dict = {"model": args.model, "tracking_uri": tracking_uri, "use_gpu": args.gpu, "runtime": args.runtime,
                    "min_replicas": args.replicas, "max_replicas": args.replicas}
    for item in args.arg or []:
        key, sep, value = item.partition("=")
        if not sep or key not in ServeArgs.model_fields:
            raise UserError(f"--arg {item!r}: expected KEY=VALUE with KEY one of "
                            f"{', '.join(ServeArgs.model_fields)}")
        values[key] = value
    try:
        return ServeArgs(**values)
    except pydantic.ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'args'}: {err['msg']}" for err in e.errors())
        raise UserError(f"serve arguments: {problems}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from defakenet.serve import run_server

    run_server(serve_args(args), host=args.host, port=args.port, high_throughput=args.high_throughput)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Score images and videos offline (--model) or through an endpoint (--url); one line per file, or --json /
    --csv. 0 when every file was scored; 1 when an image was refused or unreadable; 2 when a video was."""
    from defakenet.prediction import RAY_ABOVE, expand, predict_paths, predict_ray, write_results
    from defakenet.video import is_video_path, predict_videos

    paths = expand(args.images)
    videos = [p for p in paths if is_video_path(p)]
    images = [p for p in paths if not is_video_path(p)]
    fmt = "json" if args.json else "csv" if args.csv else "lines"

    def progress(done: int, total: int) -> None:  # on stderr, so that --json / --csv on stdout stay clean
        if total > PROGRESS_ABOVE:
            print(f"defakenet: scored {done}/{total} images", file=sys.stderr, flush=True)

    if args.model:
        from defakenet.inference import load_predictor

        predictor = load_predictor(args.model, tracking_uri=_registry_uri(args), use_gpu=args.gpu,
                                   runtime=args.runtime)
        if len(images) > RAY_ABOVE:
            results = predict_ray(predictor, images, actors=args.actors, progress=progress)
        else:
            results = predict_paths(predictor, images, progress=progress)
        results += predict_videos(predictor, videos, Path(args.output), frames=args.frames, strategy=args.strategy)
    else:
        import os

        from defakenet.client import TOKEN_ENV, predict_file

        token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
        results = []
        for path in paths:
            video = is_video_path(path)
            r = predict_file(path, args.url, token=token, route="/v1/predict-video" if video else "/v1/predict",
                             timeout=300 if video else 60)
            results.append({"path": str(path), **r, **({"video": True} if video and "error" in r else {})})
            if fmt == "lines":  # as they come: an endpoint answers one by one
                write_results(results[-1:], fmt)
    if args.model or fmt != "lines":
        write_results(results, fmt)
    if any("error" in r and r.get("video") for r in results):
        return 2
    return 1 if any("error" in r for r in results) else 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Grad-CAM overlays of images: one PNG pair per image under --output, one line per image (or --json)."""
    from defakenet.client import format_line
    from defakenet.explain import write_explanations
    from defakenet.inference import load_predictor
    from defakenet.prediction import expand

    paths = expand(args.images)
    predictor = load_predictor(args.model, tracking_uri=_registry_uri(args), use_gpu=args.gpu)
    results = write_explanations(predictor, paths, Path(args.output))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(format_line(r["path"], r) + (f"  -> {r['overlay']}" if "overlay" in r else ""), flush=True)
    return 1 if any("error" in r for r in results) else 0


# offline predict: progress lines (one per batch scored) for more images than this
PROGRESS_ABOVE = 32


def _registry_uri(args: argparse.Namespace) -> str:
    """Where `defakenet train` registers: --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite under --home."""
    from defakenet import tracking

    return tracking.resolve_tracking_uri(args.tracking_uri or "", args.home or tracking.DEFAULT_HOME)


def cmd_registry_list(args: argparse.Namespace) -> int:
    from defakenet.registry import format_table, list_table

    rows = list_table(args.name, tracking_uri=_registry_uri(args))
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def cmd_registry_show(args: argparse.Namespace) -> int:
    from defakenet.registry import format_show, show

    info = show(args.name, args.version, tracking_uri=_registry_uri(args))
    print(json.dumps(info, indent=2) if args.json else format_show(info))
    return 0


def cmd_registry_promote(args: argparse.Namespace) -> int:
    from defakenet.registry import promote

    r = promote(args.name, args.version, tracking_uri=_registry_uri(args))
    if not r["changed"]:
        print(f"{r['name']} v{r['champion']} is already champion")
    else:
        was = f"v{r['previous']}" if r["previous"] is not None else "none"
        print(f"{r['name']} v{r['champion']} is now champion (was {was}; undo with `defakenet registry rollback`)")
    return 0


def cmd_registry_rollback(args: argparse.Namespace) -> int:
    from defakenet.registry import rollback

    r = rollback(args.name, tracking_uri=_registry_uri(args))
    print(f"{r['name']} v{r['champion']} is champion again (rolled back from v{r['previous']})")
    return 0


def _version_arg(text: str) -> int:
    """A registry version: 3 or v3."""
    t = text[1:] if text[:1] in "vV" else text
    if not t.isdigit():
        raise argparse.ArgumentTypeError(f"invalid version {text!r}; expected a number such as 3 or v3")
    return int(t)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected a whole number >= 1")
    return int(text)


# ---- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defakenet",
        description="Deepfake face detection: train, evaluate and inspect a ResNet50V2 real-vs-fake classifier.",
    )
    parser.add_argument("--version", action="version", version=f"defakenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="dataset tools: inspect a folder, make synthetic data")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser("inspect", help="counts, balance, sizes, unreadable files, duplicates and split leakage")
    p.add_argument("root", help="dataset folder (split folders, flat real/fake, Kaggle 140k or RVF10K CSVs)")
    p.add_argument("--strict", action="store_true", help="exit 1 on leakage, empty classes or unreadable files")
    p.add_argument("--json", metavar="FILE", help="also write the full inspection as JSON")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_inspect)
    p = dsub.add_parser("synth", help="write a synthetic real/fake face dataset (flat layout, deterministic)")
    p.add_argument("out", help="output folder; real/ and fake/ are created inside")
    p.add_argument("--n", type=int, default=100, help="images per class (default 100)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--strength", type=float, default=1.0, help="strength of the fake traces (default 1.0)")
    p.set_defaults(func=cmd_data_synth)

    weights = sub.add_parser("weights", help="import pretrained backbone weights")
    wsub = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    p = wsub.add_parser("import-keras", help="convert Keras ResNet50V2 ImageNet .h5 weights to safetensors")
    p.add_argument("h5", help="e.g. resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_weights_import_keras)

    config = sub.add_parser("config", help="show the resolved config or list every key")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = csub.add_parser("show", help="print the config that --recipe/--config/--set resolve to, as YAML")
    _add_config_args(p, ("--recipe",))
    p.set_defaults(func=cmd_config_show)
    p = csub.add_parser("keys", help="list every config key with its type, default and meaning")
    p.set_defaults(func=cmd_config_keys)
    p = csub.add_parser("recipes", help="list the named recipes (--recipe NAME) and what each sets")
    p.set_defaults(func=cmd_config_recipes)

    p = sub.add_parser("train", help="fine-tune DeFakeNet; ends with a test-split evaluation of the best epoch")
    _add_config_args(p, TRAIN_FLAGS)
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default $RAY_ADDRESS, else a local instance)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="Ray Tune study over training runs (ASHA); the winner is tested and registered",
                       epilog="The search space is tune.space in --config (nested like the config: "
                              "{optim: {lr: {loguniform: [1e-5, 1e-2]}}, model: {freeze_depth: {int: [0, 5]}}}). "
                              "Rerunning with the same --run-name resumes the study.")
    _add_config_args(p, tuple(FLAGS))
    p.add_argument("--resume", action="store_true",
                   help="resume the study named by --run-name (default: the most recent one) without rerunning "
                        "finished trials")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default $RAY_ADDRESS, else a local instance)")
    _add_verbose(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("evaluate", help="score a saved model on one or more datasets under degradations: ROC-AUC "
                                        "with 95 %% intervals, calibration, one report and one MLflow run",
                       epilog="Examples: defakenet evaluate --model models:/defakenet@champion --data sample=DATA "
                              "--data photoshop=OTHER --split all --degrade none,jpeg:75,blur:1; defakenet evaluate "
                              "--model RUN/model --suite suite.yaml. Degradations: none, jpeg:Q, blur:SIGMA, "
                              "resize:FACTOR, noise:STD (share of 255), chained with + (docs/quality.md).")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="model directory (RUN/model), models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model")
    p.add_argument("--data", action="append", default=[], metavar="[NAME=]ROOT",
                   help="a dataset to score, named NAME (default: the folder's name); repeatable")
    p.add_argument("--suite", metavar="FILE", help="suite file (YAML): named sets with their splits, degradations; "
                                                   "--data adds sets to it, --degrade replaces its degradations")
    p.add_argument("--split", default="test", help="split of each --data set: train, valid, test or all (default "
                                                   "test, cut as the model's training cut it)")
    p.add_argument("--degrade", metavar="LIST", help="comma-separated degradations applied when the images are "
                                                     "decoded, e.g. none,jpeg:75,jpeg:50,blur:1,resize:0.5 "
                                                     "(default none)")
    p.add_argument("--bootstrap", type=int, metavar="N", help="bootstrap resamples per ROC-AUC interval (default 1000)")
    p.add_argument("--output", metavar="DIR", help="write the report here: report.md, metrics.json, scores.csv, "
                                                   "heatmap, ROC and reliability plots")
    p.add_argument("--experiment", metavar="NAME", help="MLflow experiment of the suite run (default: the one the "
                                                        "model was trained in)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the suite as an MLflow run (nor tag the "
                                                            "registered version)")
    p.add_argument("--gpu", action="store_true", help="one GPU per inference actor")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help="what runs the forward: torch, onnx (ONNX "
                   "Runtime fp32) or onnx-int8; the graph must be stored with the model (defakenet export) "
                   "(default torch)")
    p.add_argument("--actors", type=int, default=1, help="inference actors (model copies) in parallel (default 1)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI of models:/ URIs and of the suite run (default "
                                          "$MLFLOW_TRACKING_URI, else the SQLite store under .defakenet)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write the ONNX graph of a model (fp32, or guarded int8) for --runtime onnx",
                       epilog="Examples: defakenet export --model models:/defakenet@champion --format onnx -o onnx/; "
                              "defakenet export --model RUN/model --format onnx-int8 --data DATA -o int8/ "
                              "(calibrated on DATA's valid split, kept only if its test ROC-AUC holds: docs/serving.md)")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="model directory (RUN/model), models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model")
    p.add_argument("--format", choices=("onnx", "onnx-int8"), default="onnx",
                   help="onnx: the fp32 graph; onnx-int8: also the static int8 graph (needs --data) (default onnx)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="a new folder: the model directory with model.onnx (model.int8.onnx), onnx.json")
    p.add_argument("--data", metavar="ROOT", help="dataset cut as the model's training cut it: int8 calibrates on "
                                                  "its valid split and is checked on test; parity runs on test images")
    p.add_argument("--max-auc-drop", type=float, metavar="F", help="onnx-int8: the most test ROC-AUC int8 may lose "
                                                                   "(default the model's export.int8_max_auc_drop, 0.005)")
    p.add_argument("--calibration-images", type=_positive_int, metavar="N",
                   help="onnx-int8: valid images to calibrate on (default the model's export.calibration_images, 256)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --output")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI of models:/ URIs (default "
                                                         "$MLFLOW_TRACKING_URI, else the SQLite store under --home)")
    p.add_argument("--home", default="", metavar="DIR", help="data folder of the default SQLite store")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="metrics and curves from a CSV of labels (1 = fake) and scores")
    p.add_argument("scores", help="CSV with columns label,score")
    p.add_argument("--output", required=True, metavar="DIR", help="report folder")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold on p(fake) (default 0.5)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("submit", help="submit a jobs/*.yaml Ray Job to a cluster; --follow streams its logs",
                       epilog="Arguments after a bare -- are appended to the job's entrypoint, e.g. "
                              "defakenet submit jobs/evaluate.yaml -- --model models:/defakenet@champion --data ROOT")
    p.add_argument("job", help="job definition, e.g. jobs/train.yaml")
    p.add_argument("--address", help="Ray dashboard address, e.g. http://HEAD:8265 (default $RAY_ADDRESS or "
                                     "http://127.0.0.1:8265)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override appended to the job's entrypoint (repeatable)")
    p.add_argument("--follow", action="store_true", help="stream the logs and exit with the job's status")
    p.add_argument("--token", help="Ray auth token (default $RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("demo", help="the whole loop on a synthetic dataset: synth → inspect → train → evaluate → tune → "
                                         "champion → serve → predict over HTTP → shut down")
    p.add_argument("--home", default=".defakenet/demo", help="demo folder (default .defakenet/demo)")
    _add_verbose(p)
    p.set_defaults(func=cmd_demo)

    from defakenet.client import DEFAULT_URL, TOKEN_ENV

    p = sub.add_parser("serve", help="serve a registered model over HTTP with Ray Serve (follows the champion alias)")
    p.add_argument("--model", default="models:/defakenet@champion", metavar="URI",
                   help="models:/NAME@ALIAS (followed), models:/NAME/VERSION or a model directory "
                        "(default models:/defakenet@champion)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    p.add_argument("--gpu", action="store_true", help="one GPU per replica")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help="what runs the forward: torch, onnx (ONNX "
                   "Runtime fp32) or onnx-int8; the graph must be stored with the model (defakenet export) "
                   "(default torch)")
    p.add_argument("--high-throughput", action="store_true",
                   help="Ray Serve's high-throughput mode: HAProxy forwards straight to the replicas' own ports "
                        "instead of Serve's Python proxy (a Ray instance started here; replicas listen on all "
                        "interfaces; docs/serving.md)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, "
                                                         "else the SQLite store under --home)")
    p.add_argument("--home", default="", metavar="DIR", help="data folder of the default SQLite store")
    p.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="any application argument (docs/serving.md), e.g. max_batch_size=32, batch_wait_timeout_s="
                        "0.02, min_replicas=1, max_replicas=4, poll_interval_s=10, num_gpus=0.5; repeatable")
    _add_verbose(p)
    p.set_defaults(func=cmd_serve)

    from defakenet.video import DEFAULT_FRAMES, STRATEGIES

    p = sub.add_parser("predict", help="score images and videos: offline with --model (no server), else through a running "
                                       "endpoint (--url); one line per image",
                       epilog="Examples: defakenet predict photo.jpg --model models:/defakenet@champion; defakenet "
                              "predict uploads/ --model RUN/model --csv > scores.csv; defakenet predict a.jpg --url "
                              "http://127.0.0.1:8000. Exit status 1 when any image was refused or unreadable.")
    p.add_argument("images", nargs="+", metavar="FILE", help="image files (JPEG, PNG, WebP, BMP, TIFF), videos (MP4, "
                                                            "MOV, AVI, MKV, WebM) or folders (read recursively)")
    p.add_argument("--model", metavar="MODEL", help="score here, without a server: a model directory, "
                                                    "models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model")
    p.add_argument("--url", default=DEFAULT_URL, help=f"endpoint when no --model is given (default {DEFAULT_URL})")
    p.add_argument("--token", help=f"bearer token of the endpoint (default ${TOKEN_ENV})")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON array: per image label, p_fake, threshold, "
                                                         "model and (face stage) faces with boxes")
    out.add_argument("--csv", action="store_true", help="print CSV: path,label,p_fake,threshold,faces,model,version,"
                                                        "error")
    p.add_argument("--frames", type=_positive_int, default=DEFAULT_FRAMES, help=f"videos: frames sampled evenly (default "
                                                                      f"{DEFAULT_FRAMES})")
    p.add_argument("--strategy", choices=STRATEGIES, default="mean", help="videos: the video's p_fake from its "
                                                                          "frames': mean, or DFDC's confident "
                                                                          "strategy (default mean)")
    p.add_argument("--output", default=".", metavar="DIR", help="videos, --model: where NAME.timeline.png goes "
                                                                "(default the current folder)")
    p.add_argument("--gpu", action="store_true", help="--model: run on a GPU")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help="what runs the forward: torch, onnx (ONNX "
                   "Runtime fp32) or onnx-int8; the graph must be stored with the model (defakenet export) "
                   "(default torch)")
    p.add_argument("--actors", type=_positive_int, default=1, help="--model, folders of more than 256 images: model copies "
                                                         "scoring in parallel through Ray Data (default 1)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI of models:/ URIs (default "
                                                         "$MLFLOW_TRACKING_URI, else the SQLite store under --home)")
    p.add_argument("--home", default="", metavar="DIR", help="data folder of the default SQLite store")
    _add_verbose(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="Grad-CAM heatmaps of images: an overlay PNG per image (heatmap, face boxes, "
                                       "p_fake) and the bare heatmap",
                       epilog="Example: defakenet explain suspicious.jpg --model models:/defakenet@champion -o out/ "
                              "writes out/suspicious.explain.png and out/suspicious.heatmap.png.")
    p.add_argument("images", nargs="+", metavar="IMG", help="image files or folders (read recursively)")
    p.add_argument("--model", required=True, metavar="MODEL", help="a model directory, models:/NAME/VERSION, "
                                                                   "models:/NAME@ALIAS or runs:/RUN_ID/model")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the PNGs (made if missing)")
    p.add_argument("--json", action="store_true", help="print one JSON array: verdicts and the files written")
    p.add_argument("--gpu", action="store_true", help="run on a GPU")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI of models:/ URIs (default "
                                                         "$MLFLOW_TRACKING_URI, else the SQLite store under --home)")
    p.add_argument("--home", default="", metavar="DIR", help="data folder of the default SQLite store")
    p.set_defaults(func=cmd_explain)

    from defakenet.registry import DEFAULT_MODEL_NAME

    registry = sub.add_parser("registry", help="registered versions: list, show, promote to champion, roll back")
    rsub = registry.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    for action, help_, func in [
        ("list", "every version: aliases, test ROC-AUC / accuracy, creation time and run", cmd_registry_list),
        ("show", "one version: gate decision, metrics, tags, source and run", cmd_registry_show),
        ("promote", "make VERSION the champion by hand (rollback undoes it)", cmd_registry_promote),
        ("rollback", "move champion back to the previous champion", cmd_registry_rollback),
    ]:
        p = rsub.add_parser(action, help=help_)
        if action in ("show", "promote"):
            p.add_argument("version", type=_version_arg, metavar="VERSION", help="version number, e.g. 3")
        p.add_argument("--name", default=DEFAULT_MODEL_NAME,
                       help=f"registered model name (default {DEFAULT_MODEL_NAME})")
        p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, "
                                                             "else the SQLite store under --home, as train uses)")
        p.add_argument("--home", default="", metavar="DIR",
                       help="data folder of the default SQLite store (default .defakenet)")
        if action in ("list", "show"):
            p.add_argument("--json", action="store_true", help="print JSON instead of text")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `defakenet submit JOB … -- ARGS`: ARGS go to the job's entrypoint untouched
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = parser.parse_args(argv)
    if extra and args.command != "submit":
        parser.error(f"unrecognized arguments: -- {' '.join(extra)}")
    args.extra = extra
    if getattr(args, "verbose", False):
        from defakenet.runtime import set_verbose

        set_verbose()
    try:
        return args.func(args)
    except UserError as e:
        print(f"defakenet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("defakenet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
