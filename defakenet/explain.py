"""Grad-CAM evidence: which parts of an image the network's fake score comes from.

Grad-CAM (Selvaraju et al., ICCV 2017) by captum's `LayerGradCam`: a stage's feature map weighted by the mean
gradient of the score of the class the verdict names (the logit for "fake", minus the logit for "real": why it
was called what it was called), ReLU'd, upsampled to the input, scaled to [0, 1] per region. The stage is the
backbone's last one (`model.backbone`: the map the head pools) when its map is at least MIN_SIDE cells on a
side (224 px input: 7 x 7); at smaller inputs the last stage's map shrinks to 2 x 2 or 1 x 1, which says nothing
about where, so the deepest stage with a MIN_SIDE map is used instead (conv2 at 32 px). A region is what the network scored: the whole image's centre square
as the model's preprocessing cuts it, or each face crop (data.faces crop); each region's map is put back where the
region lies in the image, so the heatmap has the image's size (zero where the network looked at nothing).

The verdict next to the heatmap comes from inference.Predictor (its regions, scored and made a verdict as
predict_images does: the path every other command scores through), so `explain` and `predict` give the same
p_fake for the same file.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defakenet.data.augment import input_box
from defakenet.inference import model_label

# heatmap opacity over the photo in the overlay
ALPHA = 0.45
# overlays of narrower images carry no caption strip
CAPTION_MIN_WIDTH = 128
# cells on a side of the feature map Grad-CAM reads, at least (where it can)
MIN_SIDE = 4


@dataclass
class Explanation:
    """An image's verdict (as predict gives it) and its Grad-CAM heatmap, float32 in [0, 1], image-sized."""

    verdict: dict
    heatmap: np.ndarray


