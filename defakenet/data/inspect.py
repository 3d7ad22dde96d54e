"""Dataset inspection: decode every image once and report what would hurt training or evaluation.

`inspect_dataset` reads the manifest (defakenet.data.layouts), then in a thread pool reads each file, hashes its
bytes (sha256), decodes it with decode_rgb and hashes the pixels (sha256 of shape + RGB bytes). Files that share
bytes or pixels form duplicate groups; a group spanning two or more splits is leakage, a group labelled both
real and fake is a label conflict. `InspectReport.problems` lists leakage, label conflicts, empty classes and
unreadable files: the CLI's --strict fails on any of them.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

from PIL import Image
from tqdm import tqdm

from defakenet.data.image import decode_rgb
from defakenet.data.layouts import CLASS_NAMES, read_manifest
from defakenet.data.splits import DEFAULT_RATIOS, SPLITS
from defakenet.data.storage import Files, is_uri
from defakenet.errors import ConfigError, DataError

# a progress bar only when decoding takes long enough to watch
_PROGRESS_MIN_FILES = 200
# sizes kept in the report, most common first
_TOP_SIZES = 20
# files named per group / problem lines shown in the text summary
_SHOW_FILES = 4
_SHOW_PROBLEMS = 20

_KIND_WORDS = {"exact": "identical bytes", "pixel": "identical pixels"}


class _Probe(NamedTuple):
    sha: str | None  # sha256 of the file bytes, None when unreadable from disk
    pixels: str | None  # sha256 of shape + decoded RGB bytes, None when not decodable
    fmt: str | None
    size: str | None  # "WxH" of the decoded image
    error: str | None
    faces: int | None = None  # faces the detector found (data.faces crop), None when not looked for


_FILES = Files()


def _probe(path: str, name: str, detector=None) -> _Probe:
    try:
        data = _FILES.read(path) if is_uri(path) else Path(path).read_bytes()
    except OSError as e:
        return _Probe(None, None, None, None, f"{name}: cannot read ({e.strerror or e})")
    except DataError as e:  # a URI (s3://, ...) that could not be read
        return _Probe(None, None, None, None, f"{name}: cannot read ({e})")
    sha = hashlib.sha256(data).hexdigest()
    try:
        arr = decode_rgb(data, name=name)
    except DataError as e:
        return _Probe(sha, None, None, None, str(e))
    with Image.open(io.BytesIO(data)) as img:  # header only: the format name
        fmt = img.format or "unknown"
    pixels = hashlib.sha256(str(arr.shape).encode() + arr.tobytes()).hexdigest()
    faces = len(detector.detect(arr)) if detector is not None else None
    return _Probe(sha, pixels, fmt, f"{arr.shape[1]}x{arr.shape[0]}", None, faces)


@dataclass
class InspectReport:
    """What `inspect_dataset` found; `problems` is what --strict fails on."""

    root: str
    layout: str
    n_images: int
    counts: dict[str, dict[str, int]]  # split -> {"real", "fake", "total"}, every split listed
    sizes: dict[str, int]  # "WxH" -> files, the most common first (top 20)
    n_sizes: int  # distinct sizes in all
    formats: dict[str, int]  # PIL format (JPEG, PNG, ...) -> files
    unreadable: list[dict[str, str]]  # {"relpath", "split", "class", "reason"}
    duplicates: list[dict]  # {"kind": "exact"|"pixel", "splits", "classes", "files": [{"relpath","split","class"}]}
    empty_classes: list[dict[str, str]]  # {"split", "class", "path", "reason"}
    notes: list[str] = field(default_factory=list)
    # data.faces crop: the images where the face detector found no face ({"relpath", "split", "class"}); training
    # and evaluation feed those whole, serving answers "no-face"; None when faces were not looked for
    no_face: list[dict[str, str]] | None = None
    skipped: int = 0  # non-image and hidden files the layout reader ignored
    seconds: float = 0.0

    @property
    def balance(self) -> dict[str, float | None]:
        """Fake share per split (None for an empty split)."""
        return {s: (c["fake"] / c["total"] if c["total"] else None) for s, c in self.counts.items()}

    @property
    def leakage(self) -> list[dict]:
        """Duplicate groups whose files sit in two or more splits."""
        return [g for g in self.duplicates if len(g["splits"]) > 1]

    @property
    def label_conflicts(self) -> list[dict]:
        """Duplicate groups labelled both real and fake."""
        return [g for g in self.duplicates if len(g["classes"]) > 1]

    @property
    def problems(self) -> list[str]:
        """One line per problem: leakage, label conflicts, empty classes, unreadable files."""
        out = []
        for g in self.leakage:
            out.append(f"leakage: {_KIND_WORDS[g['kind']]} across {'/'.join(g['splits'])}: {_files(g)}")
        for g in self.label_conflicts:
            out.append(f"label conflict: {_KIND_WORDS[g['kind']]} labelled both real and fake: {_files(g)}")
        out += [f"empty class: {e['reason']}" for e in self.empty_classes]
        out += [f"unreadable: {u['reason']}" for u in self.unreadable]
        return out

    def to_dict(self) -> dict:
        """A JSON-serialisable dict: every field plus balance and problems."""
        return {**asdict(self), "balance": self.balance, "problems": self.problems}

    def to_json(self) -> str:
        """to_dict() as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        """A terminal summary: counts table, sizes, formats, duplicates, notes and problems."""
        lines = [
            f"dataset {self.root}",
            f"layout {self.layout}, {self.n_images:,} images, {self.skipped:,} skipped files, "
            f"inspected in {self.seconds:.1f} s",
            "",
            f"{'split':<8}{'real':>9}{'fake':>9}{'total':>9}{'fake share':>12}",
        ]
        total = {k: sum(c[k] for c in self.counts.values()) for k in ("real", "fake", "total")}
        for split, c in [*self.counts.items(), ("all", total)]:
            share = f"{c['fake'] / c['total']:.1%}" if c["total"] else "-"
            lines.append(f"{split:<8}{c['real']:>9,}{c['fake']:>9,}{c['total']:>9,}{share:>12}")
        lines.append("")
        top = dict(list(self.sizes.items())[:5])
        more = f" (+{self.n_sizes - len(top)} other sizes)" if self.n_sizes > len(top) else ""
        lines.append("sizes:      " + (_hist(top) or "-") + more)
        lines.append("formats:    " + (_hist(self.formats) or "-"))
        n, n_exact = len(self.duplicates), sum(g["kind"] == "exact" for g in self.duplicates)
        dup = "none"
        if n:
            dup = (f"{n} group{'s' * (n != 1)} ({n_exact} identical bytes, {n - n_exact} identical pixels only), "
                   f"{len(self.leakage)} across splits")
        lines.append(f"duplicates: {dup}")
        lines.append(f"unreadable: {len(self.unreadable) or 'none'}")
        if self.no_face is not None:
            shown = ", ".join(f"{f['relpath']} ({f['split']}, {f['class']})" for f in self.no_face[:_SHOW_FILES])
            more = f" (+{len(self.no_face) - _SHOW_FILES} more, see --json)" if len(self.no_face) > _SHOW_FILES else ""
            lines.append(f"no face:    {len(self.no_face):,} of {self.n_images:,} images" + (f": {shown}{more}" if shown else ""))
        if self.notes:
            lines += ["", "notes:"] + [f"  - {n}" for n in self.notes]
        problems = self.problems
        lines.append("")
        if problems:
            lines.append(f"problems ({len(problems)}):")
            lines += [f"  - {p}" for p in problems[:_SHOW_PROBLEMS]]
            if len(problems) > _SHOW_PROBLEMS:
                lines.append(f"  ... and {len(problems) - _SHOW_PROBLEMS} more (see --json)")
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def _files(group: dict) -> str:
    files = group["files"]
    shown = ", ".join(f"{f['relpath']} ({f['split']}, {f['class']})" for f in files[:_SHOW_FILES])
    return shown + (f" (+{len(files) - _SHOW_FILES} more)" if len(files) > _SHOW_FILES else "")


