#!/usr/bin/env bash
# On the GPU machine (see DEVELOPERS notes in README): correctness of the kernels on the real
# adapter, the kernel benchmark (with a configuration sweep), and the PyTorch tinygemm peer,
# all in one call so every number shares the card and the session.
#   source .device/setup.sh; bash bench/device_kernels.sh [--sweep]
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -m pytest -q -x tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -3 | tee "$OUT/kernel_tests.txt"
python3 -m llmgpu.cli bench kernels "$@" --json > "$OUT/kernels.json" 2> "$OUT/kernels_sweep.log"
python3 -m llmgpu.cli bench kernels "$@" 2>/dev/null | tee "$OUT/kernels.txt"
python3 bench/peer_torch_int4.py 2>&1 | tee "$OUT/torch_int4.txt"
