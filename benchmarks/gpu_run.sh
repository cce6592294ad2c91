#!/usr/bin/env bash
# The feedback and DPO speed benchmarks at the LLaVA-1.5-7B shape (random bf16 weights) on one CUDA GPU, in one go.
#
#   bash benchmarks/gpu_run.sh                                  # CUDA machine; wheels in .whl/ go to /tmp/site first
#   SHAPE=tiny DEVICE=cpu SKIP_INSTALL=1 bash benchmarks/gpu_run.sh   # dry run of this script on the CPU
#
# Runs, cheapest first, each under its own timeout (a failure does not stop the next): feedback_speed.py judge,
# feedback_speed.py sample, attention_mask_speed.py, dpo_vs_trl.py --lora --bf16 --response-words 150
# (BENCHES="judge sample" picks some; dpo needs trl among the wheels; DPO_ARGS adds arguments to it, e.g.
# "--profile $OUT/profile --baseline-src .base/src"). Everything is also written to
# $OUT/gpu_log.txt (OUT defaults to /tmp/gpu_run). The whole script stops starting work after $BUDGET seconds.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_run}
mkdir -p "$OUT"
LOG=$OUT/gpu_log.txt
: >"$LOG"
SHAPE=${SHAPE:-llava-7b}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-375}
PY=${PYTHON:-python3}
THREADS=${THREADS:-8}
BENCHES=${BENCHES:-judge sample attention dpo}
DPO_ARGS=${DPO_ARGS:-}

log() { echo "$@" | tee -a "$LOG"; }

if [ -z "${SKIP_INSTALL:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
    log "== installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tee -a "$LOG"
fi
export PYTHONPATH=src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1

log "== machine ($(date -u +%FT%TZ))"
{ nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } 2>&1 | tee -a "$LOG"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.metadata as m
import platform

import torch

print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("transformers", "trl", "peft", "accelerate", "datasets", "pyarrow", "huggingface_hub", "tokenizers",
             "safetensors", "pydantic", "numpy"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name} MISSING")
import rlaifv  # noqa: E402

print("  rlaifv", rlaifv.__version__, "from", rlaifv.__file__)
EOF

run_bench() {  # name cap_seconds command...
    local name=$1 cap=$2
    shift 2
    case " $BENCHES " in *" $name "*) ;; *) return ;; esac
    local left=$((BUDGET - SECONDS))
    local t=$((cap < left ? cap : left))
    if [ "$t" -lt 30 ]; then
        log "== $name: SKIPPED, only ${left}s of the script's budget left"
        return
    fi
    log ""
    log "== $name (timeout ${t}s): $*"
    local start=$SECONDS
    timeout -k 10 "$t" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        log "== $name: TIMED OUT after $((SECONDS - start)) s"
    else
        log "== $name: exit $rc after $((SECONDS - start)) s"
    fi
}

FB=(benchmarks/feedback_speed.py --shape "$SHAPE" --device "$DEVICE" --threads "$THREADS" --images 8)
run_bench judge 100 "$PY" "${FB[@]}" judge --questions 64
run_bench sample 100 "$PY" "${FB[@]}" sample --n 10 --max-new-tokens 128
ATTN=()
[ "$SHAPE" = llava-7b ] || ATTN=(--heads 4 --layers 1 --repeats 2)  # a dry run's size
run_bench attention 60 "$PY" benchmarks/attention_mask_speed.py --device "$DEVICE" "${ATTN[@]}"
# shellcheck disable=SC2086  # DPO_ARGS is a list of arguments
run_bench dpo 300 "$PY" benchmarks/dpo_vs_trl.py --shape "$SHAPE" --device "$DEVICE" --lora --bf16 \
    --response-words 150 --pairs 32 --batch 4 --steps 10 --threads "$THREADS" $DPO_ARGS

log ""
log "== summary (script ran ${SECONDS}s)"
grep -E "^\| |speed-up|max \|dP\||x [0-9]+ (questions|samples)|^shape |^device |profiled [0-9]+ step|TIMED OUT|exit [0-9]|SKIPPED|failed" "$LOG" \
    | grep -v "^|---" | tee "$OUT/summary.txt"
