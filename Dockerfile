# syntax=docker/dockerfile:1
#
# mlserver-torchflow: MLServer 1.7.1 + TorchFlowRuntime serving an MLflow PyTorch model mounted at /mnt/models.
#
#   docker build -t mlserver-torchflow:gpu .                          # CUDA-enabled torch from PyPI (default)
#   docker build --build-arg VARIANT=cpu -t mlserver-torchflow:cpu .  # CPU-only torch (download.pytorch.org/whl/cpu)
#
# Build arguments:
#   BASE_IMAGE          a Debian-based image with python3 (3.11 or 3.12) and its venv module
#   VARIANT             gpu | cpu
#   TORCH_VERSION       version pinned for torch (a local label such as 2.13.0+cpu is allowed)
#   TORCH_INDEX_URL     overrides the index torch is taken from (defaults: PyPI for gpu, the CPU index for cpu)
#   PIP_INDEX_URL       index for everything else (default PyPI)
#   EXTRA_APT_PACKAGES  extra Debian packages for the system layer (default: none)
# Optional local wheels: every file in build/wheels/ (for example a torch wheel on a builder that cannot reach
# the torch index) is offered to pip with --find-links. Without that folder the build is unchanged.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# A tiny stage holding build/wheels/ when it exists. `.dockerignore` is an always-present anchor so the
# COPY stays valid without build/wheels; it is only mounted during pip runs, never copied into the image.
FROM scratch AS wheels
COPY .dockerignore build/wheels* /wheels/

FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# 1. System layer: optional packages, the non-root user 1000, the virtualenv, the model mount point.
ARG EXTRA_APT_PACKAGES=""
# hadolint ignore=DL3008,SC2086
RUN if [ -n "${EXTRA_APT_PACKAGES}" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ${EXTRA_APT_PACKAGES} \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 1000 mlserver \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mlserver \
    && python3 -m venv "${VIRTUAL_ENV}" \
    && mkdir -p /mnt/models /opt/mlserver

# 2. torch: the largest layer, rebuilt only when VARIANT / TORCH_VERSION / TORCH_INDEX_URL / wheels change.
ARG VARIANT=gpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
RUN --mount=type=bind,from=wheels,source=/wheels,target=/tmp/wheels \
    case "${VARIANT}" in \
        gpu) index="${TORCH_INDEX_URL:-https://pypi.org/simple}" ;; \
        cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
        *) echo "VARIANT must be gpu or cpu, got '${VARIANT}'" >&2; exit 1 ;; \
    esac \
    && pip install --find-links /tmp/wheels --index-url "${index}" "torch==${TORCH_VERSION}" \
    && python -c "import sys, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
sys.exit('VARIANT=gpu but this torch has no CUDA' if '${VARIANT}' == 'gpu' and not torch.version.cuda else 0)"

# 3. The project's dependencies, read from pyproject.toml alone so that source and README edits keep this
#    layer cached.
ARG PIP_INDEX_URL=https://pypi.org/simple
WORKDIR /tmp/src
COPY pyproject.toml ./
RUN --mount=type=bind,from=wheels,source=/wheels,target=/tmp/wheels \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --find-links /tmp/wheels -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 4. Runtime settings, before the source so that a source change rebuilds only the small layers of step 5.
#    Everything that may write goes under /tmp, so the container runs with a read-only root filesystem
#    (`--read-only --tmpfs /tmp`, or `readOnlyRootFilesystem: true` plus an emptyDir at /tmp) and a read-only
#    /mnt/models. MLServer creates MLSERVER_METRICS_DIR (its PROMETHEUS_MULTIPROC_DIR) and
#    MLSERVER_ENVIRONMENTS_DIR itself when parallel workers are on; PROMETHEUS_MULTIPROC_DIR is not set here
#    (prometheus_client would need that folder to exist before MLServer starts). pip still writes bytecode at
#    build time; PYTHONDONTWRITEBYTECODE stops Python writing it at run time.
#    The MLSERVER_MODEL_* variables describe the model when /mnt/models holds only the MLflow model
#    (no model-settings.json), as in a KServe pod.
ENV PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    CUDA_CACHE_PATH=/tmp/.cache/nv \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    MLSERVER_METRICS_DIR=/tmp/mlserver/metrics \
    MLSERVER_ENVIRONMENTS_DIR=/tmp/mlserver/envs \
    MLSERVER_MODELS_DIR=/mnt/models \
    MLSERVER_MODEL_NAME=model \
    MLSERVER_MODEL_IMPLEMENTATION=mlserver_torchflow.TorchFlowRuntime \
    MLSERVER_MODEL_URI=/mnt/models \
    MLSERVER_PARALLEL_WORKERS=0 \
    MLSERVER_DEBUG=false \
    MLSERVER_GRPC_MAX_MESSAGE_LENGTH=67108864 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

LABEL org.opencontainers.image.title="mlserver-torchflow" \
      org.opencontainers.image.description="MLServer 1.7.1 runtime for MLflow PyTorch models (V2 REST :8080, gRPC :8081, metrics :8082)" \
      org.opencontainers.image.licenses="Apache-2.0"
EXPOSE 8080 8081 8082
WORKDIR /opt/mlserver
CMD ["/bin/sh", "-c", "exec mlserver start \"${MLSERVER_MODELS_DIR}\""]

# 5. The source (README.md, when present, is the package's long description).
COPY pyproject.toml README.m[d] /tmp/src/
COPY mlserver_torchflow /tmp/src/mlserver_torchflow
RUN --mount=type=bind,from=wheels,source=/wheels,target=/tmp/wheels \
    pip install --find-links /tmp/wheels --no-deps /tmp/src \
    && pip check \
    && python -c "import mlserver_torchflow, mlserver; print('mlserver', mlserver.__version__)" \
    && rm -rf /tmp/src

USER 1000:1000
