#!/usr/bin/env bash
# Run the GPU smoke test on a machine with torch, transformers, peft, accelerate and safetensors but no registry:
# orthoguard's other needs (pydantic, PyYAML, ...) travel as wheels in .whl/ (see the device notes in the README).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 scripts/gpu_smoke.py --out "${OUT:-.}/gpu_smoke.json" "$@"
