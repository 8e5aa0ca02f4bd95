#!/usr/bin/env bash
# Create (or reuse) the virtualenv with the runtime and its test tools. Sourced by serve_example.sh and test.sh.
# torch goes in FIRST and pinned, so that the project's `torch>=2.4` installs nothing more. Where a local
# CPU wheel of torch 2.13.0 exists (this project's build machines) the pin takes it; on PyPI, torch
# 2.13.0 is the CUDA build (several GB). TORCH_SPEC overrides it, e.g. for the CPU build elsewhere:
# TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
# EXTRAS picks the project's extras: "[save]" by default (scipy, which saving a model with a signature
# needs), "[test]" for test.sh (a superset).
set -euo pipefail
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# shellcheck disable=SC2086
python -m pip install -q --disable-pip-version-check ${TORCH_SPEC:-torch==2.13.0}
python -m pip install -q --disable-pip-version-check -e ".${EXTRAS:-[save]}"
