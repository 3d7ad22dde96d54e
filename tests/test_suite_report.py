"""write_suite_report writes every file, its numbers are cell_metrics', scores.csv recomputes them, bad input writes
nothing."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from defakenet.errors import DataError
from defakenet.metrics import cell_metrics
from defakenet.suite_report import SUITE_FILES, format_suite_table, write_suite_report

SETS = ("sample", "photo|shop")  # a pipe, to be escaped in markdown tables
DEGRADATIONS = ("none", "jpeg:50")
THRESHOLD = 0.45
RESAMPLES = 200


def _arrays(seed: int, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    return y, np.clip(rng.normal(0.35 + shift * y, 0.2), 0.0, 1.0)


@pytest.fixture(scope="module")
def cells() -> list[dict]:
    out = []
    for i, s in enumerate(SETS):
        n = 40 + 20 * i
        for j, d in enumerate(DEGRADATIONS):
            y, scores = _arrays(10 * i + j, n, 0.35 - 0.15 * j)
            cell = {"set": s, "degradation": d, "labels": y, "scores": scores,
                    "metrics": cell_metrics(y, scores, THRESHOLD, resamples=RESAMPLES)}
            if i == 0:  # paths for one set only
                cell["paths"] = [f"/data/{s}/{k:03d}.png" for k in range(n)]
            out.append(cell)
    return out


@pytest.fixture(scope="module")
def report(cells, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("suite") / "nested" / "suite"
    return write_suite_report(out, cells, title="suite v3", info={"model": "defakenet v3", "epochs": np.int64(5)})


def test_writes_every_file(report):
    assert set(report) == set(SUITE_FILES)
    for name, path in report.items():
        assert path.name == SUITE_FILES[name]
        assert path.is_file() and path.stat().st_size > 0, name


def test_metrics_json_equals_cell_metrics(report, cells):
    doc = json.loads(report["metrics"].read_text())
    assert doc["info"] == {"model": "defakenet v3", "epochs": 5}
    assert doc["sets"] == list(SETS) and doc["degradations"] == list(DEGRADATIONS)
    assert len(doc["cells"]) == 4
    for saved, cell in zip(doc["cells"], cells):
        fresh = cell_metrics(cell["labels"], cell["scores"], THRESHOLD, resamples=RESAMPLES)
        assert saved == {"set": cell["set"], "degradation": cell["degradation"], **fresh}
    assert doc["cells"][0]["roc_auc"] != doc["cells"][1]["roc_auc"]


def _auc_text(m: dict) -> str:
    return f"{m['roc_auc']:.3f} [{m['roc_auc_ci'][0]:.3f}, {m['roc_auc_ci'][1]:.3f}]"


def test_markdown_matrix_and_tables(report, cells):
    md = report["markdown"].read_text()
    lines = md.splitlines()
    assert lines[0] == "# suite v3"
    top = lines.index("| set | none | jpeg:50 |")
    assert lines[top + 1] == "| --- | --- | --- |"
    m = [c["metrics"] for c in cells]
    assert lines[top + 2] == f"| sample | {_auc_text(m[0])} | {_auc_text(m[1])} |"
    assert lines[top + 3] == f"| photo\\|shop | {_auc_text(m[2])} | {_auc_text(m[3])} |"
    assert lines[top + 4] == ""
    assert "stratified bootstrap" in md and f"{RESAMPLES} resamples, seed 0" in md
    assert f"model's own threshold {THRESHOLD}" in md
    # per-set tables: one row per degradation with the other metrics
    row = lines[lines.index("## photo|shop") + 5]  # heading, blank, header, rule, none
    c = m[3]
    assert row.startswith(f"| jpeg:50 | {c['n']} ({c['n_real']} / {c['n_fake']}) | {c['average_precision']:.3f} |")
    assert row.endswith(f"| {c['ece']:.3f} | {c['brier']:.3f} |")
    for fname in ("auc_heatmap.png", "roc.png", "reliability.png"):
        assert f"]({fname})" in md
    assert "| model | defakenet v3 |" in md


@pytest.mark.parametrize("name", ["heatmap", "roc", "reliability"])
def test_images_are_real_pngs(report, name):
    with Image.open(report[name]) as im:
        assert im.format == "PNG"
        assert im.width >= 400 and im.height >= 300
        im.verify()
    with Image.open(report[name]) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # drawn on, not a blank canvas
    assert report[name].stat().st_size > 10_000


def test_scores_csv_recomputes_metrics(report, cells):
    with report["scores"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["set", "degradation", "path", "label", "score"]
    assert len(rows) == sum(len(c["labels"]) for c in cells)
    for cell in cells:
        mine = [r for r in rows if (r["set"], r["degradation"]) == (cell["set"], cell["degradation"])]
        y = np.array([int(r["label"]) for r in mine])
        s = np.array([float(r["score"]) for r in mine])
        np.testing.assert_array_equal(y, cell["labels"])
        np.testing.assert_array_equal(s, cell["scores"])  # exact: floats written round-trip
        assert skm.roc_auc_score(y, s) == cell["metrics"]["roc_auc"]
        assert [r["path"] for r in mine] == cell.get("paths", [""] * len(y))


def test_format_suite_table(report, cells):
    text = format_suite_table(json.loads(report["metrics"].read_text()))
    lines = text.splitlines()
    assert len(lines) == 1 + len(SETS)
    assert lines[0].split() == ["set", "none", "jpeg:50"]
    m = [c["metrics"] for c in cells]
    assert lines[1].startswith("sample".ljust(len("photo|shop")) + "  ")
    assert lines[2].startswith("photo|shop  ") and lines[2].endswith(_auc_text(m[3]))
    assert _auc_text(m[0]) in lines[1] and _auc_text(m[1]) in lines[1]
    # right-aligned columns end where their headers end
    assert len({len(line) for line in lines}) == 1
    assert lines[1].index(_auc_text(m[0])) + len(_auc_text(m[0])) == lines[0].index("none") + len("none")


def test_one_set_one_degradation(tmp_path):
    y, s = _arrays(5, 30, 0.3)
    cell = {"set": "only", "degradation": "none", "labels": y, "scores": s,
            "metrics": cell_metrics(y, s, 0.5, resamples=50)}
    paths = write_suite_report(tmp_path / "one", [cell], title="one", info={})
    assert all(p.is_file() for p in paths.values())
    assert "| only | " + _auc_text(cell["metrics"]) + " |" in paths["markdown"].read_text()


def test_a_set_with_degradations_of_its_own_shows_a_gap(tmp_path):
    y, s = _arrays(5, 30, 0.3)
    cells = [_cell("a", "none", y, s), _cell("a", "jpeg:50", y, s * 0.9), _cell("b", "none", y, s)]
    paths = write_suite_report(tmp_path / "ragged", cells, title="ragged", info={})
    md = paths["markdown"].read_text()
    assert "| a | " + _auc_text(cells[0]["metrics"]) + " | " + _auc_text(cells[1]["metrics"]) + " |" in md
    assert "| b | " + _auc_text(cells[2]["metrics"]) + " | - |" in md
    doc = json.loads(paths["metrics"].read_text())
    assert doc["degradations"] == ["none", "jpeg:50"] and len(doc["cells"]) == 3
    assert format_suite_table(doc).splitlines()[2].split()[-1] == "-"


def _cell(s: str, d: str, y, scores, **extra) -> dict:
    y, scores = np.asarray(y), np.asarray(scores, dtype=float)
    m = {"n": len(y), "ece_bins": 15} if len(set(y.tolist())) < 2 else cell_metrics(y, scores, 0.5, resamples=20)
    return {"set": s, "degradation": d, "labels": y, "scores": scores, "metrics": m, **extra}


_Y, _S = [0, 1, 0, 1], [0.1, 0.8, 0.4, 0.6]


@pytest.mark.parametrize(
    "cells, match",
    [
        ([_cell("a", "none", _Y, _S), _cell("a", "jpeg:50", [1, 1, 1], [0.2, 0.5, 0.9])],
         "a x jpeg:50: metrics need both classes: got 0 real and 3 fake"),
        ([_cell("a", "none", _Y, _S), _cell("a", "none", _Y, _S)], "repeats set 'a' x degradation 'none'"),
        ([_cell("a", "none", _Y, _S, paths=["x.png"])], "1 paths for 4 images"),
        ([{"set": "a", "degradation": "none", "labels": _Y, "metrics": {}}], "lacks scores"),
        ([{**_cell("a", "none", _Y, _S), "metrics": {"n": 4}}], "a x none: metrics lack n_real"),
        ([], "got none"),
    ],
)
def test_bad_input_writes_nothing(tmp_path, cells, match):
    out = tmp_path / "suite"
    with pytest.raises(DataError, match=match):
        write_suite_report(out, cells, title="bad", info={})
    assert not out.exists()


def test_import_leaves_matplotlib_alone():
    import subprocess
    import sys

    code = "import sys, defakenet.suite_report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
