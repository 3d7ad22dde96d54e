"""The Ray Data input pipeline on a real local Ray instance: contents, shuffling, augmentation, errors, Ray Train."""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from ray.data import DataContext, ExecutionResources  # noqa: E402

from defakenet.config import Config  # noqa: E402
from defakenet.data.augment import Preprocess  # noqa: E402
from defakenet.data.image import decode_rgb  # noqa: E402
from defakenet.data.layouts import read_manifest  # noqa: E402
from defakenet.data.pipeline import build_dataset, dataset_config, iter_batches, steps_per_epoch  # noqa: E402
from defakenet.data.degrade import degrade  # noqa: E402
from defakenet.data.splits import hash_split, subsample_train  # noqa: E402
from defakenet.data.synth import make_dataset  # noqa: E402
from defakenet.errors import ConfigError, DataError  # noqa: E402

CFG = Config.from_dict({"data": {"image_size": 32}})
# geometry only: a solid-colour image keeps its exact colour, so it can be recognised after augmentation
GEOMETRY_ONLY = Config.from_dict(
    {"data": {"image_size": 32}, "augment": {"jitter_p": 0, "jpeg_p": 0, "blur_p": 0, "noise_p": 0}}
)


@pytest.fixture(scope="module")
def ray_local(ray_session):
    """The session's Ray instance (conftest)."""
    yield ray_session


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return read_manifest(make_dataset(tmp_path_factory.mktemp("pipeline"), n=12, size=32))


@pytest.fixture(scope="module")
def solid_rows(tmp_path_factory):
    """16 solid grey 32 px images, grey level 10 + 15 i for row i, alternating labels."""
    root = tmp_path_factory.mktemp("solid")
    rows = []
    for i in range(16):
        path = root / f"{i:02d}.png"
        Image.fromarray(np.full((32, 32, 3), 10 + 15 * i, dtype=np.uint8)).save(path)
        rows.append({"path": str(path), "relpath": path.name, "label": i % 2, "split": "train"})
    return pd.DataFrame(rows)


def _split(manifest, split):
    return manifest[manifest["split"] == split]


def _collect(batches):
    xs, ys = zip(*batches)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def _row_ids(x):
    # solid image i normalises ("tf" mode) to (10 + 15 i) / 127.5 - 1 everywhere
    return np.rint(((x.mean(axis=(1, 2, 3)) + 1) * 127.5 - 10) / 15).astype(int).tolist()


def test_train_batches_shapes_range_and_labels(ray_local, manifest):
    rows = _split(manifest, "train")
    batches = list(iter_batches(build_dataset(rows, CFG, train=True), 4, train=True))
    assert len(batches) == steps_per_epoch(len(rows), 4) == len(rows) // 4  # last incomplete batch dropped
    for x, y in batches:
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
        assert y.shape == (4,) and y.dtype == torch.float32
        assert torch.isfinite(x).all() and x.min() >= -1.0 and x.max() <= 1.0  # Keras "tf" range
        assert set(y.tolist()) <= {0.0, 1.0}
    fakes = sum(float(y.sum()) for _, y in batches)
    assert int(rows["label"].sum()) - (len(rows) - 4 * len(batches)) <= fakes <= int(rows["label"].sum())


def test_eval_matches_direct_preprocessing_in_manifest_order(ray_local, manifest):
    rows = _split(manifest, "train")
    x, y = _collect(iter_batches(build_dataset(rows, CFG, train=False), 5, train=False))
    pre = Preprocess(CFG.data, None, CFG.model.preprocessing)
    expected = np.stack([pre(decode_rgb(Path(p).read_bytes(), name=p)) for p in rows["path"]])
    assert x.shape == expected.shape == (len(rows), 3, 32, 32)
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(y, rows["label"].to_numpy(dtype=np.float32))


