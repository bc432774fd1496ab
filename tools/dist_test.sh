#!/usr/bin/env bash
# Usage: tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py options]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on every node.
exec "$(dirname "$0")/dist_launch.sh" "$3" tools/test.py "$1" "$2" "${@:4}"
