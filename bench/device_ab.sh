#!/usr/bin/env bash
# On the GPU machine, one call: `llmgpu bench` of an earlier version (a copy of its llmgpu/,
# shaders/ and models/ in BASE) and of this checkout, alternating per shape, so both share the
# card and the session. Results: $OUT/ab-<shape>-<base|new>.json and $OUT/ab.txt.
#   git archive REV llmgpu shaders models | (mkdir -p .device/base && tar -x -C .device/base)
#   source .device/setup.sh; bash bench/device_ab.sh .device/base [shape ...]
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
base=$1; shift
shapes=${*:-smollm2-135m llama-3.2-1b llama-3.1-8b}
root=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
for s in $shapes; do
  for side in base new; do
    dir=$root; [ "$side" = base ] && dir=$root/$base
    (cd "$dir" && PYTHONPATH=/tmp/site:$dir python3 -m llmgpu.cli bench --shape "$s" -p 512 -n 128 -r 5 --json \
      > "$OUT/ab-$s-$side.json" 2> "$OUT/ab-$s-$side.log")
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print(sys.argv[2], d['model'], r.get('test'), round(r['tps'], 1), '+-', round(r['sd'], 1), r.get('dispatches', '')) for r in d['rows']]" \
      "$OUT/ab-$s-$side.json" "$side" 2>&1 | tee -a "$OUT/ab.txt"
  done
done
