#!/usr/bin/env bash
# Issue #4's GPU check, prepared to run in one go on a lent CUDA machine:
# a 345M Megatron-GPT2-shaped checkpoint (synthetic weights, NVIDIA's layout)
# is converted, then `arbridge bench` runs on CUDA at batch 1 and 64, bf16
# (the CUDA default), without the CPU-bound transformers-serve peers.
#
#   tools/gpu_bench.sh [WORKDIR]      (PYTHON=... for an interpreter with CUDA torch)
set -euo pipefail
work=${1:-/tmp/arbridge-gpu}
python=${PYTHON:-.venv/bin/python}
"$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
"$python" tools/megatron_345m_probe.py "$work"
"$python" -m arbridge.cli bench --model "$work/converted" --device cuda --dtype bfloat16 \
  --concurrency 1,64 --new-tokens 64 --no-peer
