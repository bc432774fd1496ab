#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG NPROC [train.py options]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on every node.
exec "$(dirname "$0")/dist_launch.sh" "$2" tools/train.py "$1" "${@:3}"
