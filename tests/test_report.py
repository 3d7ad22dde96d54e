"""write_report writes every file, metrics.json round-trips, images are real PNGs, bad input writes nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defakenet.errors import DataError
from defakenet.metrics import compute_metrics
from defakenet.report import REPORT_FILES, format_metrics, write_report


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(120) < 0.5).astype(int)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
    return y, s


@pytest.fixture(scope="module")
def report(split, tmp_path_factory) -> dict[str, Path]:
    y, s = split
    out = tmp_path_factory.mktemp("report") / "nested" / "eval"
    extra = {"model": "defakenet v3", "split": "test", "epochs": np.int64(5), "path": Path("/x|y")}
    return write_report(out, y, s, 0.45, title="test split", extra=extra)


def test_writes_every_file(report):
    assert set(report) == set(REPORT_FILES)
    for name, path in report.items():
        assert path.name == REPORT_FILES[name]
        assert path.is_file() and path.stat().st_size > 0, name


def test_metrics_json_round_trips(report, split):
    saved = json.loads(report["metrics"].read_text())
    info = saved.pop("info")
    assert saved == compute_metrics(*split, 0.45)
    assert info == {"model": "defakenet v3", "split": "test", "epochs": 5, "path": "/x|y"}


@pytest.mark.parametrize("name", ["roc", "pr", "confusion"])
def test_images_are_valid_pngs(report, name):
    with Image.open(report[name]) as im:
        assert im.format == "PNG"
        assert im.size == (500, 500)
        im.verify()


def test_pages_show_metrics_images_and_info(report, split):
    m = compute_metrics(*split, 0.45)
    md = report["markdown"].read_text()
    page = report["html"].read_text()
    assert md.startswith("# test split\n")
    assert "ROC-AUC" in md and f"{m['roc_auc']:.4f}" in md
    assert f"{m['eer']:.4f}" in md
    for fname in ("roc.png", "pr.png", "confusion.png"):
        assert f"]({fname})" in md
        assert f'src="{fname}"' in page
    assert "defakenet v3" in md and "/x\\|y" in md  # pipe escaped in the markdown table
    assert "<title>test split</title>" in page and f"{m['roc_auc']:.4f}" in page


def test_html_escapes_info(tmp_path, split):
    paths = write_report(tmp_path, *split, 0.5, title="a <b>", extra={"note": "<script>"})
    page = paths["html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &lt;b&gt;" in page


@pytest.mark.parametrize(
    "labels, scores, match",
    [([0] * 8, [0.3] * 8, "both classes: got 8 real and 0 fake"), ([0, 1], [0.2, float("nan")], "NaN")],
)
def test_bad_input_writes_nothing(tmp_path, labels, scores, match):
    out = tmp_path / "report"
    with pytest.raises(DataError, match=match):
        write_report(out, labels, scores, 0.5)
    assert not out.exists()


def test_format_metrics(split):
    m = compute_metrics(*split, 0.45)
    text = format_metrics(m)
    assert text.splitlines()[0] == f"{m['n']} images ({m['n_real']} real, {m['n_fake']} fake)"
    assert f"{m['roc_auc']:.4f}" in text and f"tp {m['tp']}" in text
    assert all(len(line) < 100 for line in text.splitlines())


def test_import_leaves_matplotlib_alone():
    import subprocess
    import sys

    code = "import sys, defakenet.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
