#!/usr/bin/env bash
# README command 2 (and CI's): set up, lint, type-check, then run every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="[test]" . scripts/setup_env.sh
if [ -f scripts/setup_kserve_envs.sh ]; then bash scripts/setup_kserve_envs.sh; fi
ruff check .
ruff format --check mlserver_torchflow
mypy mlserver_torchflow
exec python -m pytest -q -p no:cacheprovider "$@"
