#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine (idempotent):
# Debian's Chromium (browser tests, driven by Playwright) and PostgreSQL (the
# labeling store's tests start a throwaway server on 127.0.0.1), then the
# package with its dev, labeling, LoRA (peft) and tracker (TensorBoard, W&B,
# MLflow) and lm-eval extras; Trackio (own extra, pins pillow<13) and QLoRA (CUDA) are not
# installed, their tests skip. torch==2.13.0 resolves to the local CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1; then
  need=""
  command -v chromium >/dev/null 2>&1 || need="$need chromium"
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
  if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  fi
fi
pip install -q --disable-pip-version-check -e ".[dev,label,lora,track,lm-eval]"
