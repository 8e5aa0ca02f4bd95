#!/usr/bin/env bash
# Triton's perf_analyzer, for `python benchmarks/run.py --perf-analyzer` and the integration tests
# (scripts/setup_kserve_envs.sh calls this for <repo>/.kserve-envs/perf-analyzer).
#
#   bash benchmarks/setup_perf_analyzer.sh [VENV]      (default: benchmarks/.work/pa-venv)
#
# The perf_analyzer that runs on this machine's glibc ships in tritonclient[all]==2.51.0
# (newer wheels need glibc 2.38); it needs libb64 (Debian: libb64-0d) and libcudart.so.12, which the
# nvidia-cuda-runtime-cu12 wheel provides (no GPU needed). The wrapper $VENV/bin/pa sets LD_LIBRARY_PATH.
#
# Unattended: as root it runs apt-get itself, otherwise through `sudo` (non-interactive unless stdin is a
# terminal). Idempotent and fast when done (libb64 listed by ldconfig, the stamp matches, `pa --version`
# runs: no apt-get, no pip). Quiet on success; on failure, why and the log's tail ($VENV.log) on stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${1:-$HERE/.work/pa-venv}"
PYTHON="${PYTHON:-python3}"
REQS=("tritonclient[all]==2.51.0" "nvidia-cuda-runtime-cu12")

VENV="${VENV%/}"
mkdir -p "$(dirname "$VENV")"
VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")" # absolute: the wrapper embeds it
LOG="$VENV.log"
STAMP="$VENV/.perf-analyzer-installed"

fail() {
  echo "setup_perf_analyzer: $*" >&2
  exit 1
}
show_log() {
  [ -f "$LOG" ] || return 0
  grep -v 'is ignored: it is neither a file nor a directory' "$LOG" | tail -n 40 >&2 || true
}
LDCONFIG="$(command -v ldconfig || echo /sbin/ldconfig)"
has_libb64() { "$LDCONFIG" -p 2>/dev/null | grep -q 'libb64\.so\.0d'; }
runs() { "$VENV/bin/pa" --version >/dev/null 2>&1; }

if has_libb64 && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${REQS[*]}" ] && runs; then
  exit 0
fi
: >"$LOG"

if ! has_libb64; then
  command -v apt-get >/dev/null 2>&1 \
    || fail "libb64.so.0d is not installed and there is no apt-get: install libb64 (Debian/Ubuntu: libb64-0d)"
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "libb64-0d is not installed: run this as root or install it (apt-get install libb64-0d)"
    if [ -t 0 ]; then SUDO=(sudo); else SUDO=(sudo -n); fi
  fi
  apt_install() {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends libb64-0d >>"$LOG" 2>&1
  }
  # The package lists are only refreshed when the install fails without (none yet, or stale).
  if ! apt_install; then
    "${SUDO[@]}" apt-get update -qq >>"$LOG" 2>&1 || { show_log; fail "apt-get update failed (log: $LOG)"; }
    apt_install || { show_log; fail "apt-get install libb64-0d failed (log: $LOG)"; }
  fi
  has_libb64 || fail "libb64-0d is installed but ldconfig does not list libb64.so.0d"
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" >>"$LOG" 2>&1 || { show_log; fail "cannot create a venv in $VENV with $PYTHON"; }
fi
if ! "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("tritonclient") != "2.51.0")' 2>/dev/null \
  || ! "$VENV/bin/python" -c 'import nvidia.cuda_runtime' 2>/dev/null \
  || [ ! -x "$VENV/bin/perf_analyzer" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${REQS[@]}" >>"$LOG" 2>&1 \
    || { show_log; fail "pip install ${REQS[*]} failed (log: $LOG)"; }
fi

LIB="$("$VENV/bin/python" -c 'import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], "lib"))')"
cat >"$VENV/bin/pa" <<WRAP
#!/usr/bin/env bash
# perf_analyzer with the CUDA runtime wheel's libcudart on the library path (written by setup_perf_analyzer.sh).
export LD_LIBRARY_PATH="$LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$VENV/bin/perf_analyzer" "\$@"
WRAP
chmod +x "$VENV/bin/pa"

# The binary must start. perf_analyzer 2.51 has no --help: `--help` prints the usage and exits 99 (that
# still proves every shared library resolved, else the loader fails first with exit 127); --version exits 0.
set +e
"$VENV/bin/pa" --help >"$VENV/perf_analyzer-usage.txt" 2>&1
version="$("$VENV/bin/pa" --version 2>&1)"
version_rc=$?
set -e
if [ "$version_rc" -ne 0 ] || ! grep -q "SYNOPSIS" "$VENV/perf_analyzer-usage.txt"; then
  {
    head -5 "$VENV/perf_analyzer-usage.txt"
    echo "$version"
  } >&2
  fail "$VENV/bin/pa does not run (--version exit $version_rc; see above)"
fi
echo "perf_analyzer ok: $version (run it as $VENV/bin/pa)" >>"$LOG"
printf '%s' "${REQS[*]}" >"$STAMP"