def cam_layer(model, side: int):
    """(name, module) of the stage Grad-CAM reads for inputs of `side` px: the backbone's output when its map has
    MIN_SIDE cells a side, else the deepest stage whose map has (the first stage when none has)."""
    from defakenet.model import RESNET50V2_STACKS

    backbone, reduction, sides = model.backbone, 4, []  # stem: 7x7/2 conv and 3x3/2 pool
    for name, _, _, stride in RESNET50V2_STACKS[:backbone.stages]:
        reduction *= stride
        sides.append((name, -(-side // reduction)))
    if sides[-1][1] >= MIN_SIDE:
        return "backbone", backbone  # the last stage after post_bn + ReLU: what the head pools
    fits = [name for name, s in sides if s >= MIN_SIDE]
    name = fits[-1] if fits else sides[0][0]
    return name, getattr(backbone, name)


def gradcam(predictor, inputs: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Grad-CAM maps (N, S, S) in [0, 1] of preprocessed inputs (N, 3, S, S), for sign * logit (+1: fake, -1:
    real) of each."""
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    model = predictor.torch_model  # Grad-CAM needs gradients: the torch module, whichever runtime scores
    x = predictor.placement.put(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)))
    sign = torch.as_tensor(signs, dtype=torch.float32, device=x.device)
    _, layer = cam_layer(model, int(inputs.shape[-1]))
    cam = LayerGradCam(lambda t: model(t) * sign[: len(t)], layer)
    with torch.enable_grad():
        # one score per input: no target index; relu: only what raises that score
        a = cam.attribute(x, relu_attributions=True)
    a = LayerAttribution.interpolate(a.detach(), tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
    maps = a[:, 0].float().cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1)
    return (maps / np.where(peak > 0, peak, 1.0)[:, None, None]).clip(0, 1).astype(np.float32)


def _paste(canvas: np.ndarray, heat: np.ndarray, box: tuple[float, float, float, float]) -> None:
    """Resize `heat` onto `box` (image pixels, may reach outside) and keep the maximum with what `canvas` holds."""
    import cv2

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    if x1 <= x0 or y1 <= y0:
        return
    resized = cv2.resize(heat, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    h, w = canvas.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    part = resized[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    np.maximum(canvas[cy0:cy1, cx0:cx1], part, out=canvas[cy0:cy1, cx0:cx1])


def explain(predictor, images: list[np.ndarray]) -> list[Explanation]:
    """Verdicts and image-sized Grad-CAM heatmaps of decoded RGB uint8 images. Each image's regions (its face
    crops, or the image) are found once and scored as Predictor.predict_images scores them."""
    from defakenet.faces import crop_box

    out = []
    for image in images:
        h, w = image.shape[:2]
        faces, regions = predictor.regions(image)
        verdict = predictor.verdict(faces, predictor.score_images(regions))
        heat = np.zeros((h, w), dtype=np.float32)
        if regions:
            if faces:
                margin = predictor.config.data.face_margin
                boxes, labels = [crop_box(image.shape, f, margin) for f in faces], [f["label"] for f in verdict["faces"]]
            else:  # the whole image
                boxes, labels = [(0, 0, w, h)], [verdict["label"]]
            signs = np.array([1.0 if label == "fake" else -1.0 for label in labels])
            maps = gradcam(predictor, predictor.inputs(regions), signs)
            for (rx0, ry0, _, _), region, m in zip(boxes, regions, maps):
                bx0, by0, bx1, by1 = input_box(region.shape[0], region.shape[1], predictor.config.data)
                _paste(heat, m, (rx0 + bx0, ry0 + by0, rx0 + bx1, ry0 + by1))
        out.append(Explanation(verdict, heat))
    return out


def overlay(image: np.ndarray, ex: Explanation, model: str = "") -> np.ndarray:
    """The photo with the heatmap over it (jet, ALPHA) and the face boxes (red: fake, green: real), and below it a
    caption strip (label, p_fake against the threshold, the model) scaled to the width; images narrower than
    CAPTION_MIN_WIDTH get no strip (the caption would not fit), so their overlay has the image's size."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    rgba = matplotlib.colormaps["jet"](ex.heatmap)[..., :3] * 255.0
    weight = (ALPHA * ex.heatmap)[..., None]  # cold pixels stay the photo
    mixed = (image.astype(np.float32) * (1 - weight) + rgba * weight).clip(0, 255).astype(np.uint8)
    h, w = mixed.shape[:2]
    v = ex.verdict
    size = max(10, min(28, w // 40))
    strip = 0 if w < CAPTION_MIN_WIDTH else 2 * size + 12
    pil = Image.new("RGB", (w, h + strip), (0, 0, 0))
    pil.paste(Image.fromarray(mixed), (0, 0))
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=size)
    width = max(1, round(min(h, w) / 150))
    for f in v.get("faces", []):
        colour = (230, 40, 40) if f["label"] == "fake" else (40, 200, 60)
        draw.rectangle(f["box"], outline=colour, width=width)
        draw.text((f["box"][0] + 3, f["box"][1] + 2), f"{f['p_fake']:.2f}", fill=colour, font=font)
    if strip:
        p = "no face found" if v["p_fake"] is None else f"p_fake {v['p_fake']:.4f}"
        colour = {"fake": (255, 90, 90), "real": (90, 220, 110)}.get(v["label"], (200, 200, 200))
        draw.text((6, h + 4), f"{v['label']}  {p}  (threshold {v['threshold']:.4f})", fill=colour, font=font)
        if model:
            draw.text((6, h + 8 + size), model, fill=(200, 200, 200), font=font)
    return np.asarray(pil)


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def heatmap_png(ex: Explanation) -> bytes:
    """The heatmap alone as an 8-bit grayscale PNG (255 = the hottest pixel)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((ex.heatmap * 255).round().astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def to_json(ex: Explanation, overlay_png: bytes) -> dict:
    """The verdict with the overlay and the bare heatmap as base64 PNGs (what POST /v1/explain returns)."""
    return {**ex.verdict, "overlay_png": base64.b64encode(overlay_png).decode(),
            "heatmap_png": base64.b64encode(heatmap_png(ex)).decode()}


def write_explanations(predictor, paths: list[Path], out_dir: Path) -> list[dict]:
    """`defakenet explain`: per image OUT/NAME.explain.png (the overlay) and NAME.heatmap.png; the verdicts with
    the files written, or {"path", "error"} for an unreadable file."""
    from defakenet.data.image import load_rgb
    from defakenet.errors import DataError

    out_dir.mkdir(parents=True, exist_ok=True)
    results, used = [], set()
    for path in paths:
        try:
            image = load_rgb(path)
        except DataError as e:
            results.append({"path": str(path), "error": str(e)})
            continue
        (ex,) = explain(predictor, [image])
        stem = path.stem
        while stem in used:  # two inputs of one name from different folders
            stem += "_"
        used.add(stem)
        over, heat = out_dir / f"{stem}.explain.png", out_dir / f"{stem}.heatmap.png"
        over.write_bytes(png_bytes(overlay(image, ex, model_label(predictor))))
        heat.write_bytes(heatmap_png(ex))
        results.append({"path": str(path), **ex.verdict, "model": predictor.identity, "overlay": str(over),
                        "heatmap": str(heat)})
    return results


# the gallery of the evaluation report: this many false positives and as many false negatives per set
GALLERY_PER_KIND = 3


def mistakes_gallery(predictor, cells: list[dict], out_dir: Path, per_kind: int = GALLERY_PER_KIND) -> str:
    """The evaluation report's gallery: per set (its undegraded cell), the `per_kind` most confident false
    positives (real images scored highest) and false negatives (fakes scored lowest), each as a Grad-CAM overlay
    under OUT/gallery/; returns the report.md section ("" when there are no mistakes or no undegraded cells)."""
    from defakenet.data.image import load_rgb
    from defakenet.errors import DataError

    t = predictor.threshold
    lines = []
    for c in cells:
        if c["degradation"] != "none" or not c.get("paths"):
            continue  # a heatmap of the clean file would not explain the degraded one's score
        labels, scores = np.asarray(c["labels"]), np.asarray(c["scores"])
        fp = [i for i in np.argsort(-scores) if labels[i] == 0 and scores[i] >= t][:per_kind]
        fn = [i for i in np.argsort(scores) if labels[i] == 1 and scores[i] < t][:per_kind]
        shown = []
        for kind, idx in (("false positive", fp), ("false negative", fn)):
            for k, i in enumerate(idx):
                try:
                    image = load_rgb(c["paths"][i])
                except DataError:
                    continue
                (ex,) = explain(predictor, [image])
                name = f"{c['set']}_{'fp' if kind == 'false positive' else 'fn'}{k + 1}.png"
                (out_dir / "gallery").mkdir(parents=True, exist_ok=True)
                (out_dir / "gallery" / name).write_bytes(png_bytes(overlay(image, ex, model_label(predictor))))
                shown.append(f"| {kind} | `{Path(c['paths'][i]).name}` | {scores[i]:.4f} | "
                             f"![{name}](gallery/{name}) |")
        if shown:
            lines += [f"### {c['set']}", "", "| mistake | file | p_fake | Grad-CAM |", "| --- | --- | --- | --- |",
                      *shown, ""]
    if not lines:
        return ""
    return "\n".join(["## Most confident mistakes", "",
                      f"Per set (undegraded), the {per_kind} real images scored most fake and the {per_kind} fakes "
                      f"scored most real at threshold {t:.4f}, with Grad-CAM heatmaps of what raised the score of "
                      "the class the model chose (defakenet explain).", "", *lines])
