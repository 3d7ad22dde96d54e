"""Ray Job submission: send a `jobs/*.yaml` definition to a cluster, stream its logs, return its final status.

A job file holds `entrypoint`, `runtime_env` and optional `entrypoint_num_cpus` / `entrypoint_num_gpus` /
`entrypoint_resources` / `name`, exactly the arguments of `JobSubmissionClient.submit_job`. Ray token
authentication is picked up the way Ray's own CLI picks it up ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token); `--token` (or $RAY_AUTH_TOKEN) is sent as the Authorization header.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from defakenet.config import load_file
from defakenet.errors import UserError

JOB_KEYS = ("name", "entrypoint", "runtime_env", "entrypoint_num_cpus", "entrypoint_num_gpus",
            "entrypoint_memory", "entrypoint_resources", "metadata")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# how long a submission waits for the job agent of a head that has just started
AGENT_WAIT_S = 60.0


def load_job(path: str | Path) -> dict:
    """Read and check a job definition; errors name the file and the valid keys."""
    p = Path(path)
    job = load_file(p, what="job file")
    if not isinstance(job.get("entrypoint"), str):
        raise UserError(f"job file {p} needs an `entrypoint:` command string")
    unknown = sorted(set(job) - set(JOB_KEYS))
    if unknown:
        raise UserError(f"job file {p}: unknown key {unknown[0]}; valid keys: {', '.join(JOB_KEYS)}")
    env = job.get("runtime_env") or {}
    wd = env.get("working_dir")
    if wd and "://" not in wd:
        # relative to the directory the command runs in, as with `ray job submit --working-dir`
        env = {**env, "working_dir": str(Path(wd).resolve())}
    return {**job, "runtime_env": env}


def build_entrypoint(job: dict, sets: list[str], extra: list[str]) -> str:
    """The job's entrypoint with `--set k=v` overrides and extra arguments appended, shell-quoted."""
    parts = [job["entrypoint"]]
    parts += [f"--set {shlex.quote(s)}" for s in sets]
    parts += [shlex.quote(a) for a in extra]
    return " ".join(parts)


# entrypoint options whose value is a path the job reads on the cluster, as flags and as config keys
PATH_FLAGS = {"--data": "data.root", "--model": "", "--weights": "model.weights", "--home": "tracking.home",
              "--storage": "tracking.storage"}


def relative_paths(sets: list[str], extra: list[str]) -> list[str]:
    """Path values given to a job as relative paths (`--set data.root=x`, `-- --data x`): on the cluster they resolve
    inside the job's uploaded working_dir, where what the working_dir excludes (.defakenet, data) is not."""
    keys = {k for k in PATH_FLAGS.values() if k}
    given = [(k.strip(), v) for k, _, v in (item.partition("=") for item in sets) if k.strip() in keys]
    given += [(flag, value) for flag, value in zip(extra, extra[1:]) if flag in PATH_FLAGS]
    given += [(f, v) for f, eq, v in (arg.partition("=") for arg in extra) if eq and f in PATH_FLAGS]
    return [f"{k}={v}" if k in keys else f"{k} {v}" for k, v in given if _is_relative(v)]


def _is_relative(value: str) -> bool:
    value = value.strip()
    return bool(value) and "://" not in value and not value.startswith(("/", "~", "models:/", "runs:/"))


def _client(address: str, token: str | None):
    """A JobSubmissionClient for `address` (the Jobs SDK lets $RAY_ADDRESS override an explicit address: not here)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        # an explicit token travels as the Authorization header, the way Ray's own client sends it
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as e:
        raise UserError(f"the Ray cluster at {address} refused the auth token ({str(e).splitlines()[0]}); pass "
                        "--token or set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head)") from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot reach the Ray job server at {address}: {str(e).splitlines()[0]}") from None
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def _submit_when_ready(client, *, wait_s: float = AGENT_WAIT_S, **kwargs) -> str:
    """submit_job, retried while a freshly started head has no job agent yet (HTTP 500 "No available agent")."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            print("waiting for the cluster's job agent…", file=sys.stderr, flush=True)
            time.sleep(2)


def submit(path: str | Path, *, address: str | None = None, sets: list[str] = (), extra: list[str] = (),
           follow: bool = False, token: str | None = None, wait_s: float | None = None) -> int:
    """Submit the job; with `follow`, stream its logs and return 0 if it SUCCEEDED, else 1."""
    from ray.job_submission import JobStatus

    job = load_job(path)
    for given in relative_paths(list(sets), list(extra)):
        print(f"defakenet: note: {given} is a relative path; the job resolves it inside its uploaded working_dir on the "
              "cluster, without the folders the job excludes: pass an absolute path on shared storage, or a URI",
              file=sys.stderr)
    token = token or os.environ.get("RAY_AUTH_TOKEN")
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    client = _client(address, token)
    entrypoint = build_entrypoint(job, list(sets), list(extra))
    kwargs = {k: job[k] for k in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory",
                                  "entrypoint_resources", "metadata") if job.get(k) is not None}
    submission_id = f"{job.get('name', 'defakenet')}-{time.strftime('%Y%m%d-%H%M%S')}"
    job_id = _submit_when_ready(client, entrypoint=entrypoint, runtime_env=job["runtime_env"] or None,
                                submission_id=submission_id, **kwargs)
    print(f"submitted {job_id} to {address}: {entrypoint}", flush=True)
    if not follow:
        print(f"follow with: ray job logs --follow --address {address} {job_id}")
        return 0
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout=wait_s))
    except asyncio.TimeoutError:
        client.stop_job(job_id)
        print(f"\njob {job_id} still running after {wait_s:.0f}s: stopped", file=sys.stderr)
        return 1
    deadline = time.monotonic() + 30
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
