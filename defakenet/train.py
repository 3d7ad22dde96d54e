"""Training on Ray Train: `train_func_per_worker` runs on every data-parallel worker, `fit` drives a run.

    manifest ─▶ Ray Data (decode + augment on CPU actors) ─▶ N workers (DDP, gloo or NCCL) ─▶ per epoch:
    train, validate on every worker's shard, gather scores, report metrics + checkpoint (rank 0) ─▶ best checkpoint
    ─▶ threshold on valid ─▶ test report ─▶ model directory, MLflow run, registry version

Rerunning the same command with the same run name resumes: Ray Train V2 restores from the latest checkpoint
under (storage_path, run name), and the MLflow run of that name continues unless it had FINISHED (a finished
run's rerun, e.g. with more epochs, gets a new MLflow run of the same name).

An MLflow server that goes away does not stop training: the epoch logger keeps what it could not log and logs it
later, each checkpoint carries every epoch's metrics (EPOCHS_FILE) for the driver to log what the run still lacks,
and the driver waits `tracking.wait_for_server_s` for the server before logging the model; if it does not come
back, the model stays saved in HOME/runs/RUN/model and the run ends with one line saying how to log it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from defakenet.artifact import load_model, save_model
from defakenet.config import Config
from defakenet.data.layouts import read_manifest
from defakenet.engine import build_model, build_optimizer, build_scheduler, predict, train_one_epoch
from defakenet.errors import DataError, TrackingServerDown, UserError, first_line
from defakenet.metrics import choose_threshold, compute_metrics
from defakenet.model import count_parameters
from defakenet.runtime import default_home, init_ray, storage_path, training_worker_env

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer

TRAIN_STATE = "train_state.pt"
# in every checkpoint: the metrics of every epoch so far (a list of rank 0's reports, each with the MLflow run it
# belongs to under RUN_KEY), for the driver to log what the run lacks; Ray's Result.metrics_dataframe holds only the
# checkpoints CheckpointConfig keeps
EPOCHS_FILE, RUN_KEY = "epochs.json", "mlflow_run_id"
SCORE = "val_roc_auc"


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


def _absolute(path: str) -> str:
    """Local paths made absolute for workers that run elsewhere; URIs (s3://, …) and empty values unchanged."""
    return path if not path or "://" in path else str(Path(path).expanduser().resolve())


def _fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ---- the worker


CKPT_PREFIX = "defakenet-ckpt-"


def sweep_checkpoint_dirs(tmp_root: str | None = None) -> list[Path]:
    """Remove the checkpoint staging folders (CKPT_PREFIX + PID-…) of processes that are gone; the removed ones.

    Rank 0 writes each epoch's checkpoint to a temp folder before Ray Train copies it to storage; a worker killed
    in between (the case fault tolerance exists for) leaves it behind, up to a model plus optimizer state."""
    removed: list[Path] = []
    if not Path("/proc").is_dir():  # no way to tell a live PID here: leave everything
        return removed
    for d in Path(tmp_root or tempfile.gettempdir()).glob(f"{CKPT_PREFIX}*-*"):
        pid = d.name[len(CKPT_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def quiet_train_loggers(level: str) -> list[str]:
    """Give `level` to Ray Train's loggers that LoggingConfig misses: Ray 2.60 names some by their file path
    (`logging.getLogger(__file__)` in its execution context, which logs every report's metrics at INFO on every
    worker), outside the `ray.train` hierarchy its filter covers. Returns their names."""
    import logging

    part = f"{os.sep}ray{os.sep}train{os.sep}"
    names = [n for n in list(logging.root.manager.loggerDict) if part in n]
    for name in names:
        logging.getLogger(name).setLevel(level)
    return names


def train_func_per_worker(config: dict) -> None:
    """One data-parallel worker: resume from Ray's latest checkpoint if any, then train and validate per epoch."""
    import ray.train
    import ray.train.torch

    from defakenet.data.pipeline import gather_predictions, iter_batches, steps_per_epoch

    cfg = Config.from_dict(config["config"])
    quiet_train_loggers(cfg.train.log_level)
    n_train, mlflow_run_id = config["n_train"], config.get("mlflow_run_id", "")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    channels_last = cfg.train.channels_last and device.type == "cuda"
    torch.manual_seed(cfg.train.seed)

    if rank == 0:
        sweep_checkpoint_dirs()
    model = build_model(cfg)
    start_epoch, best_auc, stale, state, history = 1, -1.0, 0, None, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            model.load_state_dict(load_model(d).model.state_dict())
            state = torch.load(Path(d) / TRAIN_STATE, map_location="cpu", weights_only=True)
            if (Path(d) / EPOCHS_FILE).is_file():
                history = json.loads((Path(d) / EPOCHS_FILE).read_text())
        start_epoch, best_auc, stale = state["epoch"] + 1, state["best_auc"], state["stale"]
    # a resumed run that had stopped early stays stopped (a rerun after a lost MLflow server only logs the model)
    last_epoch = start_epoch - 1 if cfg.train.patience and stale >= cfg.train.patience else cfg.train.epochs
    unfreeze_at = cfg.model.unfreeze_epoch if cfg.model.freeze_depth else 0
    if unfreeze_at and start_epoch > unfreeze_at:
        model.set_freeze_depth(0)  # resumed past the unfreeze epoch: the saved optimizer covers every layer
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    plain = model

    steps = steps_per_epoch(n_train, cfg.train.batch_size, world)  # >= 1: make_trainer checked it
    if cfg.train.max_steps:
        steps = min(steps, cfg.train.max_steps)

    def prepare(done_steps: int):
        """DDP over the currently trainable parameters, a fresh optimizer and the schedule at `done_steps`."""
        ddp = ray.train.torch.prepare_model(plain)
        opt = build_optimizer(ddp, cfg.optim)
        sched = build_scheduler(opt, cfg.optim, steps, cfg.train.epochs)
        for _ in range(done_steps):  # LambdaLR: stepping replays the schedule; no optimizer step involved
            sched.step()
        return ddp, opt, sched

    model, optimizer, scheduler = prepare(0)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" and device.type == "cuda" else None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if rank == 0:
            print(f"resumed from epoch {state['epoch']} checkpoint (best val_auc {best_auc:.4f})", flush=True)

    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    run_start = time.perf_counter()
    for epoch in range(start_epoch, last_epoch + 1):
        t0 = time.perf_counter()
        if unfreeze_at and epoch == unfreeze_at:
            # staged unfreezing: every layer trains from here on; DDP must be rebuilt to sync the new parameters
            del model, optimizer
            plain.set_freeze_depth(0)
            model, optimizer, scheduler = prepare((epoch - 1) * steps)
            if rank == 0:
                print(f"epoch {epoch}: unfroze the backbone ({count_parameters(plain, trainable_only=True):,} "
                      f"trainable parameters), new optimizer", flush=True)
        stats = train_one_epoch(
            model, iter_batches(train_shard, cfg.train.batch_size, train=True, seed=cfg.train.seed), optimizer,
            scheduler, device=device, amp=cfg.train.amp, channels_last=channels_last, grad_clip=cfg.optim.grad_clip,
            label_smoothing=cfg.optim.label_smoothing, mixup_alpha=cfg.augment.mixup_alpha, max_steps=steps,
            scaler=scaler,
        )
        labels, scores = predict(plain, iter_batches(valid_shard, cfg.train.batch_size, train=False), device=device,
                                 amp=cfg.train.amp, channels_last=channels_last)
        labels, scores = gather_predictions(labels, scores)
        images = _all_sum(stats["images"], device)
        val = compute_metrics(labels, scores, threshold=0.5)
        epoch_time = time.perf_counter() - t0
        metrics = {
            "epoch": epoch, "train_loss": _all_mean(stats["loss"], device), "val_loss": val["log_loss"],
            "val_accuracy": val["accuracy"], SCORE: val["roc_auc"],
            "images_per_s": images / stats["seconds"] if stats["seconds"] > 0 else 0.0,
            "epoch_time_s": epoch_time, "lr": scheduler.get_last_lr()[0],
            "trainable_parameters": count_parameters(plain, trainable_only=True),
        }
        improved = metrics[SCORE] > best_auc
        best_auc, stale = (metrics[SCORE], 0) if improved else (best_auc, stale + 1)
        stop = bool(cfg.train.patience) and stale >= cfg.train.patience
        metrics["patience_stop"] = int(stop)
        with tempfile.TemporaryDirectory(prefix=f"{CKPT_PREFIX}{os.getpid()}-") as tmp:
            ckpt = None
            if rank == 0:
                save_model(tmp, plain, cfg, {"epoch": epoch, SCORE: metrics[SCORE]})
                torch.save({"epoch": epoch, "best_auc": best_auc, "stale": stale,
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict() if scaler is not None else {}}, Path(tmp) / TRAIN_STATE)
                history.append({**metrics, RUN_KEY: mlflow_run_id})
                (Path(tmp) / EPOCHS_FILE).write_text(json.dumps(history, default=float))
                ckpt = ray.train.Checkpoint.from_directory(tmp)
                done = epoch - start_epoch + 1
                eta = (time.perf_counter() - run_start) / done * (cfg.train.epochs - epoch)
                print(f"epoch {epoch}/{cfg.train.epochs}  train_loss {metrics['train_loss']:.4f}  "
                      f"val_loss {metrics['val_loss']:.4f}  val_acc {metrics['val_accuracy']:.4f}  "
                      f"val_auc {metrics[SCORE]:.4f}  {metrics['images_per_s']:.1f} img/s  {epoch_time:.1f}s  "
                      f"ETA {_fmt_eta(eta)}", flush=True)
                if stop:
                    print(f"early stop: val_auc has not improved for {stale} epochs (best {best_auc:.4f})", flush=True)
            ray.train.report(metrics, checkpoint=ckpt)
        if stop:
            break


def _all_sum(value: float, device: torch.device) -> float:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def _all_mean(value: float, device: torch.device) -> float:
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return _all_sum(value, device) / world


def epoch_logger(tracking_uri: str, run_id: str):
    """A Ray Train callback that logs each epoch's metrics (rank 0's report) into MLflow run `run_id`.

    It runs on the Train controller when Ray commits an epoch's report, right after the checkpoint manager has
    recorded that epoch's checkpoint as the latest. So the history holds each epoch once: an epoch cut short by a
    worker failure is not logged (the restarted workers resume from the last committed checkpoint and train it
    again), and a committed epoch is never trained again. The controller runs on the driver's node, where a
    SQLite tracking URI points. The MLflow credentials set where the callback is made go with it (the controller is
    a Ray actor: it has the environment of the Ray job, not of this process).

    A server that does not answer never holds training up for long nor stops it: each call gives up within seconds
    (`tracking.quick_http`), and an epoch that could not be logged is kept and logged, oldest first and each metric
    once, at the next report. One line says when logging first fails, one when it works again; what is still
    missing when training ends, the driver logs from the checkpoint's EPOCHS_FILE (`finish`).
    """
    from ray.train import UserCallback

    from defakenet import tracking

    client_env = tracking.client_env()
    server = tracking._redact(tracking_uri)

    class EpochMetricsToMlflow(UserCallback):
        def __init__(self):
            self._client = None  # made on the controller, on first use
            self._pending: list[dict] = []  # reports not logged yet, oldest first
            self._failed_at = None  # the epoch whose logging failed first, while it fails

        def after_report(self, run_context, metrics, checkpoint):
            self._pending.append(dict(metrics[0]))
            try:
                with tracking.quick_http():
                    if self._client is None:
                        tracking.use_client_env(client_env)
                        self._client = tracking.metrics_client(tracking_uri)
                    if self._failed_at is None:
                        (m,) = self._pending
                        tracking.log_metrics_to(self._client, run_id, {k: v for k, v in m.items() if k != "epoch"},
                                                step=m["epoch"])
                    else:  # an earlier try may have got through before it failed
                        tracking.log_missing_metrics(self._client, run_id, self._pending)
            except Exception as e:  # noqa: BLE001 - whatever it is, training goes on and the epoch is kept
                if self._failed_at is None:
                    self._failed_at = self._pending[-1]["epoch"]
                    print(f"mlflow: could not log epoch {self._failed_at} to {server} "
                          f"({tracking.failure_reason(e)}); keeping it and retrying at the next epoch", flush=True)
                return
            if self._failed_at is not None:
                print(f"mlflow: {server} answers again; logged epochs {self._pending[0]['epoch']}-"
                      f"{self._pending[-1]['epoch']}, kept since epoch {self._failed_at}", flush=True)
                self._failed_at = None
            self._pending.clear()

    return EpochMetricsToMlflow()


def epoch_history(result, run_id: str) -> list[dict]:
    """The metrics of every epoch of a finished `trainer.fit()` that belongs to MLflow run `run_id` (through worker
    restarts and resumes of that run; a finished run's rerun with more epochs is a new run, which gets only its own),
    from the latest checkpoint's EPOCHS_FILE; [] without one (no checkpoint, or one written before the file existed)."""
    ckpt = result.checkpoint
    if ckpt is None:
        return []
    try:
        with ckpt.filesystem.open_input_stream(f"{ckpt.path}/{EPOCHS_FILE}") as f:
            rows = json.loads(f.read())
    except (OSError, ValueError):
        return []
    return [{k: v for k, v in r.items() if k != RUN_KEY} for r in rows if r.get(RUN_KEY) == run_id]


def failure_line(errors: dict, count: int, max_failures: int) -> str:
    """What the driver prints when training workers fail: which ranks, the first error's first line, and what Ray
    Train does next under FailureConfig(max_failures) (-1: no limit)."""
    rank = min(errors)
    first = first_line(errors[rank])
    what = type(errors[rank]).__name__ + (f": {first[:200]}" if first else "")
    ranks = ", ".join(str(r) for r in sorted(errors))
    if max_failures < 0 or count <= max_failures:
        allowed = "no limit" if max_failures < 0 else f"{max_failures} allowed"
        then = f"restarting the workers from the latest checkpoint (failure {count}, {allowed})"
    else:
        then = f"giving up: failure {count}, {max_failures} allowed (resources.max_failures)"
    return f"training worker(s) rank {ranks} failed ({what}); {then}"


def _failure_notice(max_failures: int):
    """A Ray Train callback (on the controller) that prints `failure_line` when workers fail. Ray Train's own account,
    its failure policy's INFO record, shows only with train.log_level INFO."""
    from ray.train import UserCallback

    class FailureNotice(UserCallback):
        def __init__(self):
            self.count = 0

        def after_exception(self, run_context, worker_exceptions):
            self.count += 1
            print(failure_line(worker_exceptions, self.count, max_failures), flush=True)

    return FailureNotice()


# ---- the driver


def load_run_inputs(cfg: Config, log: Callable[[str], None], prefix: str):
    """The manifest of cfg.data.root (each split checked; the training split cut to data.train_fraction) and cfg
    with a run name and absolute local paths."""
    from defakenet.data.splits import subsample_train

    if not cfg.data.root:
        raise UserError("no dataset: pass --data ROOT (or set data.root in --config)")
    manifest = read_manifest(cfg.data.root, ratios=cfg.data.split, seed=cfg.data.split_seed)
    check_splits(manifest)
    n_train = int((manifest["split"] == "train").sum())
    if cfg.data.train_fraction < 1:
        manifest = subsample_train(manifest, cfg.data.train_fraction, seed=cfg.data.split_seed)
    counts = manifest.groupby("split")["label"].agg(["count", "sum"])
    cut = cfg.data.train_fraction < 1  # "train 14 of 56 (7 fake; data.train_fraction 0.25)"
    log("data: " + ", ".join(
        f"{s} {int(r['count'])} of {n_train} ({int(r['sum'])} fake; data.train_fraction {cfg.data.train_fraction:g})"
        if cut and s == "train" else f"{s} {int(r['count'])} ({int(r['sum'])} fake)" for s, r in counts.iterrows()))
    if cfg.promote.suite:
        # the promotion suite's sets are read and checked now, not after hours of training
        from defakenet.suite import load_suite, suite_rows

        suite = load_suite(cfg.promote.suite)
        suite_rows(suite, cfg.data.split, cfg.data.split_seed)
        log(f"promotion suite: {suite.source} ({', '.join(s.name for s in suite.sets)}; "
            f"max ROC-AUC drop per cell {cfg.promote.max_set_auc_drop:g})")
    cfg = cfg.replace(**{"tracking.run_name": cfg.tracking.run_name or default_run_name(prefix),
                         "data.root": _absolute(cfg.data.root), "model.weights": _absolute(cfg.model.weights),
                         "promote.suite": _absolute(cfg.promote.suite)})
    return cfg, manifest


def make_trainer(cfg: Config, manifest, *, callbacks: list, mlflow_run_id: str = "") -> TorchTrainer:
    """The TorchTrainer of one training run: name cfg.tracking.run_name under storage_path(cfg), so that a rerun
    with the same name resumes from its latest checkpoint. `mlflow_run_id`: the MLflow run its epochs belong to
    (in the checkpoints' EPOCHS_FILE, see `epoch_history`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from defakenet.data.pipeline import build_dataset, dataset_config, steps_per_epoch

    train_rows = manifest[manifest["split"] == "train"]
    if steps_per_epoch(len(train_rows), cfg.train.batch_size, cfg.resources.workers) < 1:
        raise DataError(f"train split of {len(train_rows)} images is too small for {cfg.resources.workers} workers x "
                        f"batch {cfg.train.batch_size}; lower train.batch_size or resources.workers")
    return TorchTrainer(
        train_func_per_worker,
        train_loop_config={"config": cfg.to_dict(), "n_train": len(train_rows), "mlflow_run_id": mlflow_run_id},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.resources.workers, use_gpu=cfg.resources.use_gpu,
            resources_per_worker={"CPU": cfg.resources.cpus_per_worker, **({"GPU": 1} if cfg.resources.use_gpu else {})},
            placement_strategy=cfg.resources.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.tracking.run_name, storage_path=storage_path(cfg),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.resources.max_failures),
            callbacks=[*callbacks, _failure_notice(cfg.resources.max_failures)],
            worker_runtime_env={"env_vars": training_worker_env(cfg)},
            # Ray Train's INFO lines (resources, process group, every report's metrics twice) stay in its log files
            logging_config=ray.train.LoggingConfig(log_level=cfg.train.log_level),
        ),
        datasets={"train": build_dataset(train_rows, cfg, train=True),
                  "valid": build_dataset(manifest[manifest["split"] == "valid"], cfg, train=False)},
        dataset_config=dataset_config(),
    )


def fit(cfg: Config, *, log: Callable[[str], None] = print, address: str | None = None) -> dict:
    """Train `cfg` on Ray Train, evaluate the best checkpoint on test, track in MLflow; returns a summary."""
    from defakenet import tracking

    cfg, manifest = load_run_inputs(cfg, log, prefix="train")
    run_name = cfg.tracking.run_name
    home = default_home(cfg)
    out = home / "runs" / run_name

    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri, home)
    init_ray(cfg, address)  # first: --gpu without a GPU is a one-line error, not a FAILED MLflow run
    tracker = tracking.Tracker(tracking_uri).start(cfg.tracking.experiment, run_name, tags={"kind": "train"})
    with tracker:  # FINISHED on success, FAILED on an error, KILLED on Ctrl-C
        tracker.log_config(cfg)
        model_probe = build_model(cfg.replace(**{"model.weights": ""}))
        trainable = count_parameters(model_probe, trainable_only=True)
        m = cfg.model
        net = "ResNet50V2" if m.stages == 4 else f"ResNet50V2 conv2-conv{m.stages + 1}"
        log(f"run {run_name}: {net} DeFakeNet, input {cfg.data.input_policy} {cfg.data.image_size} px, filter "
            f"{m.input_filter}, freeze_depth {m.freeze_depth}, {trainable:,} trainable "
            f"of {count_parameters(model_probe):,} parameters, {cfg.resources.workers} workers "
            f"({'GPU' if cfg.resources.use_gpu else 'CPU'}); MLflow {tracking_uri} run {tracker.run_id}")
        tracker.log_system_info(_system_info(cfg, trainable))
        trainer = make_trainer(cfg, manifest, callbacks=[epoch_logger(tracking_uri, tracker.run_id)],
                               mlflow_run_id=tracker.run_id)
        result = fit_trainer(trainer)
        best = result.get_best_checkpoint(SCORE, "max")
        if best is None:
            raise RuntimeError(f"run {run_name} reported no checkpoint")
        with best.as_directory() as d:
            summary = finish(cfg, manifest, Path(d), out, tracker=tracker, epochs=epoch_history(result, tracker.run_id),
                             log=log)
        summary["storage"], summary["tracking_uri"] = result.path, tracking_uri
        return summary


def _export(cfg: Config, manifest, model_dir: Path, log: Callable[[str], None]) -> dict:
    """The ONNX graphs of the final model (export.onnx, export.int8). int8 that the guard refuses, or that cannot
    be made, leaves the fp32 graph alone: one line says why, and the run goes on."""
    from defakenet.export import export_model

    try:
        return export_model(model_dir, int8=cfg.export.int8, manifest=manifest,
                            max_auc_drop=cfg.export.int8_max_auc_drop,
                            calibration_images=cfg.export.calibration_images, log=log)
    except UserError as e:
        log(f"onnx: {e}; the model is saved without that graph")
        return {}


def finish(cfg: Config, manifest, best_dir: Path, out: Path, *, tracker=None, epochs: list[dict] | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Best checkpoint → threshold on valid → test report → model directory → MLflow model (+ registry).

    `epochs`: the per-epoch metrics the tracker's run should hold (`epoch_history`); those it lacks are logged.
    A tracking server that does not answer gets `tracking.wait_for_server_s` to come back; after that, or when it
    stops answering while the model is logged, TrackingServerDown says where the saved model is and how to log it.
    """
    from defakenet.evaluate import score_rows
    from defakenet.report import write_report

    best = load_model(best_dir)
    epoch = best.meta["epoch"]
    labels, scores = score_rows(best_dir, manifest[manifest["split"] == "valid"], use_gpu=cfg.resources.use_gpu)
    threshold = choose_threshold(labels, scores, method=cfg.train.threshold_method, target_fpr=cfg.train.target_fpr)
    val_metrics = compute_metrics(labels, scores, threshold=threshold)
    summary = {"run_name": cfg.tracking.run_name, "best_epoch": epoch, "threshold": threshold, "val": val_metrics}
    test_rows = manifest[manifest["split"] == "test"]
    if len(test_rows) and test_rows["label"].nunique() == 2:
        t_labels, t_scores = score_rows(best_dir, test_rows, use_gpu=cfg.resources.use_gpu)
        paths = write_report(out / "report", t_labels, t_scores, threshold,
                             title=f"defakenet test split ({cfg.data.root})",
                             extra={"split": "test", "best_epoch": epoch, "data": cfg.data.root,
                                    "run": cfg.tracking.run_name})
        summary["test"] = compute_metrics(t_labels, t_scores, threshold=threshold)
        summary["report"] = str(paths["markdown"])
        log(f"test: accuracy {summary['test']['accuracy']:.4f}  roc_auc {summary['test']['roc_auc']:.4f}  "
            f"threshold {threshold:.4f} (chosen on valid by {cfg.train.threshold_method}, best epoch {epoch})")
    else:
        log("test: split 'test' is empty or single-class; no test evaluation")
    meta = {"threshold": threshold, "best_epoch": epoch, "val_metrics": val_metrics,
            "test_metrics": summary.get("test", {})}
    model_dir = save_model(out / "model", best.model, cfg, meta)
    summary["model_dir"] = str(model_dir)
    if cfg.export.onnx or cfg.export.int8:
        summary["onnx"] = _export(cfg, manifest, model_dir, log)
    if tracker is not None:
        from defakenet import tracking

        uri, wait_s = tracker.tracking_uri, cfg.tracking.wait_for_server_s
        if not tracking.wait_for_server(uri, wait_s, what="to log the model", log=log):
            raise TrackingServerDown(_not_logged(cfg, uri, model_dir, f"did not answer within {wait_s:g} s"))
        try:
            if epochs:
                filled = tracking.log_missing_metrics(tracking.client(uri), tracker.run_id, epochs)
                if filled:
                    log(f"mlflow: logged epoch(s) {', '.join(map(str, filled))}, which the run lacked")
            # best_val_*: the best epoch on valid at the chosen threshold (val_* are the per-epoch curves)
            final = {f"best_val_{k}": v for k, v in val_metrics.items() if isinstance(v, (int, float))}
            final |= {f"test_{k}": v for k, v in summary.get("test", {}).items() if isinstance(v, (int, float))}
            tracker.log_metrics(final)
            if "report" in summary:
                tracker.log_artifacts(out / "report", "report")
            info = tracker.log_model(model_dir, registered_model_name=cfg.tracking.register or None)
        except Exception:
            if tracking.server_answers(uri):
                raise
            raise TrackingServerDown(_not_logged(cfg, uri, model_dir, "stopped answering while the model was logged")
                                     ) from None
        summary["mlflow_run_id"], summary["model_uri"] = tracker.run_id, info["model_uri"]
        if info.get("version") is not None:
            summary["registered"] = info["registered_model_uri"]
            log(f"registered {info['registered_model_uri']}")
            if "test" in summary:  # the promotion gate: champion or challenger (defakenet.registry)
                from defakenet.registry import gate
                from defakenet.suite import load_suite

                suite = load_suite(cfg.promote.suite) if cfg.promote.suite else None
                decision = gate(cfg.tracking.register, info["version"], tracking_uri=tracker.tracking_uri,
                                auc_margin=cfg.promote.auc_margin, max_accuracy_drop=cfg.promote.max_accuracy_drop,
                                suite=suite, max_set_auc_drop=cfg.promote.max_set_auc_drop,
                                use_gpu=cfg.resources.use_gpu, log=log)
                summary["alias"] = decision["decision"]
                log(f"registry: {decision['line']}")
            else:
                log(f"registry: no test metrics, so no alias for {info['registered_model_uri']} "
                    f"(promote it with `defakenet registry promote {info['version']}`)")
    return summary


def _not_logged(cfg: Config, tracking_uri: str, model_dir: Path, why: str) -> str:
    """The one line of a run whose tracking server is gone at the end: what was kept, what not, what to do."""
    from defakenet import tracking

    what, does = ("logged or registered", "logs and registers") if cfg.tracking.register else ("logged", "logs")
    return (f"mlflow: {tracking._redact(tracking_uri)} {why}: the model is saved in {model_dir} but was NOT {what}; "
            f"once the server is back, rerun the same command with --run-name {cfg.tracking.run_name}: it resumes "
            f"from the saved checkpoints without training again and {does} the model")


def fit_trainer(trainer: TorchTrainer):
    """trainer.fit(); a run that failed on a bad image raises `data_error_behind` it, the user's mistake in one line."""
    import ray.train

    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        user_error = data_error_behind(e)
        if user_error is None:
            raise
        raise user_error from None


def data_error_behind(e: BaseException) -> DataError | None:
    """A failed run's DataError (a bad image met by a worker, which Ray Train retried up to max_failures times), as
    the user's mistake it is: one line naming the file, not Ray's worker tracebacks."""
    from defakenet.data.pipeline import find_data_error

    for failure in [*getattr(e, "worker_failures", {}).values(), getattr(e, "controller_failure", None)]:
        cause = find_data_error(failure) if failure is not None else None
        if cause is not None:
            return DataError(f"training stopped: {first_line(cause)} (`defakenet data inspect ROOT` lists every "
                             "unreadable image)")
    return None


def _system_info(cfg: Config, trainable: int) -> dict:
    import ray

    return {"ray_version": ray.__version__, "torch_version": torch.__version__, "python": platform.python_version(),
            "hostname": platform.node(), "workers": cfg.resources.workers, "use_gpu": cfg.resources.use_gpu,
            "cluster_gpus": int(ray.cluster_resources().get("GPU", 0)),
            "cluster_cpus": int(ray.cluster_resources().get("CPU", 0)), "trainable_parameters": trainable}
