#!/usr/bin/env bash
# On the GPU machine (after `source .device/setup.sh`): the decode tests that need a GPU, then
# bench/decode_sweep.py over the shapes given (default: 1B with profiles, then 135M); one log.
#   bash bench/device_sweep.sh [tests] [SHAPE:VARIANTS[:EXTRA ARGS]] ...
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log=$OUT/sweep.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$log" 2>&1
for job in "$@"; do
  if [ "$job" = tests ]; then
    timeout 240 python3 -m pytest -q -x tests/test_loop.py tests/test_gpu_sample.py tests/test_decode.py \
      -p no:cacheprovider 2>&1 | tail -6 >> "$log"
    continue
  fi
  IFS=: read -r shape variants extra <<< "$job"
  timeout 300 python3 bench/decode_sweep.py "$shape" ${variants:+--variants "$variants"} $extra >> "$log" 2>&1 \
    || echo "$shape: exit $?" >> "$log"
done
