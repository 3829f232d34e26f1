#!/usr/bin/env bash
# On the GPU machine (after `source .device/setup.sh`): the decode tests that need a GPU, then
# bench/decode_sweep.py over the shapes given (default: 1B with profiles, then 135M); one log.
#   bash bench/device_sweep.sh [tests] [SHAPE:VARIANTS[:EXTRA ARGS]] ...
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log=$OUT/sweep.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$log" 2>&1
for job in "$@"; do
  if [ "$job" = gputests ]; then   # the tests whose GPU branch differs from lavapipe's
    timeout 240 python3 -m pytest -q tests/test_loop.py tests/test_decode.py tests/test_kernels.py \
      tests/test_ops.py -k "persistent or fused or sweeps or loop or norm_after or attention or planted or greedy or batch" \
      -p no:cacheprovider 2>&1 | grep -E "^E  |passed|failed|^FAILED|Error" | head -40 >> "$log"
    continue
  fi
  if [ "$job" = tests ]; then
    timeout 500 python3 -m pytest -q tests/test_loop.py tests/test_gpu_sample.py tests/test_decode.py tests/test_kernels.py \
      tests/test_ops.py tests/test_gemm.py tests/test_model.py tests/test_decode_phases.py -p no:cacheprovider 2>&1 | grep -E "^E  |passed|failed|^FAILED|Error" | head -40 >> "$log"
    continue
  fi
  if [[ "$job" == pp:* ]]; then   # pp:SHAPE:P — prefill of P tokens
    IFS=: read -r _ shape p <<< "$job"
    timeout 200 python3 -m llmgpu.cli bench --shape "$shape" -p "$p" -n 0 -r 3 --stream-bytes $((256 << 20)) 2>&1 \
      | grep -E "pp[0-9]|rror" >> "$log"
    continue
  fi
  IFS=: read -r shape variants extra <<< "$job"
  timeout 300 python3 bench/decode_sweep.py "$shape" ${variants:+--variants "$variants"} $extra >> "$log" 2>&1 \
    || echo "$shape: exit $?" >> "$log"
done
