#!/usr/bin/env bash
# README command 2 (and CI's): set up, lint, type-check, then run every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="[test]" . scripts/setup_env.sh
if [ -f scripts/setup_kserve_envs.sh ]; then bash scripts/setup_kserve_envs.sh; fi
ruff check .
ruff format --check mlserver_torchflow
mypy mlserver_torchflow
hadolint --failure-threshold error Dockerfile
# Two processes: MLServer's dataplane.proto and tritonclient's grpc_service.proto both define the
# `inference.*` protobuf symbols, so no single process may import both (unit tests import the runtime,
# integration tests import tritonclient and talk to a server in another process).
python -m pytest -q -p no:cacheprovider tests/unit tests/gpu "$@"
python -m pytest -q -p no:cacheprovider tests/integration "$@"
