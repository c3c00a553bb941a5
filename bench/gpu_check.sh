#!/usr/bin/env bash
# The GPU figures of issue 15 in one run of at most 8 minutes: the model step ladder (batch 1..512)
# and served capacity, small [70,1] and large [70,6] / [70,1], dummy weights.
#
#   bash bench/gpu_check.sh            (from the repository root, venv active, CUDA torch installed)
#
# Every part has its own time budget (seconds, below); a part that runs out is stopped (SIGINT, so
# bench/capacity.py stops its server) and the script goes on with the next. Each part prints its
# command first; its figures are printed as they are measured, so a stopped part still reports.
set -euo pipefail
cd "$(dirname "$0")/.."

BATCHES=${BATCHES:-1,2,4,8,16,32,64,128,256,512}
LEVELS=${LEVELS:-32,64,128,192,256,384,512}
export PARAKEET_CACHE_DIR=${PARAKEET_CACHE_DIR:-$HOME/.cache/parakeet-streaming}
START=$(date +%s)

TOTAL=${TOTAL:-470}  # seconds for everything; a part gets the smaller of its budget and what is left

part() {  # name budget_seconds command...
    local name=$1 budget=$2
    shift 2
    local left=$((TOTAL - ($(date +%s) - START)))
    if [ "$left" -lt "$budget" ]; then budget=$left; fi
    echo
    if [ "$budget" -lt 15 ]; then
        echo "=== $name: skipped (out of time)"
        return 0
    fi
    echo "=== $name (budget ${budget} s, $(($(date +%s) - START)) s elapsed): $*"
    # Its own process group, so whatever it leaves behind (a server) goes with it.
    setsid timeout -s INT -k 10 "$budget" "$@" &
    local pid=$!
    local rc=0
    wait "$pid" || rc=$?
    kill -- "-$pid" 2>/dev/null || true
    if [ "$rc" -eq 124 ]; then
        echo "=== $name: stopped, out of its time budget"
    elif [ "$rc" -ne 0 ]; then
        echo "=== $name: failed, exit code $rc"
    fi
}

capacity() {  # name budget server_flags
    local name=$1 budget=$2 flags=$3
    part "$name" "$budget" python bench/capacity.py --start-server "$flags" --levels "$LEVELS" --max-streams 512 \
        --rounds 1 --seconds 8
}

echo "=== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: nothing to check")'

part "model step: small [70,1] float32" 50 \
    python bench/model_step.py --device cuda --models small --att 70,1 --dtype float32 --batches "$BATCHES"
part "model step: small [70,1] bfloat16" 45 \
    python bench/model_step.py --device cuda --models small --att 70,1 --dtype bfloat16 --batches "$BATCHES"
part "model step: small [70,1] bfloat16, CUDA graphs" 45 \
    python bench/model_step.py --device cuda --models small --att 70,1 --dtype bfloat16 --batches "$BATCHES" --cuda-graphs
part "model step: large [70,6] / [70,1] bfloat16" 95 \
    python bench/model_step.py --device cuda --models large --att 70,6/70,1 --dtype bfloat16 --batches "$BATCHES"

capacity "served capacity: small [70,1] bfloat16" 60 \
    "--model-size small --load-format dummy --device cuda --dtype bfloat16"
capacity "served capacity: small [70,1] bfloat16, CUDA graphs" 60 \
    "--model-size small --load-format dummy --device cuda --dtype bfloat16 --cuda-graphs"
capacity "served capacity: large [70,6] bfloat16, CUDA graphs" 55 \
    "--model-size large --load-format dummy --device cuda --dtype bfloat16 --att-context-size 70,6 --cuda-graphs"
capacity "served capacity: large [70,1] bfloat16, CUDA graphs" 55 \
    "--model-size large --load-format dummy --device cuda --dtype bfloat16 --att-context-size 70,1 --cuda-graphs"

echo
echo "=== done in $(($(date +%s) - START)) s"
