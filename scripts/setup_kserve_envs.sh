#!/usr/bin/env bash
# Throw-away virtualenvs holding KServe's real code and Triton's perf_analyzer, for the integration
# tests. They are separate from the project's own environment because kserve pins clash with ours
# (numpy, pandas, fastapi, ...), and kserve's generated protobufs `inference.*` clash with MLServer's
# and tritonclient's (tests run the SDK in a subprocess with its venv's python; see tests/client_envs.py).
#
#   $KSERVE_ENVS/current        kserve-storage (newest on PyPI):  from kserve_storage import Storage
#   $KSERVE_ENVS/v0.14.1        kserve[storage]==0.14.1 (flattens: kserve PR 3205):  from kserve.storage import Storage
#   $KSERVE_ENVS/sdk            kserve==0.21.0, the Python SDK's clients:  from kserve import InferenceRESTClient
#   $KSERVE_ENVS/mlflow-server  mlflow[auth] (the full server) + boto3, for tests/mlflow_server.py
#   $KSERVE_ENVS/perf-analyzer  tritonclient[all]==2.51.0's perf_analyzer, run as perf-analyzer/bin/pa
#                               (benchmarks/setup_perf_analyzer.sh; apt-get installs libb64-0d if missing)
#
# The storage ones download with `Storage.download(uri, out_dir)`. KSERVE_ENVS defaults to
# <repo>/.kserve-envs (git-ignored). Idempotent: an environment that was built from the same
# requirement and still imports is left alone; anything else is rebuilt from scratch. Quiet unless
# something fails. No Python environment here may contain torch: none of this code needs it, and a
# torch install here would mean a dependency changed under us.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
envs="${KSERVE_ENVS:-$repo/.kserve-envs}"
python="${KSERVE_PYTHON:-python3}"
# Pin the current one with KSERVE_STORAGE_REQ=kserve-storage==X.Y.Z to reproduce a run.
current_req="${KSERVE_STORAGE_REQ:-kserve-storage}"
old_req="kserve[storage]==0.14.1"
sdk_req="kserve==0.21.0"
# The tracking server of tests/mlflow_server.py: the full mlflow at the project's own mlflow-skinny version
# (the newest release not past it: a client never newer than its server), with boto3 for S3 artifacts and the basic-auth app.
skinny="$("${VENV:-$repo/.venv}/bin/python" -c 'import importlib.metadata as m; print(m.version("mlflow-skinny"))' 2>/dev/null || true)"
mlflow_req="${MLFLOW_SERVER_REQ:-mlflow[auth]${skinny:+<=$skinny} boto3}"

mkdir -p "$envs"
envs="$(cd "$envs" && pwd)"

fail() {
  echo "setup_kserve_envs: $*" >&2
  exit 1
}

# Serialise concurrent runs (two pytest sessions on one machine) where flock exists.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$envs/.lock"
  flock 9
fi

# A constraint nothing satisfies: if either package ever depends on torch, pip stops with a
# resolution error naming torch instead of downloading gigabytes.
no_torch="$envs/no-torch-constraints.txt"
printf 'torch<0\n' >"$no_torch"

ready() { # name requirement import-statement
  local dir="$envs/$1"
  [[ -x "$dir/bin/python" && -f "$dir/.installed" ]] || return 1
  [[ "$(cat "$dir/.installed")" == "$2" ]] || return 1
  "$dir/bin/python" -c "$3" >/dev/null 2>&1
}

build() { # name requirement import-statement
  local name="$1" req="$2" check="$3" dir="$envs/$1" log="$envs/$1.log"
  if ready "$name" "$req" "$check"; then
    return 0
  fi
  rm -rf "$dir"
  "$python" -m venv "$dir" >"$log" 2>&1 || { cat "$log" >&2; fail "cannot create a venv in $dir with $python"; }
  local -a reqs
  read -ra reqs <<<"$req" # several requirements, separated by spaces
  if ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      -c "$no_torch" "${reqs[@]}" >>"$log" 2>&1; then
    grep -v 'is ignored: it is neither a file nor a directory' "$log" | tail -n 40 >&2
    if grep -v 'is ignored: it is neither a file nor a directory' "$log" | grep -qi 'torch'; then
      fail "installing '$req' wants torch (see above, full log: $log); these venvs must not contain torch"
    fi
    fail "pip install '$req' failed (full log: $log)"
  fi
  if "$dir/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
    fail "torch ended up in $dir after installing '$req'; these venvs must not contain torch"
  fi
  if ! "$dir/bin/python" -c "$check" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "'$req' installed in $dir but '$check' fails (full log: $log)"
  fi
  printf '%s' "$req" >"$dir/.installed"
}

build current "$current_req" "from kserve_storage import Storage; Storage.download"
build v0.14.1 "$old_req" "from kserve.storage import Storage; Storage.download"
build sdk "$sdk_req" "from kserve import InferenceRESTClient, InferenceGRPCClient, RESTConfig, InferInput"
build mlflow-server "$mlflow_req" "import mlflow.server, mlflow.server.auth, sqlalchemy, boto3"
# Quiet on success itself; prints why (and its log's tail) on stderr when it fails.
PYTHON="$python" bash "$repo/benchmarks/setup_perf_analyzer.sh" "$envs/perf-analyzer" >/dev/null \
  || fail "benchmarks/setup_perf_analyzer.sh failed for $envs/perf-analyzer (log: $envs/perf-analyzer.log)"
