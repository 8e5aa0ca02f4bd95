#!/usr/bin/env bash
# The one prepared script for the GPU machine (issue 14): one environment, no venvs, every step under its own
# timeout with its log under $OUT, at most 8 minutes in all. Built for the device tool:
#
#   bash scripts/device_wheels.sh                                   # here, once: build/device-wheels (49 MiB)
#   run(command="bash scripts/device_check.sh", carry=["build/device-wheels"], timeout_s=540)
#   DRY_RUN=1 OUT=/tmp/dry bash scripts/device_check.sh             # the CPU dry run (CI: test_device_check)
#
# On the device its plain python3 (3.12, torch 2.11 + CUDA) gets the wheels installed with --no-index
# --no-deps into /tmp/torchflow-env/site, and a bin/ with `python` and `mlserver` for the suite. The dry run
# uses this checkout's .venv and tiny models instead. $OUT/steps.txt says each step's exit status and time.
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
OUT="${OUT:?set OUT (the device tool sets it)}"
mkdir -p "$OUT"
dry="${DRY_RUN:-0}"
: >"$OUT/steps.txt"

step() { # name seconds command...: the command's output in $OUT/<name>.log, its status in steps.txt
  local name="$1" limit="$2" started rc
  shift 2
  started=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(($(date +%s) - started))s" | tee -a "$OUT/steps.txt"
  return 0
}

if [ "$dry" = 1 ]; then
  py="$repo/.venv/bin/python"
  scale=(--tiny)
  suite=(--models bert --formats pt2 --dtypes fp32 --servers ours,floor --ours batched --concurrency 1,4
    --duration 1 --warmup 0.5 --raw-seconds 0.2)
  stages=(--scale tiny --rows 8 --repeats 3)
  gpu_tests=(-k "devices or transfers or compile")
else
  env_dir=/tmp/torchflow-env
  mkdir -p "$env_dir/bin"
  step install 120 python3 -m pip install --no-index --no-deps --no-compile --quiet \
    --target "$env_dir/site" build/device-wheels/*.whl
  ln -sf "$(command -v python3)" "$env_dir/bin/python"
  printf '#!/bin/sh\nexec %s -c "from mlserver.cli import main; main()" "$@"\n' "$env_dir/bin/python" \
    >"$env_dir/bin/mlserver"
  chmod +x "$env_dir/bin/mlserver"
  export PYTHONPATH="$env_dir/site:$repo" PATH="$env_dir/bin:$PATH" BENCH_PEER_VENV="$env_dir"
  py="$env_dir/bin/python"
  scale=()
  suite=(--models resnet50,bert --formats pt2 --dtypes fp16 --servers ours,peer,floor --ours batched,unbatched
    --peer batched --concurrency 1,64 --duration 4 --warmup 1 --raw-seconds 0.5)
  stages=(--scale full --rows 64 --repeats 10 --trace "$OUT/stages-trace.json")
  gpu_tests=()
fi
export PYTHONUNBUFFERED=1

step versions 60 "$py" -c '
import importlib.metadata as m, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
for p in ("mlserver", "mlflow-skinny", "mlflow", "mlserver-mlflow", "fastapi", "uvicorn", "pydantic", "tritonclient", "numpy"):
    try: print(p, m.version(p))
    except m.PackageNotFoundError: print(p, "absent")
import mlserver_torchflow.serving.runtime  # the runtime imports with these
print("imports ok")'
step copies 60 "$py" benchmarks/device_probe.py copies
step graphs 120 "$py" benchmarks/device_probe.py graphs
step pytest-gpu 150 "$py" -m pytest -q -p no:cacheprovider tests/gpu "${gpu_tests[@]}"
step stages 90 "$py" benchmarks/device_probe.py stages "${stages[@]}"
step suite 240 "$py" benchmarks/gpu.py "${scale[@]}" "${suite[@]}" --out "$OUT/suite" --work /tmp/torchflow-gpu-work
echo "device_check: done; $(grep -c 'rc=0 ' "$OUT/steps.txt") of $(wc -l <"$OUT/steps.txt") steps passed"
