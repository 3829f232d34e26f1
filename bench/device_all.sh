#!/usr/bin/env bash
# On the GPU machine, one call: kernel tests, kernel sweep, model benchmarks of the named
# shapes (llmgpu bench), then the peers (PyTorch tinygemm, transformers generate; llama.cpp
# CUDA if .device/peer is there). Every number in $OUT shares the card and the session.
#   source .device/setup.sh; bash bench/device_all.sh [shape ...]
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
shapes=${*:-smollm2-135m llama-3.2-1b llama-3.1-8b}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -m pytest -q -x tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -2 | tee "$OUT/tests.txt"
python3 -m llmgpu.cli bench kernels --sweep --json > "$OUT/kernels.json" 2> "$OUT/kernels_sweep.log"
python3 bench/summarize_kernels.py "$OUT/kernels.json" | tee "$OUT/kernels.txt"
for s in $shapes; do
  python3 -m llmgpu.cli bench --shape "$s" -p 512 -n 128 -r 5 --profile --json > "$OUT/bench-$s.json"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print(d['model'], r) for r in d['rows']]; [print('  ', p) for p in d['profile'][:6]]" "$OUT/bench-$s.json"
done
python3 bench/peer_torch_int4.py 2>&1 | grep -v JSON | tee "$OUT/torch_int4.txt"
python3 bench/peer_transformers.py $shapes 2>&1 | grep -E "t/s|Error" | tee "$OUT/transformers.txt"
if [ -f .device/peer/peer.sh ]; then
  bash .device/peer/peer.sh $shapes 2>&1 | tee "$OUT/llamacpp.txt"
fi
python3 bench/compare.py "$OUT" | tee "$OUT/table.md"
