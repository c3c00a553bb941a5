#!/usr/bin/env bash
# NeMo in its own venv, for bench/compare_nemo.py, bench/export_sherpa_onnx.py (with onnxruntime) and
# scripts/make_golden.py only (never a runtime dependency). torch==2.13.0 first: the CPU wheel. Key-term references only (tests/golden/keyterms):
# .nemo-venv/bin/python scripts/make_golden.py --keyterms
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .nemo-venv
.nemo-venv/bin/pip install -q torch==2.13.0 "nemo_toolkit[asr]==3.0.0" onnxruntime