def _hist(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in counts.items())


def _groups(probes: Sequence[_Probe]) -> list[list[int]]:
    """Indices of files connected by equal bytes or equal pixels (union-find), groups of two or more."""
    parent = list(range(len(probes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key in ("sha", "pixels"):
        first: dict[str, int] = {}
        for i, p in enumerate(probes):
            h = getattr(p, key)
            if h is not None:
                j = first.setdefault(h, i)
                parent[find(i)] = find(j)
    comps: dict[int, list[int]] = defaultdict(list)
    for i in range(len(probes)):
        comps[find(i)].append(i)
    return [g for g in comps.values() if len(g) > 1]


def inspect_dataset(
    root: str | Path,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    progress: bool = True,
    workers: int = 4,
    faces: bool = False,
) -> InspectReport:
    """Read the dataset at ROOT and decode every image; see the module docstring for what is reported.

    ratios / seed are those of read_manifest. progress shows a tqdm bar on stderr for more than 200 files.
    faces: also run the face detector on every image and list those without a face (data.faces crop).
    Raises DataError for what read_manifest cannot read (no layout, missing CSV files, bad labels); empty class
    folders and unreadable images are reported, not raised.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: expected an integer >= 1")
    t0 = time.perf_counter()
    df = read_manifest(root, ratios=ratios, seed=seed, allow_empty=True)
    paths, rels = df["path"].tolist(), df["relpath"].tolist()
    splits, classes = df["split"].tolist(), [CLASS_NAMES[int(y)] for y in df["label"]]

    bar = tqdm(total=len(df), desc="inspect", unit="img", file=sys.stderr,
               disable=not progress or len(df) <= _PROGRESS_MIN_FILES)
    probes: list[_Probe] = []
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        detector = None
        if faces:
            from defakenet.faces import FaceDetector

            detector = FaceDetector(threads=1)  # the pool's threads share its session
        for p in pool.map(_probe, paths, rels, [detector] * len(paths)):
            probes.append(p)
            bar.update(1)

    counts = {s: {"real": 0, "fake": 0, "total": 0} for s in SPLITS}
    for s, c in zip(splits, classes):
        counts[s][c] += 1
        counts[s]["total"] += 1

    sizes = Counter(p.size for p in probes if p.size)
    formats = Counter(p.fmt for p in probes if p.fmt)
    unreadable = [
        {"relpath": rels[i], "split": splits[i], "class": classes[i], "reason": p.error}
        for i, p in enumerate(probes)
        if p.error
    ]
    duplicates = []
    for g in _groups(probes):
        shas = {probes[i].sha for i in g}
        duplicates.append({
            "kind": "exact" if len(shas) == 1 else "pixel",
            "splits": [s for s in SPLITS if any(splits[i] == s for i in g)],
            "classes": sorted({classes[i] for i in g}),
            "files": [{"relpath": rels[i], "split": splits[i], "class": classes[i]} for i in g],
        })

    empty = [dict(e) for e in df.attrs.get("empty_classes", [])]
    # a split with images but none of one class (e.g. a CSV without fakes, or a tiny flat dataset)
    covered = {(e["split"], e["class"]) for e in empty}
    for s, c in counts.items():
        for name in CLASS_NAMES.values():
            if c["total"] and not c[name] and (s, name) not in covered and ("all", name) not in covered:
                other = "fake" if name == "real" else "real"
                reason = f"the {s} split has no {name} images ({c[other]:,} {other})"
                empty.append({"split": s, "class": name, "path": "", "reason": reason})

    return InspectReport(
        root=df.attrs["root"],
        layout=df.attrs["layout"],
        n_images=len(df),
        counts=counts,
        sizes=dict(sizes.most_common(_TOP_SIZES)),
        n_sizes=len(sizes),
        formats=dict(formats.most_common()),
        unreadable=unreadable,
        duplicates=duplicates,
        empty_classes=empty,
        notes=list(df.attrs.get("notes", [])),
        no_face=None if not faces else [{"relpath": rels[i], "split": splits[i], "class": classes[i]}
                                        for i, p in enumerate(probes) if p.faces == 0],
        skipped=int(df.attrs.get("skipped", 0)),
        seconds=round(time.perf_counter() - t0, 3),
    )
