#!/usr/bin/env bash
# The GPU suite's setup (benchmarks/gpu.py) on a CUDA machine: the project venv (.venv) and the peer venv
# (benchmarks/.work/peer-venv), both on a CUDA build of torch, plus matplotlib for the plot. Idempotent.
#
#   bash benchmarks/setup_gpu.sh                   # internet: torch==2.13.0 from PyPI, the CUDA build on
#                                                  # Linux x86_64 (CUDA 13: NVIDIA driver >= 580)
#   SYSTEM_TORCH=1 bash benchmarks/setup_gpu.sh    # keep the CUDA torch that python3 already has (an image
#                                                  # that ships one): its site-packages go on the venvs'
#                                                  # path (a .pth; works when python3 is itself a venv)
#   WHEELHOUSE=DIR bash benchmarks/setup_gpu.sh    # no internet: install only from DIR (pip --no-index)
#   PEER_VENV=.venv bash benchmarks/setup_gpu.sh   # one venv for both (half the installs; both servers
#                                                  # are MLServer 1.7.1): then gpu.py --peer-venv .venv
#   bash benchmarks/setup_gpu.sh download DIR      # on a connected x86_64 Linux machine: fill DIR with the
#                                                  # wheels the two venvs need, torch left out (TARGET_PY,
#                                                  # e.g. 3.12: the GPU machine's Python; default this one's)
#
# Not run on a GPU machine yet (none was lent when it was written): check its output there. The wheelhouse
# holds every dependency (mlserver-mlflow needs the full mlflow): over 64 MiB is likely; where that is too
# much to carry, fetch with --no-deps only what the GPU machine's image lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
PEER_VENV="${PEER_VENV:-benchmarks/.work/peer-venv}"
CLIENT=("tritonclient[http,grpc]" "matplotlib")  # the load generator and the plot
PEER_PACKAGES=("mlserver==1.7.1" "mlserver-mlflow==1.7.1" "uvloop<0.22" "pandas<3")

if [ "${1:-}" = download ]; then
  dest="${2:?usage: setup_gpu.sh download DIR}"
  target="${TARGET_PY:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}"
  platforms=()
  for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
  done
  # No torch: none of these needs it, and the GPU machine brings (or downloads) its own CUDA build.
  "$PY" -m pip download --only-binary=:all: --python-version "$target" "${platforms[@]}" -d "$dest" \
    "${PEER_PACKAGES[@]}" "${CLIENT[@]}" mlflow-skinny "pydantic>=2" "pydantic-settings>=2" cloudpickle \
    pyyaml "setuptools>=68" wheel
  du -sh "$dest"
  exit 0
fi

if [ -n "${WHEELHOUSE:-}" ]; then
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$(cd "$WHEELHOUSE" && pwd)"
fi
sites=""
if [ "${SYSTEM_TORCH:-0}" = 1 ]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else "python3 has a CPU build of torch")'
  sites="$("$PY" -c 'import site; print("\n".join(site.getsitepackages()))')"
  system_torch="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  export TORCH_SPEC="torch==$system_torch" PEER_TORCH="$system_torch"
else
  export TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
fi
for venv in .venv "$PEER_VENV"; do
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  if [ -n "$sites" ]; then  # after the venv's own site-packages: what the venv installs wins
    purelib="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    printf '%s\n' "$sites" >"$purelib/_system_torch.pth"
  fi
done

# The project venv: scripts/setup_env.sh (torch first, then the project), then the client and the plot.
EXTRAS="" VENV=.venv bash scripts/setup_env.sh
.venv/bin/python -m pip install -q --disable-pip-version-check "${CLIENT[@]}"
# The peer: benchmarks/setup_peer.sh, told that a CUDA torch is expected here.
PEER_CUDA=1 bash benchmarks/setup_peer.sh "$PEER_VENV"

for python in .venv/bin/python "$PEER_VENV/bin/python"; do
  "$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible"
print(f"{__import__("sys").prefix}: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")'
done
echo "ready: .venv/bin/python benchmarks/gpu.py --peer-venv $PEER_VENV"
