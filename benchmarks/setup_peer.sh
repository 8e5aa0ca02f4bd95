#!/usr/bin/env bash
# The peer: MLServer 1.7.1 + mlserver-mlflow 1.7.1 in a virtualenv of its own, so that its
# dependencies never touch the project's venv. Idempotent: re-running only checks the versions.
#
#   bash benchmarks/setup_peer.sh [VENV]        (default: benchmarks/.work/peer-venv)
#
# torch==2.13.0 goes in FIRST, alone: on this machine that resolves to the local CPU wheel, whereas a
# bare `torch` requirement pulled in later by a dependency could fetch a multi-GB CUDA build.
# uvloop<0.22 and pandas<3: uvloop 0.22+ breaks MLServer 1.7.1's workers (MLServer issue 2286),
# pandas 3 breaks its PandasCodec.
# On a GPU machine (benchmarks/setup_gpu.sh): PEER_CUDA=1 accepts a CUDA build of torch, TORCH_SPEC
# replaces the torch requirement and PEER_TORCH the version checked (e.g. an image's own CUDA torch).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${1:-$HERE/.work/peer-venv}"
PYTHON="${PYTHON:-python3}"

TORCH="${TORCH_SPEC:-torch==2.13.0}"
export PEER_CUDA="${PEER_CUDA:-0}" PEER_TORCH="${PEER_TORCH:-2.13.0}"
PEER=("mlserver==1.7.1" "mlserver-mlflow==1.7.1" "uvloop<0.22" "pandas<3")

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
quiet() {  # drop pip's warnings about configured local index folders that do not exist; keep its exit code
  { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

have() {  # have PACKAGE VERSION-PREFIX
  "$VENV/bin/python" - "$1" "$2" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]).startswith(sys.argv[2]) else 1)
PY
}

if have torch "$PEER_TORCH"; then echo "torch $PEER_TORCH already there"; else
  echo "installing $TORCH (first, so nothing later pulls a CUDA build)"
  "${PIP[@]}" "$TORCH" 2>&1 | quiet
fi

if have mlserver 1.7.1 && have mlserver-mlflow 1.7.1 \
   && "$VENV/bin/python" -c 'import uvloop, pandas, sys; sys.exit(not (uvloop.__version__ < "0.22" and int(pandas.__version__.split(".")[0]) < 3))'; then
  echo "mlserver 1.7.1 + mlserver-mlflow 1.7.1 already there"
else
  echo "installing ${PEER[*]}"
  # torch is pinned again so that the resolver keeps the CPU wheel already installed.
  "${PIP[@]}" "$TORCH" "${PEER[@]}" 2>&1 | quiet
fi

# Fail loudly if the resolver swapped torch for another build, or the peer does not import.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md, os
import torch, mlserver, mlserver_mlflow, mlflow, uvloop, pandas  # noqa: F401
assert torch.__version__.startswith(os.environ["PEER_TORCH"]), torch.__version__
if os.environ["PEER_CUDA"] == "1":
    assert torch.version.cuda, "PEER_CUDA=1 but this torch is a CPU build"
else:
    assert not torch.version.cuda, f"a CUDA build of torch was installed ({torch.version.cuda})"
print("peer venv ok:", ", ".join(f"{p} {md.version(p)}" for p in
      ("mlserver", "mlserver-mlflow", "mlflow", "torch", "uvloop", "pandas", "numpy")))
PY
test -x "$VENV/bin/mlserver"
echo "peer mlserver: $VENV/bin/mlserver"