def test_degrade_column_is_applied_before_preprocessing_in_manifest_order(ray_local, manifest):
    from defakenet.data.pipeline import _path_key

    rows = _split(manifest, "train").copy()
    cycle = ["jpeg:75", None, "noise:0.1", "resize:0.5+jpeg:75", "blur:1.0", "none"]
    specs = [cycle[i % len(cycle)] for i in range(len(rows))]
    rows["degrade"] = specs  # None becomes a missing value: no degradation
    x, y = _collect(iter_batches(build_dataset(rows, CFG, train=False), 5, train=False))
    pre = Preprocess(CFG.data, None, CFG.model.preprocessing)
    plain, expected = [], []
    for p, rel, spec in zip(rows["path"], rows["relpath"], specs):
        rgb = decode_rgb(Path(p).read_bytes(), name=p)
        plain.append(pre(rgb))
        expected.append(pre(degrade(rgb, spec or "none", _path_key(rel))))
    assert x.shape == (len(rows), 3, 32, 32)
    np.testing.assert_allclose(x, np.stack(expected), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(y, rows["label"].to_numpy(dtype=np.float32))
    changed = [not np.allclose(a, b) for a, b in zip(x, plain)]
    assert changed == [spec not in (None, "none") for spec in specs]
    with pytest.raises(ConfigError, match="unknown degradation 'jpg:75'"):
        build_dataset(rows.assign(degrade="jpg:75"), CFG, train=False)


def test_file_uris_read_like_paths(ray_local, manifest):
    rows = _split(manifest, "valid")
    uris = rows.assign(path=[Path(p).as_uri() for p in rows["path"]])
    x_path, _ = _collect(iter_batches(build_dataset(rows, CFG, train=False), 2, train=False))
    x_uri, y_uri = _collect(iter_batches(build_dataset(uris, CFG, train=False), 2, train=False))
    np.testing.assert_array_equal(x_uri, x_path)
    np.testing.assert_array_equal(y_uri, rows["label"].to_numpy(dtype=np.float32))


def test_eval_is_repeatable(ray_local, manifest):
    ds = build_dataset(_split(manifest, "valid"), CFG, train=False)
    x1, y1 = _collect(iter_batches(ds, 2, train=False))
    x2, y2 = _collect(iter_batches(ds, 2, train=False))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_train_order_changes_each_epoch(ray_local, solid_rows):
    ds = build_dataset(solid_rows, GEOMETRY_ONLY, train=True, seed=3)
    orders = []
    for _ in range(2):
        x, y = _collect(iter_batches(ds, 4, train=True))
        ids = _row_ids(x)
        assert len(set(ids)) == len(ids) == 16 and set(ids) <= set(range(16))
        assert y.tolist() == [i % 2 for i in ids]  # every label still sits with its image
        orders.append(ids)
    assert orders[0] != orders[1]
    assert orders[0] != list(range(16))


def test_train_augmentation_changes_each_epoch_from_a_seeded_base(ray_local, manifest):
    one = _split(manifest, "train").iloc[:1]
    ds = build_dataset(one, CFG, train=True, seed=7)
    first, _ = _collect(iter_batches(ds, 1, train=True))
    second, _ = _collect(iter_batches(ds, 1, train=True))
    again, _ = _collect(iter_batches(build_dataset(one, CFG, train=True, seed=7), 1, train=True))
    assert not np.allclose(first, second)  # a new augmentation each epoch
    np.testing.assert_array_equal(first, again)  # the same seed replays the same epochs


def test_non_image_file_fails_naming_it(ray_local, manifest, tmp_path):
    bad = tmp_path / "fake" / "notes.png"
    bad.parent.mkdir()
    bad.write_text("not an image")
    rows = _split(manifest, "valid").copy()
    rows.loc[rows.index[0], "path"] = str(bad)
    with pytest.raises(DataError) as e:
        list(iter_batches(build_dataset(rows, CFG, train=False), 2, train=False))
    assert str(e.value) == f"{bad}: not an image (expected JPEG, PNG, WebP, BMP or TIFF)"  # not Ray's retry advice


def test_missing_file_fails_naming_it(ray_local, manifest, tmp_path):
    rows = _split(manifest, "valid").copy()
    rows.loc[rows.index[-1], "path"] = str(tmp_path / "gone.png")
    with pytest.raises(DataError, match="gone.png: no such file"):
        list(iter_batches(build_dataset(rows, CFG, train=False), 2, train=False))


def test_batches_feed_engine_train_one_epoch(ray_local, manifest):
    from defakenet.engine import train_one_epoch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 1))

        def forward(self, x):
            return self.net(x).squeeze(-1)

    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    ds = build_dataset(_split(manifest, "train"), CFG, train=True)
    stats = train_one_epoch(model, iter_batches(ds, 4, train=True), opt, sched, device=torch.device("cpu"),
                            max_steps=1)
    assert stats["images"] == 4 and np.isfinite(stats["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_torch_trainer_workers_share_the_splits(ray_local, manifest, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def per_worker(config):
        import json

        import numpy as np
        import ray.train
        import torch.distributed as dist

        from defakenet.data.pipeline import gather_predictions, iter_batches

        shard = ray.train.get_dataset_shard("train")
        seen, sums = [], []
        for _ in range(2):  # each pass re-executes the pipeline: a new order and new augmentations
            xs = [x for x, _ in iter_batches(shard, 1, train=True)]
            seen.append(len(xs))
            sums.append(float(sum(x.sum() for x in xs)))
        labels = [y.numpy() for _, y in iter_batches(ray.train.get_dataset_shard("valid"), 2, train=False)]
        labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.float32)
        all_labels, _ = gather_predictions(labels, labels)
        counts = [None] * dist.get_world_size()
        dist.all_gather_object(counts, seen)
        if ray.train.get_context().get_world_rank() == 0:  # V2's Result.metrics is None without a checkpoint
            out = {"train_rows": counts, "train_sums": sums, "valid_total": len(all_labels),
                   "valid_fake": float(all_labels.sum())}
            with open(config["out"], "w") as f:
                json.dump(out, f)

    train, valid = _split(manifest, "train"), _split(manifest, "valid")
    out = tmp_path / "counts.json"
    trainer = TorchTrainer(
        per_worker,
        train_loop_config={"out": str(out)},
        # half a CPU per worker leaves one of the two CPUs for the decode tasks
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
        datasets={"train": build_dataset(train, CFG, train=True), "valid": build_dataset(valid, CFG, train=False)},
        dataset_config=dataset_config(),
        run_config=RunConfig(name="pipeline", storage_path=str(tmp_path)),
    )
    trainer.fit()
    metrics = json.loads(out.read_text())
    # train: an equal split, n // 2 rows each (DDP needs equal steps); valid: every row exactly once
    assert metrics["train_rows"] == [[len(train) // 2] * 2] * 2
    assert metrics["train_sums"][0] != metrics["train_sums"][1]  # epoch 2 is not a replay of epoch 1
    assert metrics["valid_total"] == len(valid)
    assert metrics["valid_fake"] == float(valid["label"].sum())


@pytest.mark.parametrize("split_eval", [True, False])
def test_ingest_options_carry_the_data_context_without_a_deprecation_warning(split_eval):
    ctx = DataContext.get_current()
    saved = ctx.execution_options
    ctx.execution_options = copy.deepcopy(saved)
    ctx.execution_options.resource_limits = ExecutionResources(cpu=3)
    ctx.execution_options.preserve_order = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Ray's own default_ingest_options warns on every run (exclude_resources)
            opts = dataset_config(split_eval=split_eval).default_ingest_options()
    finally:
        ctx.execution_options = saved
    assert opts.resource_limits.cpu == 3 and opts.preserve_order is True


# ---- the training subset (data.train_fraction)


def _fake_manifest(n=200, seed=0):
    relpaths = [f"{c}/{i:04d}.png" for c in ("real", "fake") for i in range(n)]
    return pd.DataFrame({"path": [f"/data/{r}" for r in relpaths], "relpath": relpaths,
                         "label": [int(r.startswith("fake")) for r in relpaths],
                         "split": hash_split(relpaths, seed=seed)})


def test_subsample_train_is_stratified_nested_and_leaves_valid_and_test(manifest):
    m = _fake_manifest()
    train = m[m["split"] == "train"]
    n = {label: int((train["label"] == label).sum()) for label in (0, 1)}
    subsets = {}
    for fraction in (0.25, 0.5):
        sub = subsample_train(m, fraction, seed=3)
        t = sub[sub["split"] == "train"]
        assert {label: int((t["label"] == label).sum()) for label in (0, 1)} == {
            label: round(fraction * n[label]) for label in (0, 1)}
        pd.testing.assert_frame_equal(sub[sub["split"] != "train"], m[m["split"] != "train"])
        assert list(sub.index) == sorted(sub.index)  # manifest order kept
        subsets[fraction] = set(t["relpath"])
    assert subsets[0.25] < subsets[0.5]
    assert set(subsample_train(m, 0.25, seed=3)["relpath"]) == set(subsample_train(m, 0.25, seed=3)["relpath"])
    other = subsample_train(m, 0.25, seed=4)
    assert set(other.loc[other["split"] == "train", "relpath"]) != subsets[0.25]
    assert subsample_train(m, 1.0) is m


def test_subsample_train_errors():
    m = _fake_manifest(n=20)
    with pytest.raises(DataError, match=r"data.train_fraction 0.01 keeps 0 of \d+ real, 0 of \d+ fake training"):
        subsample_train(m, 0.01)
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"must be in \(0, 1\]"):
            subsample_train(m, bad)


def test_run_inputs_use_the_subset_and_log_its_counts(synth_small):
    from defakenet.train import load_run_inputs

    lines = []
    cfg = Config.from_dict({"data": {"root": str(synth_small), "train_fraction": 0.5}})
    _, m = load_run_inputs(cfg, lines.append, prefix="t")
    full = read_manifest(synth_small)
    n_train = int((full["split"] == "train").sum())
    t = m[m["split"] == "train"]
    fake = int(t["label"].sum())
    assert len(t) == sum(round(0.5 * int((full[full["split"] == "train"]["label"] == c).sum())) for c in (0, 1))
    assert f"train {len(t)} of {n_train} ({fake} fake; data.train_fraction 0.5)" in lines[0]
    assert len(m[m["split"] == "valid"]) == len(full[full["split"] == "valid"])
