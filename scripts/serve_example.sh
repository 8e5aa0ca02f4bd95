#!/usr/bin/env bash
# README command 1: set up, then serve the example model(s) in model-settings/ on :8080 (REST) and :8081 (gRPC).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
[ -f model-settings/mlp/model/MLmodel ] || python scripts/make_example.py
exec mlserver start .
