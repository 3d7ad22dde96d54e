"""Videos: sample frames evenly, score each through the one inference path, make one score per video.

    clip ─▶ OpenCV's bundled FFmpeg: N frames at evenly spaced indices ─▶ Predictor.predict_images (the face stage
    per frame when the model has it) ─▶ frame scores ─▶ video p_fake (mean, or DFDC's "confident" strategy)
                                                     └▶ timeline PNG: p_fake per frame against the threshold

Frames where the face stage found no face carry no score and are left out of the video's; a video with no face
in any sampled frame is "no-face", as an image is. A file OpenCV cannot open or read a frame of is a DataError
naming it (the CLI's exit 2, the endpoint's 415).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defakenet.errors import DataError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
DEFAULT_FRAMES = 32
STRATEGIES = ("mean", "confident")


def is_video_path(path: str | Path) -> bool:
    return Path(str(path)).suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class Clip:
    """Frames sampled from a video: RGB uint8 arrays, their indices and times, and the video's own facts."""

    frames: list[np.ndarray]
    indices: list[int]
    times: list[float]
    fps: float
    frame_count: int

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0


def sample_frames(path: str | Path, n: int = DEFAULT_FRAMES, *, max_seconds: float = 0.0,
                  name: str | None = None) -> Clip:
    """`n` frames at evenly spaced indices of the video at `path` (all of them when it has fewer); DataError
    naming the file when it cannot be opened or decoded, or when it is longer than `max_seconds` (0: any)."""
    import cv2

    what = name or str(path)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DataError(f"{what}: not a readable video (expected MP4, MOV, AVI, MKV or WebM that FFmpeg decodes)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if count <= 0:
            raise DataError(f"{what}: the video holds no frames (truncated or not a video)")
        if max_seconds and fps > 0 and count / fps > max_seconds:
            raise DataError(f"{what}: {count / fps:.1f} s of video is over the limit of {max_seconds:g} s")
        wanted = sorted({int(i) for i in np.linspace(0, count - 1, num=min(n, count)).round()})
        frames, indices = [], []
        for i in wanted:
            cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, bgr = cap.read()
            if ok and bgr is not None:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                indices.append(i)
        # a container that promises more frames than its stream holds (a cut-off upload) decodes only some
        if not frames or len(frames) < max(1, len(wanted) // 2):
            raise DataError(f"{what}: only {len(frames)} of {len(wanted)} sampled frames could be decoded "
                            f"(truncated or corrupt video)")
        return Clip(frames, indices, [i / fps if fps > 0 else 0.0 for i in indices], fps, count)
    finally:
        cap.release()


def sample_bytes(data: bytes, n: int = DEFAULT_FRAMES, *, max_seconds: float = 0.0, name: str = "video") -> Clip:
    """sample_frames of an upload (FFmpeg reads files: the bytes go to a temp file that is removed after)."""
    if not data:
        raise DataError(f"{name}: empty body; send one video file")
    fd, tmp = tempfile.mkstemp(prefix="defakenet-video-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return sample_frames(tmp, n, max_seconds=max_seconds, name=name)
    finally:
        os.unlink(tmp)


def confident(scores: np.ndarray, t: float = 0.8) -> float:
    """DFDC's winning "confident" strategy (Seferbekov, 2020): the mean of the confident fake frames when there
    are many (> 11 and > 40 % of them), else the mean of the confident real ones when nearly all frames are
    (> 90 % below 0.2), else the plain mean."""
    fakes = int(np.count_nonzero(scores > t))
    if fakes > len(scores) // 2.5 and fakes > 11:
        return float(np.mean(scores[scores > t]))
    if np.count_nonzero(scores < 0.2) > 0.9 * len(scores):
        return float(np.mean(scores[scores < 0.2]))
    return float(np.mean(scores))


def video_verdict(clip: Clip, frame_verdicts: Sequence[dict], threshold: float, strategy: str = "mean") -> dict:
    """The video's answer from its frames' verdicts: label, p_fake (by `strategy`), threshold, and per frame
    {index, time_s, p_fake, label, faces}."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid video strategy {strategy!r}. Only {', '.join(STRATEGIES)} are supported.")
    frames = [{"index": i, "time_s": round(t, 3), **v} for i, t, v in zip(clip.indices, clip.times, frame_verdicts)]
    scored = np.array([f["p_fake"] for f in frames if f["p_fake"] is not None], dtype=np.float64)
    base = {"threshold": threshold, "strategy": strategy, "duration_s": round(clip.duration_s, 3),
            "frames_sampled": len(frames), "frames": frames}
    from defakenet.inference import NO_FACE_LABEL, label_of

    if not len(scored):
        return {"label": NO_FACE_LABEL, "p_fake": None, **base}
    p = float(np.mean(scored)) if strategy == "mean" else confident(scored)
    return {"label": label_of(p, threshold), "p_fake": p, **base}


def predict_clip(predictor, clip: Clip, strategy: str = "mean") -> dict:
    """The verdict of a sampled clip through inference.Predictor (in this process)."""
    return video_verdict(clip, predictor.predict_images(clip.frames), predictor.threshold, strategy)


def timeline_png(verdict: dict, title: str = "") -> bytes:
    """p_fake per sampled frame over time, with the threshold and the video's score: a PNG (drawn on
    report.figure's own canvas, no pyplot: the endpoint draws it in a worker thread)."""
    from defakenet.report import figure

    frames = verdict["frames"]
    t = [f["time_s"] for f in frames]
    p = [np.nan if f["p_fake"] is None else f["p_fake"] for f in frames]
    fig = figure(8, 3)
    ax = fig.add_subplot()
    ax.plot(t, p, marker="o", ms=3, lw=1, color="#1f77b4", label="frame p_fake")
    ax.axhline(verdict["threshold"], color="#888", ls="--", lw=1, label=f"threshold {verdict['threshold']:.3f}")
    if verdict["p_fake"] is not None:
        ax.axhline(verdict["p_fake"], color="#d62728", lw=1.5,
                   label=f"video {verdict['label']} {verdict['p_fake']:.3f} ({verdict['strategy']})")
    missing = [x for x, f in zip(t, frames) if f["p_fake"] is None]
    if missing:
        ax.plot(missing, [0.0] * len(missing), "x", color="#999", label="no face")
    ax.set(ylim=(-0.02, 1.02), xlabel="time (s)", ylabel="p(fake)")
    ax.set_title(title or "defakenet video timeline", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def predict_videos(predictor, paths: list[Path], out_dir: Path, *, frames: int = DEFAULT_FRAMES,
                   strategy: str = "mean", progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """`defakenet predict CLIP…`: each video's verdict with its timeline PNG written to OUT/NAME.timeline.png,
    or {"path", "error", "video": True} for one that cannot be read."""
    from defakenet.inference import model_label

    results = []
    for k, path in enumerate(paths):
        try:
            clip = sample_frames(path, frames)
        except DataError as e:
            results.append({"path": str(path), "error": str(e), "video": True})
            continue
        v = predict_clip(predictor, clip, strategy)
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / f"{path.stem}.timeline.png"
        png.write_bytes(timeline_png(v, f"{path.name}: {model_label(predictor)}"))
        results.append({"path": str(path), **v, "model": predictor.identity, "timeline": str(png)})
        if progress is not None:
            progress(k + 1, len(paths))
    return results
