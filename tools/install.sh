#!/usr/bin/env bash
# Install instag into ./.venv on the CPU. torch is pinned first so no multi-GB CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# (grep drops the pip-config notices about local package folders this machine does not have)
pip_install() { .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; return "${PIPESTATUS[0]}"; }
pip_install --upgrade pip
pip_install torch==2.13.0
pip_install -e ".[dev,encoder,docs]"  # encoder: Whisper base, the default speech features; docs: the site generator
echo "instag installed in $(pwd)/.venv"
