#!/usr/bin/env bash
# Usage: tools/dist_launch.sh NPROC SCRIPT [script args]   (used by dist_train.sh / dist_test.sh)
# Runs SCRIPT under torchrun with --launcher pytorch. One node without PORT: torchrun picks a
# free port itself (--standalone), so jobs side by side on one machine do not clash. Several
# nodes: set NNODES, NODE_RANK, MASTER_ADDR and PORT (default 29500) on every node.
set -euo pipefail
NPROC=$1
SCRIPT=$2
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
if [ "${NNODES:-1}" = 1 ] && [ -z "${PORT:-}" ]; then
    RENDEZVOUS=(--standalone)
else
    RENDEZVOUS=(--nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}"
                --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}")
fi
exec "$PYTHON" -m torch.distributed.run "${RENDEZVOUS[@]}" --nproc_per_node="$NPROC" \
    "$SCRIPT" "${@:3}" --launcher pytorch
