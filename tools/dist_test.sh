#!/usr/bin/env bash
# Distributed testing with torchrun (mmdet's dist_test.sh):
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]
# GPUS: processes per node. Multi-node: run it on every node with
#   NNODES (default 1), NODE_RANK (0 .. NNODES-1), MASTER_ADDR (node 0's
#   address, default 127.0.0.1) and PORT (default 29500) set the same way;
#   EXIT_BARRIER_TIMEOUT (default 60 s) bounds how long a finished node waits
#   for the others' launchers (see fec_mm/engine/dist_run.py).
# On machines without CUDA the processes run on CPU with gloo.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py options]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
# Seconds a finished node waits for the other nodes' launchers (torchrun: 300).
EXIT_BARRIER_TIMEOUT=${EXIT_BARRIER_TIMEOUT:-60}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="$ROOT/.venv/bin/python"
[ -x "$PYTHON" ] || PYTHON=python

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" -m fec_mm.engine.dist_run \
    --exit-barrier-timeout="$EXIT_BARRIER_TIMEOUT" \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$ROOT/tools/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
