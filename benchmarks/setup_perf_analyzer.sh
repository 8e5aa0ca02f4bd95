#!/usr/bin/env bash
# Triton's perf_analyzer, for `python benchmarks/run.py --perf-analyzer`. Idempotent.
#
#   bash benchmarks/setup_perf_analyzer.sh [VENV]      (default: benchmarks/.work/pa-venv)
#
# The perf_analyzer that runs on this machine's glibc ships in tritonclient[all]==2.51.0
# (newer wheels need glibc 2.38); it needs libb64 (Debian: libb64-0d) and libcudart.so.12, which the
# nvidia-cuda-runtime-cu12 wheel provides (no GPU needed). The wrapper $VENV/bin/pa sets LD_LIBRARY_PATH.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${1:-$HERE/.work/pa-venv}"
PYTHON="${PYTHON:-python3}"

if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  echo "installing libb64-0d (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libb64-0d
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("tritonclient") != "2.51.0")' 2>/dev/null \
   || ! "$VENV/bin/python" -c 'import nvidia.cuda_runtime' 2>/dev/null; then
  echo "installing tritonclient[all]==2.51.0 nvidia-cuda-runtime-cu12"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "tritonclient[all]==2.51.0" "nvidia-cuda-runtime-cu12" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
fi

LIB="$("$VENV/bin/python" -c 'import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], "lib"))')"
cat > "$VENV/bin/pa" <<WRAP
#!/usr/bin/env bash
# perf_analyzer with the CUDA runtime wheel's libcudart on the library path (written by setup_perf_analyzer.sh).
export LD_LIBRARY_PATH="$LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$VENV/bin/perf_analyzer" "\$@"
WRAP
chmod +x "$VENV/bin/pa"

# The binary must start. perf_analyzer 2.51 has no --help: `--help` prints the usage and exits 99 (that
# still proves every shared library resolved, else the loader fails first with exit 127); --version exits 0.
set +e
"$VENV/bin/pa" --help > "$VENV/perf_analyzer-usage.txt" 2>&1
help_rc=$?
version="$("$VENV/bin/pa" --version 2>&1)"
version_rc=$?
set -e
if [ "$version_rc" -eq 0 ] && grep -q "SYNOPSIS" "$VENV/perf_analyzer-usage.txt"; then
  echo "perf_analyzer ok: $version; --help exit $help_rc, usage in $VENV/perf_analyzer-usage.txt"
  echo "run it as $VENV/bin/pa (sets LD_LIBRARY_PATH, wraps $VENV/bin/perf_analyzer)"
else
  head -5 "$VENV/perf_analyzer-usage.txt"; echo "$version"
  echo "perf_analyzer does not run; see above" >&2
  exit 1
fi
