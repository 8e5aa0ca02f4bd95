#!/usr/bin/env bash
# The wheelhouse for the GPU machine (scripts/device_check.sh): Python 3.12 manylinux wheels of what the
# project, its GPU tests, the suite's load generator and the peer (mlserver-mlflow with the full mlflow)
# need, less every package the device image already holds (/work/.library/device/KINDS.md, "Python
# packages already there"; torch above all). Measured 2026-12-02: about 48 MiB in 74 wheels; with the
# repository's ~5 MB that fits the 64 MiB a device call carries (`carry: ["build/device-wheels"]`).
#
#   bash scripts/device_wheels.sh [DIR]        # default build/device-wheels (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-build/device-wheels}"
py="${PYTHON:-.venv/bin/python}"
# The full mlflow pins its mlflow-skinny; the newest full mlflow on the index sets both (3.18.0 lacks its
# mlflow-tracing there): the runtime works with either.
mlflow_req="${MLFLOW_REQ:-mlflow==3.17.2}"
image_has=(
  absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
  charset-normalizer click cloudpickle colorama contourpy cycler filelock fonttools frozenlist fsspec grpcio
  h11 httpcore httpx hypothesis idna iniconfig jinja2 joblib kiwisolver markdown markdown-it-py markupsafe
  matplotlib mdurl ml-dtypes mpmath msgpack multidict networkx numpy packaging pandas pillow pip pluggy
  prometheus-client propcache protobuf psutil pyarrow pygments pyparsing pytest pytest-timeout
  python-dateutil pyyaml regex requests rich scikit-learn scipy setuptools six sortedcontainers sympy
  threadpoolctl torch tqdm triton typing-extensions urllib3 werkzeug wheel wrapt yarl zipp
)
platforms=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
  "${platforms[@]}" -d "$tmp" "mlserver==1.7.1" "mlserver-mlflow==1.7.1" "$mlflow_req" "pydantic-settings>=2" \
  httptools "uvicorn>=0.55,<0.56" "uvloop<0.22" "tritonclient[http,grpc]" 2> >(grep -v 'is ignored' >&2)
rm -rf "$dest"
mkdir -p "$dest"
"$py" - "$tmp" "$dest" "${image_has[@]}" <<'PY'
import re, shutil, sys
from pathlib import Path
src, dest, have = Path(sys.argv[1]), Path(sys.argv[2]), {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[3:]}
for wheel in sorted(src.glob("*.whl")):
    if re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower() not in have:
        shutil.copy2(wheel, dest / wheel.name)
PY
count=$(find "$dest" -name '*.whl' | wc -l)
echo "device_wheels: $count wheels, $(du -sm "$dest" | cut -f1) MiB in $dest"
