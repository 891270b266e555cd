#!/usr/bin/env bash
# GPU readiness check (issue 15 item 6): a random-weight SD 1.5 at 512x512, fp16, through plain diffusers and
# sweeplab; one line per figure, `gpu_check: <name>: <value>`. See gpu_check.py for what is measured.
#
#   benchmarks/gpu_check.sh                 # on a GPU machine: under 4 minutes (budget 225 s)
#   benchmarks/gpu_check.sh --tiny          # the same steps at toy size on a CPU (also GPU_CHECK_TINY=1)
#   benchmarks/gpu_check.sh --keep          # keep the built model and every process's folder
#
# Needs no network: the hub is switched off. PYTHON picks the interpreter (default: the repository's
# .venv, else python3); it needs sweeplab importable (installed, or PYTHONPATH). GPU_CHECK_BUDGET sets
# the seconds for the whole check; the script is killed 30 s after it, whatever it is doing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x $here/../.venv/bin/python ]]; then python=$here/../.venv/bin/python; else python=python3; fi
fi
tiny=${GPU_CHECK_TINY:-0}
for arg in "$@"; do [[ $arg == --tiny ]] && tiny=1; done
if [[ $tiny == 1 ]]; then default_budget=900; else default_budget=225; fi
budget=${GPU_CHECK_BUDGET:-$default_budget}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GPU_CHECK_TINY=$tiny
exec timeout --kill-after=10 "$((budget + 30))" "$python" "$here/gpu_check.py" --budget "$budget" "$@"
