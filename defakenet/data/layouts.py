"""Dataset layouts as users download them, read into one manifest DataFrame.

ROOT is a local folder (or an NFS mount) or a URI of a pyarrow filesystem (s3://bucket/prefix, gs://, hdfs://,
file://), listed by `defakenet.data.storage`. Columns: path (absolute, or a URI under a URI root), relpath (posix,
relative to ROOT), label (1 = fake, 0 = real), split (train / valid / test), source (the layout id). Layouts are
detected in this order, first match wins:

1. "kaggle-140k-csv": ROOT/train.csv, valid.csv and test.csv (Kaggle "140k Real and Fake Faces"); images under
   ROOT/real-vs-fake/, ROOT/real_vs_fake/real-vs-fake/ or ROOT itself.
2. "rvf10k-csv": ROOT/train.csv and valid.csv, no test.csv (Kaggle RVF10K); images under ROOT/rvf10k/ or ROOT;
   test is carved out of train with the seeded hash rule.
3. "split-folders": ROOT/{train, valid|val|validation, test}/{real, fake}/... (class folders may be nested).
4. "flat": ROOT/{real, fake}/... (or 0_real/1_fake, training_real/training_fake), split by the seeded hash rule.

Both CSV datasets use 1 = real; labels are mapped to 1 = fake here and cross-checked against label_str.
Hidden files and non-image files are ignored and counted in df.attrs["skipped"]; df.attrs["notes"] says what
was assumed (carved splits, missing split folders).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from defakenet.data.image import IMAGE_EXTENSIONS, is_image_path
from defakenet.data.splits import DEFAULT_RATIOS, SPLITS, hash_split, validate_ratios
from defakenet.data.storage import LocalTree, UriTree, image_files, open_tree
from defakenet.errors import DataError

LAYOUTS = ("kaggle-140k-csv", "rvf10k-csv", "split-folders", "flat")
COLUMNS = ["path", "relpath", "label", "split", "source"]
CLASS_NAMES = {0: "real", 1: "fake"}
# folder name (lower-case) -> label, 1 = fake
CLASS_DIRS = {"real": 0, "fake": 1, "0_real": 0, "1_fake": 1, "training_real": 0, "training_fake": 1}
# folder name (lower-case) -> split
SPLIT_DIRS = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}

_EXT_ORDER = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_EXTS = " ".join([e for e in _EXT_ORDER if e in IMAGE_EXTENSIONS] + sorted(IMAGE_EXTENSIONS - set(_EXT_ORDER)))
_EXPECTED = (
    "split-folders (train/ valid/|val/ test/, each with real/ and fake/), flat (real/ and fake/, or 0_real/ 1_fake/,"
    " or training_real/ training_fake/), kaggle-140k-csv (train.csv valid.csv test.csv), rvf10k-csv (train.csv"
    " valid.csv)"
)


@dataclass
class _Scan:
    tree: LocalTree | UriTree
    allow_empty: bool
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    empty: list[dict] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.tree.root

    def empty_class(self, split: str, label: int, path: str, message: str) -> None:
        # an empty or missing class folder: an error, or a finding for inspection
        if not self.allow_empty:
            raise DataError(message)
        self.empty.append({"split": split, "class": CLASS_NAMES[label], "path": str(path), "reason": message})

    def images(self, folder: str) -> list[str]:
        """Image files under folder (recursive, symlinks followed once), as absolute paths (URIs under a URI)."""
        out, skipped = image_files(self.tree, folder, is_image_path)
        self.skipped += skipped
        return out

    def rel(self, path: str) -> str:
        return self.tree.rel(path)


def _root(root: str | os.PathLike) -> LocalTree | UriTree:
    return open_tree(root, f"a dataset folder (layouts: {', '.join(LAYOUTS)})")


def _named_dirs(tree: LocalTree | UriTree, folder: str, names: dict[str, object]) -> dict[object, str]:
    """Sub-folders whose lower-case name is in `names`, keyed by the mapped value; two for one value is an error."""
    found: dict[object, str] = {}
    for p, is_dir in tree.entries(folder):
        key = names.get(tree.name(p).lower())
        if key is None or not is_dir:
            continue
        if key in found:
            raise DataError(f"{folder}: both {tree.name(found[key])}/ and {tree.name(p)}/ found; expected one "
                            f"folder for {key}")
        found[key] = p
    return found


def _detect(tree: LocalTree | UriTree, r: str) -> str | None:
    files = {tree.name(p).lower() for p, is_dir in tree.entries(r) if not is_dir}
    if "train.csv" in files and "valid.csv" in files:
        return "kaggle-140k-csv" if "test.csv" in files else "rvf10k-csv"
    if _named_dirs(tree, r, SPLIT_DIRS):
        return "split-folders"
    if _named_dirs(tree, r, CLASS_DIRS):
        return "flat"
    return None


def detect_layout(root: str | os.PathLike | LocalTree | UriTree) -> str:
    """The layout id of ROOT (see the module docstring for the detection order); DataError when none matches."""
    tree = root if isinstance(root, (LocalTree, UriTree)) else _root(root)
    r = tree.root
    layout = _detect(tree, r)
    if layout is not None:
        return layout
    entries = tree.entries(r)
    shown = [tree.name(p) + ("/" if is_dir else "") for p, is_dir in entries[:10]]
    found = ", ".join(shown) + (f", ... (+{len(entries) - 10} more)" if len(entries) > 10 else "") or "nothing"
    hint = ""
    for p in (p for p, is_dir in entries if is_dir):
        try:
            if _detect(tree, p):
                hint = f"; did you mean {p}?"
                break
        except DataError:
            continue
    raise DataError(f"{r}: no recognised dataset layout; found {found}; expected one of: {_EXPECTED}{hint}")


def _read_split_folders(st: _Scan, ratios, seed) -> list[tuple]:
    splits = _named_dirs(st.tree, st.root, SPLIT_DIRS)
    for s in SPLITS:
        if s not in splits:
            st.notes.append(f"no {s} split folder under {st.root}: the {s} split is empty")
    st.notes.append("splits taken from the split folders; ratios and seed are not used")
    rows = []
    for split, folder in splits.items():
        rows += _read_classes(st, folder, split)
    return rows


def _read_classes(st: _Scan, folder: str, split: str) -> list[tuple]:
    classes = _named_dirs(st.tree, folder, CLASS_DIRS)
    rows = []
    for label, name in CLASS_NAMES.items():
        if label not in classes:
            msg = (f"{folder}: no {name}/ folder; expected real/ and fake/ "
                   "(or 0_real/ 1_fake/, or training_real/ training_fake/)")
            st.empty_class(split, label, st.tree.join(folder, name), msg)
            continue
        files = st.images(classes[label])
        if not files:
            st.empty_class(split, label, classes[label], f"{classes[label]} has no images ({_EXTS})")
        rows += [(p, st.rel(p), label, split) for p in files]
    return rows


def _read_flat(st: _Scan, ratios, seed) -> list[tuple]:
    rows = _read_classes(st, st.root, "all")
    splits = hash_split([r[1] for r in rows], ratios, seed)
    st.notes.append(f"no split folders: split by seeded hash of the relative path (ratios {ratios}, seed {seed})")
    return [(p, rel, label, s) for (p, rel, label, _), s in zip(rows, splits)]


def _read_csv(tree: LocalTree | UriTree, path: str, required: set[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(io.BytesIO(tree.read_bytes(path)), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse as CSV ({' '.join(str(e).split())})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = sorted(required - set(df.columns))
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)}; found {', '.join(df.columns)}")
    if df.empty:
        raise DataError(f"{path}: has no rows")
    return df


def _labels(df: pd.DataFrame, csv: str) -> np.ndarray:
    """CSV labels (1 = real) mapped to 1 = fake, cross-checked with label_str when present."""
    raw = pd.to_numeric(df["label"].str.strip(), errors="coerce")
    bad = np.flatnonzero(~raw.isin([0, 1]).to_numpy())
    if len(bad):
        i = bad[0]
        raise DataError(f"{csv}: {len(bad)} label(s) outside {{0, 1}}, e.g. line {i + 2}: {df['label'].iloc[i]!r}")
    raw = raw.to_numpy(dtype=np.int64)
    if "label_str" in df.columns:
        expected = np.where(raw == 1, "real", "fake")
        bad = np.flatnonzero(df["label_str"].str.strip().str.lower().to_numpy() != expected)
        if len(bad):
            i = bad[0]
            raise DataError(
                f"{csv}: label and label_str disagree on {len(bad)} row(s), e.g. line {i + 2}: label="
                f"{df['label'].iloc[i]!r} label_str={df['label_str'].iloc[i]!r} (this dataset uses 1 = real, 0 = fake)"
            )
    return 1 - raw


def _resolve(tree: LocalTree | UriTree, rels: Sequence[str], bases: list[str]) -> list[str | None]:
    """Find each CSV path under the first base that has it; a path whose prefix is foreign (e.g. /kaggle/input/...)
    is retried from its last split folder (train/ valid/ test/) on."""
    bases = [b for b in bases if tree.is_dir(b)] or [tree.root]
    rels = [r.strip().replace("\\", "/") for r in rels]
    sample = [r for r in rels[:20] if r]
    # the base that holds the first rows goes first, so most rows cost one stat
    bases.sort(key=lambda b: -sum(tree.is_file(tree.join(b, r)) for r in sample))
    out: list[str | None] = []
    for rel in rels:
        parts = rel.split("/")
        cut = max((i for i, p in enumerate(parts) if p.lower() in SPLIT_DIRS), default=0)
        tries = [t for t in [rel] + (["/".join(parts[cut:])] if cut else []) if t]
        out.append(_first_file(tree, bases, tries))
    return out


def _first_file(tree: LocalTree | UriTree, bases: list[str], rels: list[str]) -> str | None:
    for rel in rels:
        for base in bases:
            p = tree.join(base, rel)
            if tree.is_file(p):
                return os.path.normpath(p) if isinstance(tree, LocalTree) else p
    return None


def _csv_rows(st: _Scan, split: str, bases: list[str], required: set[str]) -> list[tuple]:
    """Rows of ROOT/{split}.csv: files by `path` under the bases, else (rvf10k) by `id` stem."""
    csv = st.tree.join(st.root, f"{split}.csv")
    df = _read_csv(st.tree, csv, required)
    if "id" not in df.columns and "path" not in df.columns:
        raise DataError(f"{csv}: missing required column id (or path); found {', '.join(df.columns)}")
    labels = _labels(df, csv)
    key = "path" if "path" in df.columns else "id"
    found = _resolve(st.tree, df["path"].tolist(), bases) if key == "path" else [None] * len(df)
    if "id" in df.columns and None in found:
        by_stem = _by_stem(st, split, df["id"].str.strip().tolist(), labels, bases)
        found = [f or b for f, b in zip(found, by_stem)]
    missing = [i for i, p in enumerate(found) if p is None]
    if missing:
        first = ", ".join(f"line {i + 2}: {df[key].iloc[i]}" for i in missing[:3])
        where = " or ".join(b for b in bases if st.tree.is_dir(b)) or st.root
        raise DataError(
            f"{csv}: {len(missing)} of {len(df)} row(s) point at missing files ({first}); looked under {where}"
        )
    return [(p, st.rel(p), int(y), split) for p, y in zip(found, labels)]


def _read_140k(st: _Scan, ratios, seed) -> list[tuple]:
    t, r = st.tree, st.root
    bases = [t.join(r, "real-vs-fake"), t.join(r, "real_vs_fake", "real-vs-fake"), t.join(r, "real_vs_fake"), r]
    rows = [row for split in SPLITS for row in _csv_rows(st, split, bases, {"label", "path"})]
    st.notes.append("splits taken from train.csv, valid.csv and test.csv; ratios and seed are not used")
    return rows


def _read_rvf10k(st: _Scan, ratios, seed) -> list[tuple]:
    bases = [st.tree.join(st.root, "rvf10k"), st.root]
    rows = [row for split in ("train", "valid") for row in _csv_rows(st, split, bases, {"label"})]
    # rvf10k ships no test split: carve one out of train with the hash rule
    test_share = ratios[2]
    if test_share == 0:
        st.notes.append("rvf10k has no test split and the test share is 0: the test split is empty")
        return rows
    train = [i for i, row in enumerate(rows) if row[3] == "train"]
    carved = hash_split([rows[i][1] for i in train], (1 - test_share, 0.0, test_share), seed)
    for i, s in zip(train, carved):
        rows[i] = rows[i][:3] + (s,)
    st.notes.append(
        f"rvf10k has no test split: carved {int((carved == 'test').sum())} of {len(train)} train.csv images into "
        f"test (share {test_share:g}, seeded hash, seed {seed}); valid.csv is the valid split"
    )
    return rows


def _by_stem(st: _Scan, split: str, ids: list[str], labels: np.ndarray, bases: list[str]) -> list[str | None]:
    """Find `{split}/{real|fake}/{id}.<any image ext>` (class from the label) for each id."""
    index: dict[int, dict[str, str]] = {0: {}, 1: {}}
    for base in bases:
        if st.tree.is_dir(st.tree.join(base, split)):
            for label, folder in _named_dirs(st.tree, st.tree.join(base, split), CLASS_DIRS).items():
                for p in st.images(folder):
                    name = st.tree.name(p)
                    index[label].setdefault(name, p)
                    index[label].setdefault(os.path.splitext(name)[0], p)
            break
    return [index[int(y)].get(i) for i, y in zip(ids, labels)]


_READERS = {
    "kaggle-140k-csv": _read_140k,
    "rvf10k-csv": _read_rvf10k,
    "split-folders": _read_split_folders,
    "flat": _read_flat,
}


def read_manifest(
    root: str | os.PathLike,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    allow_empty: bool = False,
) -> pd.DataFrame:
    """Read the dataset at ROOT (layout auto-detected) into a manifest sorted by (split, relpath).

    ratios / seed drive the hash split of flat layouts and rvf10k's carved test split. allow_empty records empty or
    missing class folders in df.attrs["empty_classes"] instead of raising (used by inspection). df.attrs also
    holds "layout", "root", "notes" (list[str]) and "skipped" (ignored non-image and hidden files).
    """
    ratios = validate_ratios(ratios)
    tree = _root(root)
    layout = detect_layout(tree)
    st = _Scan(tree, allow_empty)
    rows = _READERS[layout](st, ratios, seed)
    df = pd.DataFrame(rows, columns=["path", "relpath", "label", "split"])
    df["label"] = df["label"].astype(np.int64)
    df["source"] = layout
    order = {s: i for i, s in enumerate(SPLITS)}
    df = df.sort_values(["split", "relpath"], key=lambda c: c.map(order) if c.name == "split" else c)
    df = df.reset_index(drop=True)[COLUMNS]
    df.attrs.update(layout=layout, root=tree.root, notes=st.notes, skipped=st.skipped, empty_classes=st.empty)
    return df
