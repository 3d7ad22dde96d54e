"""Offline prediction: `defakenet predict IMG_OR_DIR… --model M` scores files without a server.

The same path as the endpoint (inference.Predictor: the face stage when the model has it, the model's own
preprocessing, one batched forward) and the same one-line-per-image output as `defakenet predict --url`, or JSON /
CSV for batches. Folders are read recursively. Up to `RAY_ABOVE` images are scored in this process; more go through
Ray Data (decoding in parallel, `actors` model copies), in input order either way.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from defakenet.client import format_line
from defakenet.data.image import is_image_path, load_rgb
from defakenet.errors import DataError, UserError

# more images than this go through Ray Data; fewer are not worth starting Ray for
RAY_ABOVE = 256
# images decoded and scored together in this process
CHUNK = 32
CSV_COLUMNS = ("path", "label", "p_fake", "threshold", "faces", "model", "version", "error")


def expand(inputs: Iterable[str]) -> list[Path]:
    """Files as given and the image and video files under folders (recursively, sorted); UserError for a missing
    path or a folder without any."""
    from defakenet.video import is_video_path

    out: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and (is_image_path(f) or is_video_path(f)))
            if not found:
                raise UserError(f"{p}: no image files (JPEG, PNG, WebP, BMP, TIFF) or videos in this folder")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return out


def predict_paths(predictor, paths: list[Path], *, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Each path's answer in order: the verdict (inference.Predictor.verdict) with path and model, or
    {"path", "error"} for a file that is not a readable image."""
    results: list[dict] = []
    for start in range(0, len(paths), CHUNK):
        chunk = paths[start:start + CHUNK]
        images, ok, errors = [], [], {}
        for i, p in enumerate(chunk):
            try:
                images.append(load_rgb(p))
                ok.append(i)
            except DataError as e:
                errors[i] = str(e)
        verdicts = dict(zip(ok, predictor.predict_images(images)))
        for i, p in enumerate(chunk):
            results.append(_answer(predictor, p, verdicts.get(i), errors.get(i)))
        if progress is not None:
            progress(len(results), len(paths))
    return results


def _answer(predictor, path: Path, verdict: dict | None, error: str | None) -> dict:
    if error is not None:
        return {"path": str(path), "error": error}
    return {"path": str(path), **verdict, "model": predictor.identity}


class _PredictActor:
    """map_batches actor of predict_ray: one Predictor, the verdicts of a batch of paths as JSON strings."""

    def __init__(self, files: list, meta: dict):
        import ray

        from defakenet.artifact import load_model_files
        from defakenet.inference import Predictor
        from defakenet.runtime import assigned_cpus

        runtime = meta.get("runtime", "torch")
        self.predictor = Predictor(load_model_files(ray.get(files[0]), runtime=runtime), threads=assigned_cpus(),
                                   **meta)

    def __call__(self, batch: dict) -> dict:
        paths = [Path(p) for p in batch["path"]]
        return {"result": [json.dumps(r) for r in predict_paths(self.predictor, paths)]}


def predict_ray(predictor, paths: list[Path], *, actors: int = 1,
                progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """predict_paths through Ray Data: `actors` copies of the model, in input order."""
    import ray
    from ray.data import ActorPoolStrategy

    from defakenet.artifact import model_files
    from defakenet.config import Config
    from defakenet.runtime import init_ray

    init_ray(Config().replace(**{"resources.workers": actors}))
    files = ray.put(model_files(predictor.saved))
    meta = {"name": predictor.name, "version": predictor.version, "alias": predictor.alias,
            "runtime": predictor.runtime}
    ds = ray.data.from_items([{"path": str(p)} for p in paths]).map_batches(
        _PredictActor, fn_constructor_kwargs={"files": [files], "meta": meta}, batch_size=CHUNK,
        batch_format="numpy", compute=ActorPoolStrategy(size=actors))
    ds.context.execution_options.preserve_order = True
    results: list[dict] = []
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        results.extend(json.loads(r) for r in b["result"])
        if progress is not None:
            progress(len(results), len(paths))
    return results


def to_csv(results: list[dict]) -> str:
    """One row per image (CSV_COLUMNS); `faces` is the number of faces, empty without the face stage."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        m = r.get("model", {})
        p = r.get("p_fake")
        w.writerow([r.get("path", ""), r.get("label", ""), "" if p is None else f"{p:.6f}",
                    "" if "threshold" not in r else f"{r['threshold']:.6f}",
                    len(r["faces"]) if "faces" in r else "", m.get("name", ""),
                    "" if m.get("version") is None else m["version"], r.get("error", "")])
    return buf.getvalue()


def write_results(results: list[dict], fmt: str, out=None) -> None:
    """Print `results` as lines, JSON (one array) or CSV."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(results, indent=2) + "\n")
    elif fmt == "csv":
        out.write(to_csv(results))
    else:
        for r in results:
            out.write(format_line(r.get("path", "?"), r) + (f"  -> {r['timeline']}" if "timeline" in r else "") + "\n")
    out.flush()
