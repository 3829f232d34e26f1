#!/usr/bin/env bash
# On the GPU machine: kernel correctness on the real adapter, the kernel benchmark (pass
# --sweep to try several kernel configurations) and the PyTorch tinygemm peer, in one call
# so that every number shares the card and the session. Results land in $OUT.
#   source .device/setup.sh; bash bench/device_kernels.sh [--sweep]
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -m pytest -q -x tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -3 | tee "$OUT/kernel_tests.txt"
python3 -m llmgpu.cli bench kernels "$@" --json > "$OUT/kernels.json" 2> "$OUT/kernels_sweep.log"
tail -3 "$OUT/kernels_sweep.log"
python3 bench/summarize_kernels.py "$OUT/kernels.json" | tee "$OUT/kernels.txt"
python3 bench/peer_torch_int4.py 2>&1 | tee "$OUT/torch_int4.txt"
