#!/usr/bin/env bash
# (Re)start the vLLM server of the policy on a weights folder or hub id; `rlaifv iterate` runs it between rounds
# (serve.restart_command in llava15-7b-lora-vllm.yaml) and waits until the server lists the model again.
#
#   bash configs/recipes/serve-policy.sh FOLDER [PORT] [GPU]
#
# It returns once the old server has exited and the new one is starting: iterate polls the URL until it is ready.
set -euo pipefail
folder=$1
port=${2:-8000}
gpu=${3:-0}
pidfile=${RLAIFV_POLICY_PIDFILE:-/tmp/rlaifv-policy-$port.pid}
if [[ -f $pidfile ]]; then
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 1; done
fi
CUDA_VISIBLE_DEVICES=$gpu nohup vllm serve "$folder" --served-model-name policy --port "$port" --seed 0 \
  > "/tmp/rlaifv-policy-$port.log" 2>&1 &
echo $! > "$pidfile"
