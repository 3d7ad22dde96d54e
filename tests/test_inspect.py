"""Dataset inspection: counts, sizes, duplicates, leakage, unreadable files, empty classes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defakenet.data.inspect import InspectReport, inspect_dataset
from defakenet.data.splits import assign_split
from defakenet.errors import ConfigError

FILES = [f"{split}/{cls}/{i}.png" for split in ("train", "valid", "test") for cls in ("real", "fake") for i in range(2)]


def noise(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


@pytest.fixture
def clean(tmp_path) -> Path:
    """Split folders, 2 distinct 16 px PNGs per split x class."""
    for i, rel in enumerate(FILES):
        write(tmp_path, rel, encode(noise(i), "PNG"))
    return tmp_path


def inspect(root: Path) -> InspectReport:
    return inspect_dataset(root, progress=False, workers=2)


def test_clean_dataset_has_no_problems(clean):
    report = inspect(clean)
    assert report.problems == []
    assert report.layout == "split-folders" and report.n_images == 12
    assert report.counts == {s: {"real": 2, "fake": 2, "total": 4} for s in ("train", "valid", "test")}
    assert report.balance == {"train": 0.5, "valid": 0.5, "test": 0.5}
    assert report.sizes == {"16x16": 12} and report.formats == {"PNG": 12}
    assert report.duplicates == [] and report.unreadable == []
    d = json.loads(json.dumps(report.to_dict()))
    assert d["counts"]["valid"]["fake"] == 2 and d["problems"] == []
    text = report.to_text()
    assert "split" in text and "fake share" in text and "no problems found" in text
    assert "16x16: 12" in text and "PNG: 12" in text


def test_duplicate_within_a_split_is_not_leakage(clean):
    write(clean, "train/real/copy.png", (clean / "train/real/0.png").read_bytes())
    report = inspect(clean)
    [group] = report.duplicates
    assert group["kind"] == "exact" and group["splits"] == ["train"] and group["classes"] == ["real"]
    assert {f["relpath"] for f in group["files"]} == {"train/real/0.png", "train/real/copy.png"}
    assert report.leakage == [] and report.problems == []
    assert "duplicates: 1 group (1 identical bytes, 0 identical pixels only), 0 across splits" in report.to_text()


def test_cross_split_leakage_same_bytes(clean):
    write(clean, "test/fake/leak.png", (clean / "train/fake/1.png").read_bytes())
    report = inspect(clean)
    [group] = report.leakage
    assert group["kind"] == "exact" and group["splits"] == ["train", "test"]
    [problem] = report.problems
    assert problem.startswith("leakage: identical bytes across train/test")
    assert "train/fake/1.png" in problem and "test/fake/leak.png" in problem


def test_cross_split_leakage_same_pixels_different_encoding(clean):
    arr = noise(100)
    write(clean, "train/real/face.png", encode(arr, "PNG"))
    write(clean, "valid/real/face.bmp", encode(arr, "BMP"))
    report = inspect(clean)
    [group] = report.leakage
    assert group["kind"] == "pixel" and group["splits"] == ["train", "valid"]
    assert {f["relpath"] for f in group["files"]} == {"train/real/face.png", "valid/real/face.bmp"}
    assert report.formats == {"PNG": 13, "BMP": 1}
    assert report.problems[0].startswith("leakage: identical pixels across train/valid")


def test_label_conflict_same_bytes_real_and_fake(clean):
    write(clean, "train/fake/dup.png", (clean / "train/real/1.png").read_bytes())
    report = inspect(clean)
    [group] = report.label_conflicts
    assert group["classes"] == ["fake", "real"]
    [problem] = report.problems
    assert problem.startswith("label conflict: identical bytes labelled both real and fake")


def test_unreadable_and_truncated_files_are_named(clean):
    write(clean, "valid/real/notes.jpg", b"this is a text file, not a JPEG\n" * 4)
    jpeg = encode(noise(7, 32), "JPEG", quality=95)
    write(clean, "test/fake/cut.jpg", jpeg[: len(jpeg) * 2 // 3])
    report = inspect(clean)
    reasons = {u["relpath"]: u["reason"] for u in report.unreadable}
    assert set(reasons) == {"valid/real/notes.jpg", "test/fake/cut.jpg"}
    assert "not an image" in reasons["valid/real/notes.jpg"]
    assert "truncated" in reasons["test/fake/cut.jpg"]
    problems = report.problems
    assert any(p.startswith("unreadable: valid/real/notes.jpg") for p in problems)
    assert any(p.startswith("unreadable: test/fake/cut.jpg") for p in problems)
    assert report.n_images == 14 and report.sizes == {"16x16": 12}
    assert "unreadable: 2" in report.to_text()


def test_uri_root_reads_every_file_through_its_filesystem(clean):
    """A file:// root goes through pyarrow (as s3:// would): the same findings as the folder, the same reasons."""
    write(clean, "valid/real/notes.jpg", b"this is a text file, not a JPEG\n" * 4)
    write(clean, "train/real/copy.png", (clean / "train/real/0.png").read_bytes())
    local, remote = inspect(clean), inspect_dataset(clean.as_uri(), progress=False, workers=2)
    assert remote.root == clean.as_uri() and remote.n_images == local.n_images == 14
    assert remote.counts == local.counts and remote.sizes == local.sizes and remote.formats == local.formats
    assert remote.unreadable == local.unreadable and remote.duplicates == local.duplicates
    assert remote.problems == local.problems == [p for p in local.problems if "notes.jpg" in p]


def test_empty_class_folder_is_reported(clean):
    for p in (clean / "test/fake").iterdir():
        p.unlink()
    (clean / "test/fake/.DS_Store").write_bytes(b"\0")
    report = inspect(clean)
    [empty] = report.empty_classes
    assert empty["split"] == "test" and empty["class"] == "fake"
    [problem] = report.problems
    assert problem.startswith("empty class: ") and str(clean / "test/fake") in problem
    assert report.counts["test"] == {"real": 2, "fake": 0, "total": 2}
    assert report.skipped == 1


def test_split_without_one_class_is_reported(tmp_path):
    # flat and tiny: one real and one fake that the hash puts in different splits
    real_split = assign_split("real/a.png")
    fake = next(f"fake/{i}.png" for i in range(100) if assign_split(f"fake/{i}.png") != real_split)
    write(tmp_path, "real/a.png", encode(noise(1), "PNG"))
    write(tmp_path, fake, encode(noise(2), "PNG"))
    report = inspect(tmp_path)
    assert report.layout == "flat"
    assert f"empty class: the {real_split} split has no fake images (1 real)" in report.problems
    assert len(report.problems) == 2


def test_bad_workers(clean):
    with pytest.raises(ConfigError, match="workers"):
        inspect_dataset(clean, workers=0)
