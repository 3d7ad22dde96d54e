"""A small HTTP client for the serving endpoint (`defakenet predict IMG… --url URL`) and the one-line format of an
answer that offline `defakenet predict --model` prints too.

Standard library only (urllib), so it runs wherever defakenet is installed, without Ray.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from defakenet.errors import UserError

DEFAULT_URL = "http://127.0.0.1:8000"
# the environment variable holding the bearer token, on the server (ServeArgs.auth_token_env) and here
TOKEN_ENV = "DEFAKENET_SERVE_TOKEN"
_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def predict_file(path: str | Path, url: str = DEFAULT_URL, *, token: str | None = None,
                 timeout: float = 60.0, route: str = "/v1/predict") -> dict:
    """POST one file to `url` + `route` (/v1/predict, or /v1/predict-video for a video); the JSON answer, or
    {"error", "status"} for a refused one.

    UserError when the file cannot be read or nothing answers at `url`.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror or e})") from None
    headers = {"Content-Type": _CONTENT_TYPES.get(p.suffix.lower(), "application/octet-stream")}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"{url.rstrip('/')}{route}", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            message = json.loads(body).get("error") or body.decode(errors="replace")
        except (ValueError, AttributeError):
            message = body.decode(errors="replace")[:200]
        return {"error": message, "status": e.code}
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"no defakenet endpoint answers at {url} ({reason}); start one with `defakenet serve`") from None


def format_line(path: str | Path, result: dict) -> str:
    """One line per image, the same from the endpoint and offline (`defakenet predict --model`):
    `PATH  fake  p_fake=0.9312  threshold=0.5000  defakenet v3`, plus `faces=N` when the model scores faces,
    `PATH  no-face  (no face found)  …` when it found none, or the error."""
    if "error" in result:
        return f"{path}  error{' ' + str(result['status']) if result.get('status') else ''}: {result['error']}"
    m = result.get("model", {})
    model = str(m.get("name", "?")) + (f" v{m['version']}" if m.get("version") is not None else "")
    if result.get("p_fake") is None:
        return f"{path}  {result['label']}  (no face found)  threshold={result['threshold']:.4f}  {model}"
    line = f"{path}  {result['label']}  p_fake={result['p_fake']:.4f}  threshold={result['threshold']:.4f}  {model}"
    if "frames_sampled" in result:  # a video
        line += f"  frames={result['frames_sampled']} ({result['strategy']})"
    elif "faces" in result:
        line += f"  faces={len(result['faces'])}"
    return line
