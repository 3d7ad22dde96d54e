"""`make demo`'s whole loop, as a user runs it: `python -m defakenet demo --home DIR` in its own process.

synth → train → evaluate → tune → champion → Ray Serve on 127.0.0.1 → predictions over HTTP → shut down. The
process drives the session's Ray instance (RAY_ADDRESS), as the other multi-process tests do: Ray Train's
placement-group cleaner needs one instance per machine. Evidence: the process's output (six prediction lines),
the MLflow registry it left in DIR, and the endpoint no longer answering once it exited.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.parse

import pytest

from defakenet import tracking

pytestmark = pytest.mark.slow

# a prediction line (not anchored: a log line forwarded from the cluster can share a terminal line with it)
LINE = re.compile(r"(/\S+\.png)  (real|fake)  p_fake=([0-9.]+)  threshold=([0-9.]+)  defakenet v(\d+)  "
                  r"\(truly (real|fake)\)")


def test_demo_runs_the_whole_loop_and_shuts_down(ray_session, tmp_path):
    home = tmp_path / "demo"
    # as on a fresh machine: no tracking server (mlflow.set_tracking_uri in this process sets the variable)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["RAY_ADDRESS"] = ray_session.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, "-m", "defakenet", "demo", "--home", str(home)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    (tmp_path / "demo.log").write_text(proc.stdout)
    out = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", proc.stdout)  # colours and cursor moves from forwarded Ray logs
    assert proc.returncode == 0, out[-4000:]
    for step in range(1, 8):
        assert f"[{step}/7]" in out, out[-4000:]

    # the registry the demo left: the trained version and the study's winner, one of them champion
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert f"--backend-store-uri {uri}" in out, out[-4000:]
    versions = tracking.client(uri).search_model_versions("name = 'defakenet'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    champion = tracking.get_version_by_alias("defakenet", "champion", tracking_uri=uri)
    assert champion in (1, 2)

    # six answers over HTTP, three real and three fake test images, all from the champion
    answers = LINE.findall(out)
    assert len(answers) == 6, out[-4000:]
    assert sorted(a[5] for a in answers) == ["fake"] * 3 + ["real"] * 3
    for path, label, p, threshold, version, _truth in answers:
        assert os.path.isfile(path) and 0.0 <= float(p) <= 1.0 and int(version) == champion
        assert label == ("fake" if float(p) >= float(threshold) else "real")
    # the replica's per-request lines went to Serve's log files, not between the predictions
    assert '"event": "predict"' not in out, out[-4000:]
    right = sum(a[1] == a[5] for a in answers)
    assert f"{right} of 6 right" in out and right >= 4, out[-4000:]

    # it said where everything is, and the endpoint it named is gone
    for where in ("model:", "evaluation:", "study:", "MLflow UI:", "endpoint:"):
        assert re.search(rf"^{where} ", out, re.M), (where, out[-4000:])
    assert (home / "evaluation" / "report.md").is_file()
    url = re.search(r"^endpoint:\s+was (http://\S+)/v1/predict", out, re.M).group(1)
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    with socket.socket() as s:
        assert s.connect_ex((parts.hostname, parts.port)) != 0, f"{url} still accepts connections"
