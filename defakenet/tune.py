"""Ray Tune over Ray Train runs: many trials (lr × freeze depth × …), cheap ones stopped early by ASHA, the winner
evaluated on test, logged and registered.

    tune.space ─▶ Optuna TPE (or random) ─▶ trial = a driver function that builds and fits a TorchTrainer
    (Ray 2.60 / Train V2 pattern) ─▶ per-epoch val ROC-AUC to Tune (TuneReportCallback) ─▶ ASHA stops the weak
    ─▶ best trial's best checkpoint ─▶ threshold on valid, test report ─▶ MLflow model ─▶ registry version + gate

Each trial's Ray Train run is named `STUDY-TRIAL_ID` under the study's storage, so a restarted trial resumes from
its own last checkpoint; the study itself (searcher and scheduler state, finished trials) lives under
`storage/STUDY` and `defakenet tune --resume` (or the same --run-name) continues it. MLflow: one parent run for
the study, a nested child run per trial.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from defakenet.config import Config, search_space
from defakenet.errors import DataError, UserError, first_line
from defakenet.runtime import default_home, init_ray, storage_path
from defakenet.train import SCORE, finish, load_run_inputs

DEFAULT_REGISTERED_NAME = "defakenet"
# the trial's driver function only builds and watches a TorchTrainer (its workers hold the real resources)
TRIAL_DRIVER_CPUS = 0.25
# the columns of the live table and the results CSV that come from the space (short names)
SHORT = {"optim.lr": "lr", "model.freeze_depth": "freeze", "optim.weight_decay": "wd", "train.batch_size": "batch",
         "optim.label_smoothing": "smooth", "augment.scale_min": "scale_min", "model.stages": "stages",
         "data.image_size": "size", "augment.mixup_alpha": "mixup", "model.input_filter": "filter"}


def param_space(cfg: Config) -> dict:
    """tune.space → Ray Tune domains, flat `section.key` names."""
    from ray import tune

    make = {"loguniform": lambda a: tune.loguniform(a[0], a[1]), "uniform": lambda a: tune.uniform(a[0], a[1]),
            "int": lambda a: tune.randint(int(a[0]), int(a[1]) + 1), "choice": lambda a: tune.choice(list(a))}
    return {key: make[domain](args) for key, (domain, args) in search_space(cfg.tune.space).items()}


def per_trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial holds while it trains: its workers, plus a CPU of decode headroom for Ray Data on CPU."""
    r = cfg.resources
    cpus = r.workers * r.cpus_per_worker + TRIAL_DRIVER_CPUS
    return {"CPU": cpus if r.use_gpu else cpus + 1, "GPU": float(r.workers) if r.use_gpu else 0.0}


