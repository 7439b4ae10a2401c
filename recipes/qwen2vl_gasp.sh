#!/usr/bin/env bash
""":"
# GASP launcher: this file is both a bash script and a Python program.
#
#   deepspeed [--num_gpus N] recipes/qwen2vl_gasp.sh [--recipe FILE] [key=value ...]
#       the deepspeed launcher runs this file with python on every rank: the Python part at the
#       bottom hands the arguments to `gasp train` (--local_rank, added by deepspeed, is accepted).
#   [NUM_GPUS=N] [MASTER_PORT=P] [GASP_RECIPE=FILE] bash recipes/qwen2vl_gasp.sh [--recipe FILE] [key=value ...]
#       this bash part starts the deepspeed launcher on this same file.
#   deepspeed --hostfile HOSTFILE --master_addr NODE0 recipes/qwen2vl_gasp.sh data.geometry.scenes=[/shared/index.jsonl] ...
#       several nodes (HOSTFILE: "node-01 slots=8" per line); scenes from a `gasp data index` file
#       on a shared file system, so no rank walks the scene folders.
#
# The recipe defaults to recipes/qwen2vl_gasp.yaml next to this file ($GASP_RECIPE or --recipe
# choose another); key=value pairs override it, e.g. model.path=/ckpt/Qwen2.5-VL-7B-Instruct.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GASP_RECIPE="${GASP_RECIPE:-$here/qwen2vl_gasp.yaml}"
if [ -z "${NUM_GPUS:-}" ]; then
  NUM_GPUS="$(nvidia-smi -L 2>/dev/null | wc -l || true)"
  [ "${NUM_GPUS:-0}" -ge 1 ] 2>/dev/null || NUM_GPUS=1
fi
PYTHON="${PYTHON:-python}"
exec "$PYTHON" -m deepspeed.launcher.runner --num_gpus "$NUM_GPUS" \
  --master_port "${MASTER_PORT:-29500}" "$here/$(basename "${BASH_SOURCE[0]}")" "$@"
":"""
# ---- Python part: what every rank runs --------------------------------------------------------
import os
import sys

os.environ.setdefault("GASP_RECIPE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen2vl_gasp.yaml"))
from gasp_plugin.train.launch import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
