#!/usr/bin/env bash
# Smoke test of the container image on a machine without a Docker engine and without registry access:
#   1. debootstrap a minimal Debian bookworm with python3.11 and import it as a local base image;
#   2. build the Dockerfile with buildah (VARIANT=cpu, torch from a local wheel when one is found);
#   3. run it with podman as user 1000, a read-only root filesystem, a tmpfs at /tmp and a read-only
#      MLflow model at /mnt/models, and check: model ready, a V2 REST inference (HTTP 200, output-0 [2, 3]),
#      /metrics, gRPC (when tritonclient is installed), no writes outside /tmp, a clean SIGTERM stop.
# Prints the build time and the image size. Exits non-zero on any failure; always removes its container.
#
# Needs root (debootstrap, vfs storage), buildah, podman, debootstrap, curl, and a Python with torch,
# mlflow-skinny and scipy to save the test model (default: .venv/bin/python of this repository).
#
# Environment knobs (all optional):
#   IMAGE=localhost/mlserver-torchflow:cpu-smoke   image tag to build
#   BASE_IMAGE=localhost/bookworm-python:3.11       local base image (made with debootstrap if missing)
#   REBUILD_BASE=1                                  debootstrap the base again even if it exists
#   NO_CACHE=1                                      build without buildah's layer cache (a cold build)
#   HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
#                                                   CA bundle copied into the base image and named in PIP_CERT /
#                                                   SSL_CERT_FILE, so pip inside the build trusts what the host
#                                                   trusts (a TLS-intercepting proxy here); empty to skip
#   DEBIAN_MIRROR=<url>                             mirror for debootstrap (default: from /etc/apt/sources.list*)
#   TORCH_VERSION=2.13.0                            torch release to install
#   TORCH_WHEEL=<path>                              local CPU torch wheel (default /opt/wheels/torch-$TORCH_VERSION+cpu-*.whl)
#   TORCH_INDEX_URL=<url>                           torch index inside the build (default: PyPI when a local
#                                                   wheel is used, else the image's default CPU index)
#   PIP_INDEX_URL=https://pypi.org/simple           index for the other dependencies inside the build
#   PYTHON=.venv/bin/python                         Python used to save the test model on the host
#   HTTP_PORT=18080 GRPC_PORT=18081 METRICS_PORT=18082   loopback host ports mapped to the image's 8080/8081/8082
#   PODMAN_RUNTIME=runc                             OCI runtime for podman run (crun refuses hybrid cgroups here)
#   PODMAN_RUN_OPTS="--ulimit nofile=16384:16384 --ulimit nproc=8192:8192"
#                                                   podman's default rlimits cannot be set in this sandbox
#   READY_TIMEOUT=300                               seconds to wait for the model to be ready
#   KEEP_IMAGE=1                                    keep the image (default: kept; set 0 to remove it)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

IMAGE=${IMAGE:-localhost/mlserver-torchflow:cpu-smoke}
BASE_IMAGE=${BASE_IMAGE:-localhost/bookworm-python:3.11}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
HTTP_PORT=${HTTP_PORT:-18080}
GRPC_PORT=${GRPC_PORT:-18081}
METRICS_PORT=${METRICS_PORT:-18082}
READY_TIMEOUT=${READY_TIMEOUT:-300}
KEEP_IMAGE=${KEEP_IMAGE:-1}
WORK=$ROOT/build/image-smoke
CONTAINER=torchflow-smoke-$$
STORAGE=(--storage-driver vfs)
BASE_NOTE="reused $BASE_IMAGE"
OUR_WHEEL=""          # the wheel this script put in build/wheels (removed again on exit)
OUR_WHEELS_DIR=0      # 1 when this script created build/wheels
PODMAN_RUNTIME=${PODMAN_RUNTIME:-runc}
read -r -a RUN_OPTS <<<"${PODMAN_RUN_OPTS:---ulimit nofile=16384:16384 --ulimit nproc=8192:8192}"
RUN_OPTS=(--runtime "$PODMAN_RUNTIME" "${RUN_OPTS[@]}")

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local rc=$?
    if podman "${STORAGE[@]}" container exists "$CONTAINER" 2>/dev/null; then
        if [ "$rc" -ne 0 ]; then
            echo "--- container logs (last 80 lines) ---" >&2
            podman "${STORAGE[@]}" logs --tail 80 "$CONTAINER" >&2 || true
        fi
        podman "${STORAGE[@]}" rm -f "$CONTAINER" >/dev/null 2>&1 || true
    fi
    [ -n "$OUR_WHEEL" ] && rm -f "$OUR_WHEEL"
    [ "$OUR_WHEELS_DIR" = 1 ] && rm -rf "$ROOT/build/wheels"
    if [ "$KEEP_IMAGE" = 0 ]; then
        podman "${STORAGE[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
    fi
    [ "$rc" -eq 0 ] && echo "SMOKE TEST PASSED" >&2 || echo "SMOKE TEST FAILED (exit $rc)" >&2
    exit "$rc"
}
trap cleanup EXIT

