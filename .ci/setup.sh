#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q -e ".[dev,label]"
