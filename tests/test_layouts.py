"""Dataset layouts -> manifest, and the seeded hash split."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from defakenet.data.layouts import COLUMNS, detect_layout, read_manifest
from defakenet.data.splits import assign_split, hash_split, validate_ratios
from defakenet.errors import ConfigError, DataError


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()  # layout tests never decode: one tiny image's bytes serve every file


def touch(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(PNG)


def esc(path: Path) -> str:
    return re.escape(str(path))


def by_rel(df: pd.DataFrame) -> dict[str, tuple[int, str]]:
    return {r.relpath: (r.label, r.split) for r in df.itertuples()}


# ---- split folders


def test_split_folders_with_val_alias_nested_classes_and_any_case_extensions(tmp_path):
    touch(
        tmp_path,
        "train/real/a.png", "train/fake/gen/b.JPG",
        "val/real/ffhq/0001/c.Png", "val/fake/d.jpeg",
        "test/Real/e.jpg", "test/fake/f.webp",
    )
    (tmp_path / "train/real/notes.txt").write_text("x")
    (tmp_path / "train/fake/.DS_Store").write_bytes(b"\0")
    df = read_manifest(tmp_path)
    assert list(df.columns) == COLUMNS
    assert by_rel(df) == {
        "train/real/a.png": (0, "train"),
        "train/fake/gen/b.JPG": (1, "train"),
        "val/real/ffhq/0001/c.Png": (0, "valid"),
        "val/fake/d.jpeg": (1, "valid"),
        "test/Real/e.jpg": (0, "test"),
        "test/fake/f.webp": (1, "test"),
    }
    assert df["split"].tolist() == ["train", "train", "valid", "valid", "test", "test"]
    assert df["relpath"].tolist()[:2] == ["train/fake/gen/b.JPG", "train/real/a.png"]
    assert (df["source"] == "split-folders").all()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert df["label"].dtype == np.int64
    assert df.attrs["skipped"] == 2
    assert detect_layout(tmp_path) == "split-folders"


def test_split_folders_without_valid_is_noted(tmp_path):
    touch(tmp_path, "train/real/a.png", "train/fake/b.png", "test/real/c.png", "test/fake/d.png", ".cache/real/x.png")
    df = read_manifest(tmp_path)
    assert sorted(set(df["split"])) == ["test", "train"]
    assert any(n.startswith("no valid split folder") for n in df.attrs["notes"])


# ---- flat


@pytest.mark.parametrize("real, fake", [("real", "fake"), ("0_real", "1_fake"), ("training_real", "training_fake")])
def test_flat_layouts_hash_split(tmp_path, real, fake):
    touch(tmp_path, *[f"{real}/r{i}.jpg" for i in range(20)], *[f"{fake}/f{i}.png" for i in range(20)])
    df = read_manifest(tmp_path, ratios=(0.5, 0.25, 0.25), seed=3)
    assert detect_layout(tmp_path) == "flat" and (df["source"] == "flat").all()
    assert len(df) == 40
    for rel, (label, split) in by_rel(df).items():
        assert label == (1 if rel.startswith(fake + "/") else 0)
        assert split == assign_split(rel, (0.5, 0.25, 0.25), 3)
    assert set(df["split"]) == {"train", "valid", "test"}
    assert any("seeded hash" in n for n in df.attrs["notes"])


# ---- kaggle 140k


def _write_140k(csv_dir: Path, image_dir: Path, index_col: bool = True) -> None:
    # kaggle 140k uses label 1 = real
    for split in ("train", "valid", "test"):
        rows = []
        for cls, label in (("real", 1), ("fake", 0)):
            for i in range(3):
                rel = f"{split}/{cls}/{split[0]}{cls[0]}{i}.jpg"
                touch(image_dir, rel)
                rows.append({"original_path": f"/orig/{i}.jpg", "id": str(i), "label": label, "label_str": cls,
                             "path": rel})
        pd.DataFrame(rows).to_csv(csv_dir / f"{split}.csv", index=index_col)


@pytest.mark.parametrize("images", ["real-vs-fake", ".", "real_vs_fake/real-vs-fake"])
def test_kaggle_140k_maps_label_1_real_to_fake_0(tmp_path, images):
    root = tmp_path / "real_vs_fake"
    root.mkdir()
    _write_140k(root, root / images)
    df = read_manifest(root)
    assert detect_layout(root) == "kaggle-140k-csv" and (df["source"] == "kaggle-140k-csv").all()
    prefix = "" if images == "." else images + "/"
    got = by_rel(df)
    assert got[prefix + "train/real/tr0.jpg"] == (0, "train")
    assert got[prefix + "train/fake/tf2.jpg"] == (1, "train")
    assert got[prefix + "valid/fake/vf1.jpg"] == (1, "valid")
    assert got[prefix + "test/real/tr1.jpg"] == (0, "test")
    assert df.groupby(["split", "label"]).size().tolist() == [3] * 6


def test_kaggle_140k_label_str_disagreement(tmp_path):
    _write_140k(tmp_path, tmp_path / "real-vs-fake", index_col=False)
    csv = tmp_path / "valid.csv"
    df = pd.read_csv(csv)
    df.loc[0, "label_str"] = "fake" if df.loc[0, "label"] == 1 else "real"
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"valid\.csv.*disagree on 1 row"):
        read_manifest(tmp_path)


# ---- rvf10k


def _write_rvf10k(root: Path, images: Path, with_path: bool) -> None:
    for split, n in (("train", 40), ("valid", 6)):
        rows = []
        for cls, label in (("real", 1), ("fake", 0)):
            for i in range(n):
                stem = f"{i:05d}" if cls == "real" else f"F{i:04X}"
                touch(images, f"{split}/{cls}/{stem}.jpg")
                row = {"id": stem, "label": label, "label_str": cls}
                if with_path:
                    row["path"] = f"/kaggle/input/rvf10k/rvf10k/{split}/{cls}/{stem}.jpg"
                rows.append(row)
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)


@pytest.mark.parametrize("images, with_path", [("rvf10k", False), (".", False), (".", True)])
def test_rvf10k_by_stem_or_path_with_carved_test(tmp_path, images, with_path):
    _write_rvf10k(tmp_path, tmp_path / images, with_path)
    df = read_manifest(tmp_path, ratios=(0.6, 0.2, 0.2), seed=1)
    assert detect_layout(tmp_path) == "rvf10k-csv" and (df["source"] == "rvf10k-csv").all()
    prefix = "" if images == "." else images + "/"
    got = by_rel(df)
    assert len(df) == 92
    # leading zeros survive (ids read as text), label 1 = real in the csv -> 0
    assert got[prefix + "valid/real/00003.jpg"] == (0, "valid")
    assert got[prefix + "valid/fake/F0003.jpg"] == (1, "valid")
    train_rows = {rel: v for rel, v in got.items() if rel.startswith(prefix + "train/")}
    for rel, (label, split) in train_rows.items():
        assert split == assign_split(rel, (0.8, 0.0, 0.2), 1)
    n_test = sum(s == "test" for _, s in train_rows.values())
    assert 0 < n_test < 40
    assert (df[df["relpath"].str.startswith(prefix + "valid/")]["split"] == "valid").all()
    assert any(f"carved {n_test} of 80" in n for n in df.attrs["notes"])


def test_rvf10k_missing_files_are_counted(tmp_path):
    _write_rvf10k(tmp_path, tmp_path / "rvf10k", with_path=False)
    for stem in ("00001", "00002"):
        (tmp_path / f"rvf10k/train/real/{stem}.jpg").unlink()
    with pytest.raises(DataError, match=r"train\.csv: 2 of 80 row\(s\) point at missing files.*00001"):
        read_manifest(tmp_path)


# ---- splits


def test_split_is_stable_when_files_are_added(tmp_path):
    touch(tmp_path, *[f"real/{i:04d}.png" for i in range(100)], *[f"fake/{i:04d}.png" for i in range(100)])
    before = by_rel(read_manifest(tmp_path))
    touch(tmp_path, *[f"real/new{i}.png" for i in range(25)], *[f"fake/new{i}.png" for i in range(25)])
    after = by_rel(read_manifest(tmp_path))
    assert len(before) == 200 and len(after) == 250
    assert all(after[rel] == v for rel, v in before.items())


def test_split_is_stratified_per_class():
    ratios = (0.7, 0.15, 0.15)
    for cls in ("real", "fake"):
        splits = hash_split([f"{cls}/{i:05d}.jpg" for i in range(1000)], ratios, seed=0)
        for name, r in zip(("train", "valid", "test"), ratios):
            assert abs((splits == name).mean() - r) <= 0.05, (cls, name)


def test_seeds_give_different_splits_and_scalar_matches_vector():
    names = [f"fake/{i}.png" for i in range(300)]
    a, b = hash_split(names, seed=0), hash_split(names, seed=1)
    assert (a != b).sum() > 50
    assert list(a) == [assign_split(n, seed=0) for n in names]
    assert set(hash_split(names, (1.0, 0.0, 0.0))) == {"train"}


@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.7, 0.2, 0.2), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1), ("a", 0, 0)])
def test_bad_ratios(ratios, tmp_path):
    with pytest.raises(ConfigError, match="split ratios"):
        validate_ratios(ratios)
    with pytest.raises(ConfigError):
        read_manifest(tmp_path, ratios=ratios)


# ---- URIs: the same readers over a pyarrow filesystem (file:// here; s3://, gs://, hdfs:// alike)


def _layouts(root: Path) -> dict[str, Path]:
    touch(root / "split", "train/real/a b#1.png", "train/fake/gen/b.JPG", "val/real/ffhq/c.png", "val/fake/d.jpeg",
          "test/Real/e.jpg", "test/fake/f.webp")
    (root / "split/train/real/notes.txt").write_text("x")
    touch(root / "flat", *[f"0_real/r{i}.png" for i in range(6)], *[f"1_fake/sub/f{i}.png" for i in range(6)])
    (root / "140k").mkdir()
    _write_140k(root / "140k", root / "140k" / "real-vs-fake")
    (root / "rvf10k").mkdir()
    _write_rvf10k(root / "rvf10k", root / "rvf10k" / "rvf10k", with_path=False)
    return {name: root / name for name in ("split", "flat", "140k", "rvf10k")}


def test_file_uri_roots_read_like_paths_in_every_layout(tmp_path):
    for name, root in _layouts(tmp_path / "sets with space").items():
        local = read_manifest(root)
        remote = read_manifest(root.as_uri())
        assert detect_layout(root.as_uri()) == local["source"].iloc[0], name
        assert remote["path"].tolist() == [Path(p).as_uri() for p in local["path"]], name  # percent-encoded
        pd.testing.assert_frame_equal(remote.drop(columns="path"), local.drop(columns="path"))
        assert remote.attrs["root"] == root.as_uri() and remote.attrs["skipped"] == local.attrs["skipped"], name
        assert [n.replace(root.as_uri(), str(root)) for n in remote.attrs["notes"]] == local.attrs["notes"], name


def test_uri_root_errors_name_the_uri(tmp_path):
    touch(tmp_path, "real/a.png")
    with pytest.raises(DataError, match=rf"^{esc((tmp_path / 'nope').as_uri())}: no such directory; expected a "
                                        r"dataset folder \(layouts: "):
        read_manifest((tmp_path / "nope").as_uri())
    with pytest.raises(DataError, match=rf"^{esc((tmp_path / 'real/a.png').as_uri())}: is a file"):
        read_manifest((tmp_path / "real" / "a.png").as_uri())
    with pytest.raises(DataError, match=r"takes no \?query"):
        read_manifest("s3://bucket/faces?region=eu-west-1")
    with pytest.raises(DataError, match=rf"^{esc(tmp_path.as_uri())}: no fake/ folder; expected real/ and fake/"):
        read_manifest(tmp_path.as_uri())


# ---- errors


def test_error_root_missing_or_file(tmp_path):
    with pytest.raises(DataError, match=f"{esc(tmp_path / 'nope')}: no such directory"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match=f"{esc(tmp_path / 'f.txt')}: is a file"):
        read_manifest(tmp_path / "f.txt")


def test_error_no_layout_lists_what_was_found(tmp_path):
    touch(tmp_path, "images/a.png", "sub/real/a.png", "sub/fake/b.png")
    with pytest.raises(DataError, match=rf"{esc(tmp_path)}: no recognised dataset layout; found images/, sub/.*flat.*"
                                        rf"did you mean {esc(tmp_path / 'sub')}"):
        detect_layout(tmp_path)


def test_error_empty_class_folder(tmp_path):
    touch(tmp_path, "real/a.png")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake/readme.txt").write_text("x")
    with pytest.raises(DataError, match=rf"{esc(tmp_path / 'fake')} has no images \(\.jpg \.jpeg \.png \.webp \.bmp"):
        read_manifest(tmp_path)
    df = read_manifest(tmp_path, allow_empty=True)
    assert [e["class"] for e in df.attrs["empty_classes"]] == ["fake"]


def test_error_split_folder_missing_a_class(tmp_path):
    touch(tmp_path, "train/real/a.png", "train/fake/b.png", "valid/real/c.png")
    with pytest.raises(DataError, match=rf"{esc(tmp_path / 'valid')}: no fake/ folder"):
        read_manifest(tmp_path)


def test_error_ambiguous_split_folders(tmp_path):
    touch(tmp_path, "train/real/a.png", "train/fake/b.png", "val/real/c.png", "valid/fake/d.png")
    with pytest.raises(DataError, match=rf"{esc(tmp_path)}: both val/ and valid/"):
        read_manifest(tmp_path)


def test_error_csv_missing_columns(tmp_path):
    _write_140k(tmp_path, tmp_path / "real-vs-fake")
    pd.DataFrame({"id": ["1"], "label": [1]}).to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(DataError, match=rf"{esc(tmp_path / 'test.csv')}: missing required column\(s\) path"):
        read_manifest(tmp_path)


def test_error_csv_rows_point_at_missing_files(tmp_path):
    _write_140k(tmp_path, tmp_path / "real-vs-fake")
    (tmp_path / "real-vs-fake/test/fake/tf0.jpg").unlink()
    with pytest.raises(DataError, match=rf"{esc(tmp_path / 'test.csv')}: 1 of 6 row\(s\) .*test/fake/tf0\.jpg"):
        read_manifest(tmp_path)


def test_error_csv_labels_outside_0_1(tmp_path):
    _write_140k(tmp_path, tmp_path / "real-vs-fake", index_col=False)
    df = pd.read_csv(tmp_path / "train.csv")
    df.loc[4, "label"] = 2
    df.to_csv(tmp_path / "train.csv", index=False)
    msg = rf"{esc(tmp_path / 'train.csv')}: 1 label\(s\) outside \{{0, 1\}}, e.g. line 6"
    with pytest.raises(DataError, match=msg):
        read_manifest(tmp_path)