def concurrency(cfg: Config, cluster: dict[str, float]) -> int:
    """tune.max_concurrent, or as many trials as the cluster's GPUs (GPU trials) or CPUs (CPU trials) fit."""
    if cfg.tune.max_concurrent:
        return cfg.tune.max_concurrent
    need = per_trial_resources(cfg)
    key = "GPU" if cfg.resources.use_gpu else "CPU"
    have = cluster.get(key, 0.0)
    if have < need[key]:
        raise UserError(f"one trial needs {need[key]:g} {key}s ({cfg.resources.workers} workers) but the cluster has "
                        f"{have:g}; lower --workers or add nodes")
    return max(1, min(cfg.tune.num_samples, int(have // need[key])))


# ---- one trial


def _trial(params: dict, *, base: dict, study: str, parent_run_id: str, tracking_uri: str, manifest,
           client_env: dict[str, str]) -> None:
    """One trial: the study's config with this trial's values, trained by its own TorchTrainer; `client_env`: the
    driver's MLflow credentials (`tracking.client_env`)."""
    import ray.tune
    from ray.data import DataContext
    from ray.tune.integration.ray_train import TuneReportCallback

    from defakenet import tracking
    from defakenet.train import epoch_logger, fit_trainer, make_trainer

    # this process makes the trial's datasets, which carry its DataContext: no per-operator progress bars (on a
    # cluster nothing else turns them off, and every driver of the cluster would print them)
    DataContext.get_current().enable_progress_bars = False
    trial_id = ray.tune.get_context().get_trial_id()
    tracking.use_client_env(client_env)
    cfg = Config.from_dict(base).replace(**params, **{"tracking.run_name": trial_run_name(study, trial_id)})
    tracker = tracking.Tracker(tracking_uri).start(
        cfg.tracking.experiment, cfg.tracking.run_name,
        tags={"kind": "trial", "study": study, "trial_id": trial_id, "mlflow.parentRunId": parent_run_id})
    with tracker:
        tracker.log_config(cfg)
        trainer = make_trainer(cfg, manifest, callbacks=[epoch_logger(tracking_uri, tracker.run_id),
                                                         TuneReportCallback()])
        fit_trainer(trainer)  # a bad image: the trial's error in Tune's table is the file, in one line


# ---- progress and the stopping record


def _scheduler(cfg: Config):
    """ASHA on val ROC-AUC with epochs as its clock (a resumed trial's epochs continue; Tune's iterations don't)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    return AsyncHyperBandScheduler(time_attr="epoch", metric=SCORE, mode="max", max_t=cfg.train.epochs,
                                   grace_period=min(cfg.tune.grace_period, cfg.train.epochs),
                                   reduction_factor=cfg.tune.reduction_factor)


def _searcher(cfg: Config, max_concurrent: int):
    """Optuna TPE (Tune wraps it in a ConcurrencyLimiter) or seeded random search, which limits itself."""
    if cfg.tune.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=SCORE, mode="max", seed=cfg.train.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Tune's max_concurrent_trials does not reach a BasicVariantGenerator passed in: give it the limit itself
    return BasicVariantGenerator(random_state=cfg.train.seed, max_concurrent=max_concurrent)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.4g}"
    return str(v)


def _progress(keys: list[str], epochs: int, log: Callable[[str], None], every_s: float = 30.0):
    """A Tune callback that prints the trial table when a trial starts, ends or errors, and every `every_s`."""
    from ray.tune import Callback

    class Table(Callback):
        def __init__(self):
            self._last = 0.0
            self._rows: dict[str, dict] = {}

        def _show(self, trials, force: bool):
            now = time.monotonic()
            if not force and now - self._last < every_s:
                return
            self._last = now
            head = ["trial", *[SHORT.get(k, k) for k in keys], "epoch", "val_auc", "best", "status"]
            rows = []
            for t in trials:
                r = self._rows.get(t.trial_id, {})
                rows.append([t.trial_id, *[_fmt(t.config.get(k)) for k in keys],
                             f"{r.get('epoch', 0)}/{epochs}", _fmt(r.get("auc", float("nan"))),
                             _fmt(r.get("best", float("nan"))),
                             "STOPPED" if t.status == "TERMINATED" and r.get("epoch", 0) < epochs else t.status])
            width = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
            lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, width, strict=False)) for row in [head, *rows]]
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            log(f"-- trials: {done} of {len(trials)} done --\n" + "\n".join(lines))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            r = self._rows.setdefault(trial.trial_id, {"best": -math.inf})
            r.update(epoch=int(result.get("epoch", 0)), auc=float(result.get(SCORE, math.nan)))
            r["best"] = max(r["best"], r["auc"])
            self._show(trials, force=False)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._show(trials, force=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._show(trials, force=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._show(trials, force=True)

        def on_experiment_end(self, trials, **info):
            self._show(trials, force=True)

    return Table()


# ---- results


def results_table(grid, keys: list[str], epochs: int) -> pd.DataFrame:
    """One row per trial: its values, status, epochs, best val ROC-AUC (and its epoch) and trainable params.

    STOPPED_EARLY: ASHA ended the trial before its last epoch (patience-based early stopping is not counted)."""
    rows = []
    for r in grid:
        df = r.metrics_dataframe if r.metrics_dataframe is not None else pd.DataFrame()
        row = {"trial_id": (r.metrics or {}).get("trial_id", ""), **{k: r.config.get(k) for k in keys}}
        if len(df) and SCORE in df:
            best = df.loc[df[SCORE].idxmax()]
            row |= {"epochs": int(df["epoch"].max()), "best_val_roc_auc": float(best[SCORE]),
                    "best_epoch": int(best["epoch"]), "last_val_roc_auc": float(df[SCORE].iloc[-1]),
                    "trainable_parameters": int(df["trainable_parameters"].iloc[0])}
        asha_stop = len(df) and row["epochs"] < epochs and not df["patience_stop"].iloc[-1]
        row["status"] = "ERROR" if r.error else ("STOPPED_EARLY" if asha_stop else "TERMINATED")
        rows.append(row)
    return pd.DataFrame(rows)


def write_plots(table: pd.DataFrame, keys: list[str], out: Path) -> dict[str, Path]:
    """val AUC vs learning rate per freeze depth, and best-so-far val AUC vs trial number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    done = table.dropna(subset=["best_val_roc_auc"]) if "best_val_roc_auc" in table else table.iloc[0:0]
    x = "optim.lr" if "optim.lr" in keys else (keys[0] if keys else None)
    fig, ax = plt.subplots(figsize=(6, 4))
    if x is not None and len(done):
        groups = done.groupby("model.freeze_depth") if "model.freeze_depth" in done else [("all", done)]
        for depth, g in groups:
            ax.scatter(g[x], g["best_val_roc_auc"], label=f"freeze_depth {depth}")
        if x == "optim.lr":
            ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel(x or "trial")
    ax.set_ylabel("best val ROC-AUC")
    ax.set_title("val ROC-AUC per trial")
    paths["val_auc_vs_lr"] = _save(fig, out / "val_auc_vs_lr.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    scores = table["best_val_roc_auc"].astype(float).fillna(-math.inf) if "best_val_roc_auc" in table else []
    if len(scores):
        best = scores.cummax().replace(-math.inf, math.nan)
        ax.plot(range(1, len(best) + 1), best, marker="o")
    ax.set_xlabel("trial (in creation order)")
    ax.set_ylabel("best val ROC-AUC so far")
    paths["best_so_far"] = _save(fig, out / "best_so_far.png")
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- the study


def run_path(cfg: Config, name: str) -> str:
    """Where the study `name` (or a trial's Ray Train run `name`) lives under the storage folder or URI."""
    return f"{storage_path(cfg).rstrip('/')}/{name}"


def trial_run_name(study: str, trial_id: str) -> str:
    """A trial's Ray Train run name and MLflow child run name: stable across restarts of the trial."""
    return f"{study}-{trial_id}"


def latest_study(cfg: Config) -> str:
    """The most recently written study under the storage folder (for --resume without a name)."""
    root = Path(storage_path(cfg))
    studies = sorted(root.glob("*/tuner.pkl"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not studies:
        raise UserError(f"--resume: no study under {root}; pass --run-name of the study to resume")
    return studies[-1].parent.name


def say(line: str) -> None:
    """The default `log`: print. A module function, so Tune can pickle the progress callback that holds it even
    after Ray Train has swapped `builtins.print` in this process (a `fit` before the study, as in `make demo`)."""
    print(line, flush=True)


def run_study(cfg: Config, *, resume: bool = False, log: Callable[[str], None] = say,
              address: str | None = None) -> dict:
    """Run (or resume) a study, evaluate the best trial's best checkpoint on test, log and register it."""
    import ray
    from ray import tune

    from defakenet import tracking

    if resume and not cfg.tracking.run_name:
        cfg = cfg.replace(**{"tracking.run_name": latest_study(cfg)})
    cfg, manifest = load_run_inputs(cfg, log, prefix="tune")
    cfg = cfg.replace(**{"tracking.register": cfg.tracking.register or DEFAULT_REGISTERED_NAME})
    study = cfg.tracking.run_name
    home = default_home(cfg)
    out = home / "runs" / study
    path = run_path(cfg, cfg.tracking.run_name)
    keys = list(search_space(cfg.tune.space))

    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri, home)
    if tracking.run_finished(tracking_uri, cfg.tracking.experiment, study):
        raise UserError(f"study {study} has already finished (MLflow experiment {cfg.tracking.experiment!r}); "
                        f"choose a new --run-name")
    # a local instance holds max_concurrent trials (or what the machine's cores fit), each with decode headroom
    per_trial = per_trial_resources(cfg)["CPU"]
    local_k = cfg.tune.max_concurrent or max(1, min(cfg.tune.num_samples, int((os.cpu_count() or 1) // per_trial)))
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise UserError(f"--resume: no study {study!r} at {path}")
    init_ray(cfg, address, cpus=math.ceil(local_k * per_trial))
    # a trial ASHA stops is blocked in TorchTrainer.fit() until its next epoch: Tune's graceful stop would leave
    # its workers holding their CPUs/GPUs for up to 10 minutes while new trials start. Kill it after a few seconds
    # instead (its TrainController and workers go with it; its checkpoints and MLflow run stay).
    os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", "5")
    tracker = tracking.Tracker(tracking_uri).start(cfg.tracking.experiment, study, tags={"kind": "study"})
    with tracker:
        tracker.log_config(cfg)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=cfg.to_dict(), study=study, parent_run_id=tracker.run_id,
                                 tracking_uri=tracking_uri, manifest=manifest, client_env=tracking.client_env()),
            {"CPU": TRIAL_DRIVER_CPUS})
        if exists:
            log(f"resuming study {study} from {path}")
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        else:
            k = concurrency(cfg, ray.cluster_resources())
            log(f"study {study}: {cfg.tune.num_samples} trials, {k} at a time, {cfg.tune.search} search over "
                f"{', '.join(keys)}; ASHA on {SCORE} (grace {cfg.tune.grace_period}, max {cfg.train.epochs} epochs); "
                f"{cfg.resources.workers} worker{'s' if cfg.resources.workers != 1 else ''} per trial; MLflow {tracking_uri} run {tracker.run_id}")
            tuner = tune.Tuner(
                trainable, param_space=param_space(cfg),
                tune_config=tune.TuneConfig(num_samples=cfg.tune.num_samples,
                                            max_concurrent_trials=k if cfg.tune.search == "optuna" else None,
                                            search_alg=_searcher(cfg, k), scheduler=_scheduler(cfg)),
                run_config=tune.RunConfig(name=study, storage_path=storage_path(cfg), verbose=0,
                                          callbacks=[_progress(keys, cfg.train.epochs, log)]),
            )
        grid = tuner.fit()
        finished = grid.num_terminated + grid.num_errors
        if finished < cfg.tune.num_samples:
            raise UserError(f"study {study} stopped after {finished} of {cfg.tune.num_samples} trials; resume it with "
                            f"`defakenet tune --resume --run-name {study}` (and the same --home/--storage)")
        table = results_table(grid, keys, cfg.train.epochs)
        for row in table.itertuples():
            # Tune stops a trial's process as soon as its last result is in, often before the trial's own run ends
            row_id = tracking.close_run(tracking_uri, cfg.tracking.experiment, trial_run_name(study, row.trial_id),
                                        "FAILED" if row.status == "ERROR" else "FINISHED", {"tune.status": row.status})
            table.loc[row.Index, "mlflow_run_id"] = row_id
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "trials.csv", index=False)
        write_plots(table, keys, out)
        tracker.log_artifacts(out, "study")
        done = table.dropna(subset=["best_val_roc_auc"]) if "best_val_roc_auc" in table else table.iloc[0:0]
        if not len(done):
            from defakenet.data.pipeline import find_data_error

            cause = next(filter(None, map(find_data_error, grid.errors)), None)
            if cause is not None:  # every trial met the same unreadable image
                raise DataError(f"study {study}: no trial reported a validation score: {first_line(cause)}")
            raise RuntimeError(f"study {study}: no trial reported a validation score; see the trial errors above")
        best = done.loc[done["best_val_roc_auc"].idxmax()]
        winner = cfg.replace(**{k: best[k] for k in keys})
        log(f"best trial {best['trial_id']}: " + ", ".join(f"{SHORT.get(k, k)} {_fmt(best[k])}" for k in keys)
            + f", val_auc {best['best_val_roc_auc']:.4f} at epoch {int(best['best_epoch'])}")
        tracker.log_metrics({"trials": float(len(table)), "trials_stopped_early": float(
            (table["status"] == "STOPPED_EARLY").sum())})
        tracker.set_tags({"best_trial": best["trial_id"], **{f"best.{k}": best[k] for k in keys}})
        best_dir = best_checkpoint(run_path(cfg, trial_run_name(study, best["trial_id"])))
        summary = finish(winner, manifest, best_dir, out, tracker=tracker, log=log)
        summary |= {"study": study, "trials": table, "best_trial": best["trial_id"], "tracking_uri": tracking_uri,
                    "storage": path}
        return summary


def best_checkpoint(run_dir: str) -> Path:
    """The best checkpoint (by val ROC-AUC in its meta.json) still stored in a trial's Ray Train run folder.

    Tune's view of a trial can end an epoch or two before Ray Train's (a trial stopped by ASHA finishes the epoch it
    is in), and Train keeps only its best checkpoint, so the folder, not Tune's results, says which one is left.
    Local folders are used in place; object-store checkpoints (s3://…) are downloaded."""
    import json

    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(run_dir) if "://" in run_dir else (pafs.LocalFileSystem(), run_dir)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            try:
                with fs.open_input_stream(f"{info.path}/meta.json") as f:
                    meta = json.loads(f.read())
            except (OSError, ValueError):
                continue
            found.append((meta.get(SCORE, -1.0), meta.get("epoch", 0), info.path))
    if not found:
        raise RuntimeError(f"no checkpoint with a meta.json under {run_dir}")
    _, _, path = max(found)
    if "://" not in run_dir:
        return Path(path)
    from ray.train import Checkpoint

    return Path(Checkpoint(path, filesystem=fs).to_directory())
