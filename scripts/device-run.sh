#!/usr/bin/env bash
# On a lent GPU machine (the `device` tool's `run`, in the repository's copy there): install the wheels that
# scripts/device-wheels.sh downloaded here, then run the GPU work named, writing what should come back to $OUT.
#
#   bash scripts/device-run.sh check            # benchmarks/gpu_check.sh (issue 15), under 4 minutes
#   bash scripts/device-run.sh retrain          # the toy model from scratch on CUDA, its own call
#
# From the tool: command "bash scripts/device-run.sh check", carry [".whl"]. Nothing there can be fetched:
# sweeplab runs from this copy (PYTHONPATH), the wheels go to /tmp/site, the image's python3 holds torch.
# RETRAIN_SECONDS bounds the training (default 480 of a call's 600); TRAIN_ARGS adds options to sweeplab.toy.train.
# Files back: gpu_check.txt; retrain.txt (the training's log), training.json and weights.tgz, evaluated here
# (tar xzf weights.tgz; python -m sweeplab.toy.evaluate --model toy-weights ...), not on the lent machine's time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/device-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device-run: the wheels in .whl/ did not install (run scripts/device-wheels.sh here and carry .whl)"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# The console script a `pip install` of sweeplab would make, for the benchmarks that spawn `sweeplab`.
printf '#!/bin/sh\nexec python3 -c "import sys; from sweeplab.cli import main; sys.argv[0] = \\"sweeplab\\"; main()" "$@"\n' \
    > /tmp/site/bin/sweeplab
chmod +x /tmp/site/bin/sweeplab
python3 -c "import torch, diffusers, hydra, mlflow, sweeplab; print('device-run: torch', torch.__version__, 'cuda',
torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'diffusers',
diffusers.__version__, 'mlflow', mlflow.__version__)" || exit 2
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || true

status=0
for task in "$@"; do
    case $task in
        check)
            PYTHON=python3 bash benchmarks/gpu_check.sh 2>&1 | tee "$out/gpu_check.txt" || status=1 ;;
        retrain)
            # The weights come back as weights.tgz; evaluate them here: make toy-eval on the unpacked folder.
            # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
            timeout "${RETRAIN_SECONDS:-480}" python3 -m sweeplab.toy.train --workdir /tmp/toy-train \
                --out /tmp/toy-weights --device cuda ${TRAIN_ARGS:-} 2>&1 | tr '\r' '\n' > "$out/retrain.txt"
            if [[ -f /tmp/toy-weights/training.json ]]; then
                cp /tmp/toy-weights/training.json "$out/"
                tar -czf "$out/weights.tgz" -C /tmp toy-weights
            else
                echo "device-run: the training did not finish within ${RETRAIN_SECONDS:-480} s" | tee -a "$out/retrain.txt"
                status=1
            fi
            tail -n 15 "$out/retrain.txt" ;;
        *) echo "device-run: unknown task '$task' (check, retrain)"; exit 2 ;;
    esac
done
exit $status
