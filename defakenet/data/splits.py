"""Seeded, stable train/valid/test assignment by hashing each file's relative path.

A file's split is a function of its own relative path and the seed only:

    u = int.from_bytes(sha256(f"{seed}:{relpath}")[:8], "big") / 2**64
    train if u < r_train, valid if u < r_train + r_valid, else test

so adding or removing files never moves the others, and every class is split independently of the others
(the relative path includes the class folder), which makes the split stratified in expectation.

`subsample_train` keeps a share of the training split for learning curves: per class the round(fraction × n)
training files with the smallest sha256(f"subsample:{seed}:{relpath}"), so a smaller fraction's subset lies inside
a bigger one's and valid and test never change.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from defakenet.errors import ConfigError, DataError

# the one default for every caller (manifest, inspection, config)
DEFAULT_RATIOS: tuple[float, float, float] = (0.7, 0.15, 0.15)
SPLITS: tuple[str, str, str] = ("train", "valid", "test")

_TOL = 1e-6


def validate_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Check (train, valid, test) ratios and return them as floats.

    Three finite non-negative numbers summing to 1 (within 1e-6) with train > 0; ConfigError otherwise.
    """
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        raise ConfigError(f"split ratios {ratios!r}: expected three numbers (train, valid, test)") from None
    if len(values) != 3:
        raise ConfigError(f"split ratios {ratios!r}: expected three numbers (train, valid, test), got {len(values)}")
    if any(not math.isfinite(r) or r < 0 for r in values):
        raise ConfigError(f"split ratios {ratios!r}: each must be a finite number >= 0")
    if abs(sum(values) - 1.0) > _TOL:
        raise ConfigError(f"split ratios {ratios!r}: must sum to 1, got {sum(values):g}")
    if values[0] <= 0:
        raise ConfigError(f"split ratios {ratios!r}: the train share must be > 0")
    return values  # type: ignore[return-value]


def _cuts(ratios: tuple[float, float, float]) -> tuple[float, float]:
    # a zero share must never receive a file, even when float sums fall a hair short of 1
    r0, r1, r2 = ratios
    c1 = math.inf if r1 + r2 == 0 else r0
    c2 = math.inf if r2 == 0 else r0 + r1
    return c1, c2


def split_unit(relpath: str, seed: int) -> float:
    """The file's position in [0, 1): first 8 bytes of sha256(f"{seed}:{relpath}") / 2**64."""
    digest = hashlib.sha256(f"{seed}:{relpath}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(relpath: str, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0) -> str:
    """The split ("train", "valid" or "test") of one file, from its posix relative path and the seed."""
    c1, c2 = _cuts(validate_ratios(ratios))
    u = split_unit(relpath, seed)
    return "train" if u < c1 else "valid" if u < c2 else "test"


def hash_split(relpaths: Iterable[str], ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0) -> np.ndarray:
    """Splits of many files at once: an object array of "train" / "valid" / "test", same order as `relpaths`.

    Gives exactly what `assign_split` gives for each path.
    """
    c1, c2 = _cuts(validate_ratios(ratios))
    u = np.fromiter((split_unit(p, seed) for p in relpaths), dtype=np.float64)
    idx = (u >= c1).astype(np.int64) + (u >= c2).astype(np.int64)
    return np.asarray(SPLITS, dtype=object)[idx]


def subsample_train(manifest: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """The manifest with only `fraction` of each class's training rows; valid and test rows unchanged.

    Per label, keeps the round(fraction × n) training rows with the smallest sha256(f"subsample:{seed}:{relpath}")
    (path when there is no relpath column), so subsets are nested across fractions for one seed. Rows keep their
    order. ConfigError for a fraction outside (0, 1]; DataError when a class keeps no training image.
    """
    fraction = float(fraction)
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise ConfigError(f"train fraction {fraction!r}: must be in (0, 1]")
    if fraction == 1:
        return manifest
    train = manifest["split"] == "train"
    names = manifest["relpath"] if "relpath" in manifest.columns else manifest["path"]
    keep = ~train.to_numpy()
    counts = {}
    for label, name in ((0, "real"), (1, "fake")):
        idx = np.flatnonzero((train & (manifest["label"] == label)).to_numpy())
        k = round(fraction * len(idx))
        counts[name] = (k, len(idx))
        ranked = sorted(idx, key=lambda i: (_subsample_unit(str(names.iloc[i]), seed), str(names.iloc[i])))
        keep[ranked[:k]] = True
    if any(k == 0 for k, _ in counts.values()):
        found = ", ".join(f"{k} of {n} {name}" for name, (k, n) in counts.items())
        raise DataError(f"data.train_fraction {fraction:g} keeps {found} training images; each class needs at least "
                        f"one (raise the fraction or add images)")
    return manifest[keep]


def _subsample_unit(relpath: str, seed: int) -> int:
    # a hash domain of its own, independent of the split's
    return int.from_bytes(hashlib.sha256(f"subsample:{seed}:{relpath}".encode("utf-8")).digest()[:8], "big")