# --- 0. tools ---------------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root (debootstrap and rootful vfs storage)"
missing=()
for tool in buildah podman debootstrap curl "$PODMAN_RUNTIME"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
[ -x "$PYTHON" ] || die "no Python at $PYTHON (set PYTHON=...)"
"$PYTHON" -c 'import mlflow.pytorch, scipy, torch' 2>/dev/null \
    || die "$PYTHON needs torch, mlflow-skinny and scipy to save the test model (pip install scipy)"
for port in "$HTTP_PORT" "$GRPC_PORT" "$METRICS_PORT"; do
    ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "port $port is already in use (set HTTP_PORT=...)"
done
mkdir -p "$WORK"

# --- 1. base image from debootstrap -----------------------------------------------------------------------
if [ "${REBUILD_BASE:-0}" = 1 ] || ! podman "${STORAGE[@]}" image exists "$BASE_IMAGE"; then
    if [ -z "${DEBIAN_MIRROR:-}" ]; then
        DEBIAN_MIRROR=$(grep -hoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
            /etc/apt/sources.list.d/* 2>/dev/null | awk '{print $2}' | head -n1 || true)
        DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    fi
    log "debootstrap bookworm from $DEBIAN_MIRROR -> $BASE_IMAGE"
    rootfs=$WORK/rootfs
    rm -rf "$rootfs"
    t0=$SECONDS
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    import_changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
                    --change 'ENV LANG=C.UTF-8')
    HOST_CA_BUNDLE=${HOST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
    if [ -n "$HOST_CA_BUNDLE" ] && [ -f "$HOST_CA_BUNDLE" ]; then
        cp "$HOST_CA_BUNDLE" "$rootfs/etc/ssl/certs/host-ca-bundle.crt"
        for var in PIP_CERT SSL_CERT_FILE REQUESTS_CA_BUNDLE; do
            import_changes+=(--change "ENV $var=/etc/ssl/certs/host-ca-bundle.crt")
        done
    fi
    tar --numeric-owner -C "$rootfs" -c . | podman "${STORAGE[@]}" import "${import_changes[@]}" \
        --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    BASE_NOTE="made with debootstrap in $((SECONDS - t0))s"
    echo "base image $BASE_NOTE" >&2
fi
podman "${STORAGE[@]}" run --rm "${RUN_OPTS[@]}" --network none "$BASE_IMAGE" python3 --version >&2 \
    || die "base image $BASE_IMAGE cannot run python3"

# --- 2. build the CPU variant -----------------------------------------------------------------------------
build_args=(--build-arg VARIANT=cpu --build-arg "BASE_IMAGE=$BASE_IMAGE")
wheel=${TORCH_WHEEL:-$(find /opt/wheels -maxdepth 1 -name "torch-$TORCH_VERSION+cpu-cp311-*.whl" 2>/dev/null \
    | head -n1 || true)}
if [ -n "$wheel" ] && [ -f "$wheel" ]; then
    log "offering the local wheel $(basename "$wheel") through build/wheels"
    [ -d "$ROOT/build/wheels" ] || { mkdir -p "$ROOT/build/wheels"; OUR_WHEELS_DIR=1; }
    if [ ! -e "$ROOT/build/wheels/$(basename "$wheel")" ]; then
        OUR_WHEEL=$ROOT/build/wheels/$(basename "$wheel")
        cp "$wheel" "$OUR_WHEEL"
    fi
    local_version=$(basename "$wheel" | cut -d- -f2)          # e.g. 2.13.0+cpu: matches only the local wheel
    build_args+=(--build-arg "TORCH_VERSION=$local_version"
                 --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://pypi.org/simple}")
else
    log "no local torch wheel: torch $TORCH_VERSION comes from ${TORCH_INDEX_URL:-the CPU index}"
    build_args+=(--build-arg "TORCH_VERSION=$TORCH_VERSION")
    [ -n "${TORCH_INDEX_URL:-}" ] && build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi
build_args+=(--build-arg "PIP_INDEX_URL=${PIP_INDEX_URL:-https://pypi.org/simple}")

log "buildah build ${build_args[*]} -t $IMAGE"
previous=$(podman "${STORAGE[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
t0=$SECONDS
[ "${NO_CACHE:-0}" = 1 ] && build_args+=(--no-cache)
buildah "${STORAGE[@]}" build --isolation chroot --network host --layers --force-rm --pull=never --format docker \
    "${build_args[@]}" -f Dockerfile -t "$IMAGE" . 2>&1 \
    | while IFS= read -r line; do printf '[%4ds] %s\n' $((SECONDS - t0)) "$line"; done | tee "$WORK/build.log" >&2
BUILD_SECONDS=$((SECONDS - t0))
size_bytes=$(podman "${STORAGE[@]}" image inspect --format '{{.Size}}' "$IMAGE")
IMAGE_SIZE="$((size_bytes / 1000000)) MB ($size_bytes bytes)"
echo "built $IMAGE in ${BUILD_SECONDS}s, image size $IMAGE_SIZE" >&2
# vfs keeps full copies: drop the image this build replaced (its layers stay cached while others use them).
current=$(podman "${STORAGE[@]}" image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    podman "${STORAGE[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi

# --- 3. a small MLflow model (nn.Linear(4, 3), torch.export pt2) ------------------------------------------
log "saving a test MLflow model with $PYTHON"
MODEL=$WORK/model
rm -rf "$MODEL"
"$PYTHON" - "$MODEL" <<'EOF' >&2
import sys

import mlflow.pytorch
import numpy as np
import torch

torch.manual_seed(0)
model = torch.nn.Linear(4, 3).eval()
mlflow.pytorch.save_model(
    model, sys.argv[1], serialization_format="pt2", input_example=np.random.rand(2, 4).astype("float32")
)
print("saved", sys.argv[1])
EOF
chmod -R a+rX "$MODEL"

# --- 4. run: user 1000, read-only rootfs, tmpfs /tmp, read-only model ------------------------------------
log "starting $CONTAINER"
podman "${STORAGE[@]}" run -d --name "$CONTAINER" "${RUN_OPTS[@]}" \
    --read-only --tmpfs /tmp:rw,mode=1777,size=1g --user 1000:1000 \
    -v "$MODEL:/mnt/models:ro" \
    -p "127.0.0.1:$HTTP_PORT:8080" -p "127.0.0.1:$GRPC_PORT:8081" -p "127.0.0.1:$METRICS_PORT:8082" \
    "$IMAGE" >/dev/null

base=http://127.0.0.1:$HTTP_PORT
t0=$SECONDS
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/v2/models/model/ready")" = 200 ]; do
    state=$(podman "${STORAGE[@]}" inspect --format '{{.State.Status}}' "$CONTAINER" 2>/dev/null || echo gone)
    [ "$state" = running ] || die "container stopped ($state) before the model was ready"
    [ $((SECONDS - t0)) -lt "$READY_TIMEOUT" ] || die "model not ready after ${READY_TIMEOUT}s"
    sleep 2
done
READY_SECONDS=$((SECONDS - t0))
echo "GET /v2/models/model/ready -> 200 after ${READY_SECONDS}s" >&2

request='{"inputs":[{"name":"input-0","shape":[2,4],"datatype":"FP32","data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]}]}'
status=$(curl -s -o "$WORK/infer.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "$request" "$base/v2/models/model/infer")
echo "POST /v2/models/model/infer -> HTTP $status" >&2
cat "$WORK/infer.json" >&2; echo >&2
[ "$status" = 200 ] || die "infer answered HTTP $status"
python3 - "$WORK/infer.json" <<'EOF' || die "unexpected V2 answer"
import json
import sys

answer = json.load(open(sys.argv[1]))
outputs = {o["name"]: o for o in answer["outputs"]}
assert "output-0" in outputs, f"no output-0 in {list(outputs)}"
out = outputs["output-0"]
assert out["shape"] == [2, 3], out["shape"]
assert out["datatype"] == "FP32", out["datatype"]
assert len(out["data"]) == 6, out["data"]
print("V2 answer OK: output-0", out["shape"], out["datatype"])
EOF

# The other ports, the user, and that nothing was written outside /tmp.
metrics=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT/metrics")
[ "$metrics" = 200 ] || die "GET :$METRICS_PORT/metrics answered $metrics"
uid=$(podman "${STORAGE[@]}" exec "$CONTAINER" id -u)
[ "$uid" = 1000 ] || die "container runs as uid $uid, expected 1000"
# podman itself bind-mounts /etc/hosts, /etc/hostname, /etc/resolv.conf and /run/.containerenv.
changed=$(podman "${STORAGE[@]}" diff "$CONTAINER" \
    | grep -vE '^[ACD] (/tmp|/mnt/models|/etc|/etc/(hosts|hostname|resolv\.conf)|/run|/run/\.containerenv)(/|$)' \
    || true)
[ -z "$changed" ] || die "files changed outside /tmp: $changed"
echo "metrics :$METRICS_PORT 200, uid 1000, no writes outside /tmp" >&2

# gRPC, when the Python that saved the model has tritonclient (the project's test extra).
if "$PYTHON" -c 'import tritonclient.grpc' 2>/dev/null; then
    "$PYTHON" - "127.0.0.1:$GRPC_PORT" <<'EOF' >&2 || die "gRPC check failed"
import sys

import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(sys.argv[1])
assert client.is_model_ready("model")
inp = grpcclient.InferInput("input-0", [2, 4], "FP32")
inp.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4))
out = client.infer("model", [inp]).as_numpy("output-0")
assert out is not None and out.shape == (2, 3), out
print("gRPC :8081 OK: output-0", list(out.shape))
EOF
else
    echo "gRPC check skipped: no tritonclient in $PYTHON" >&2
fi

# Graceful stop: SIGTERM must end MLServer (PID 1) with exit code 0 well before a 30 s grace period.
t0=$SECONDS
podman "${STORAGE[@]}" stop -t 30 "$CONTAINER" >/dev/null
STOP_SECONDS=$((SECONDS - t0))
code=$(podman "${STORAGE[@]}" inspect --format '{{.State.ExitCode}}' "$CONTAINER")
[ "$code" = 0 ] && [ "$STOP_SECONDS" -lt 30 ] || die "SIGTERM: exit code $code after ${STOP_SECONDS}s"
echo "SIGTERM -> exit 0 in ${STOP_SECONDS}s" >&2

printf '\nbase image: %s\nbuild time: %ss\nimage size: %s\nready after: %ss\ntotal: %ss\n' \
    "$BASE_NOTE" "$BUILD_SECONDS" "$IMAGE_SIZE" "$READY_SECONDS" "$SECONDS"
