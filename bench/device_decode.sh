#!/usr/bin/env bash
# On the GPU machine, one call: the decode kernel's tests, then tg128 of each shape with the per-op
# decode path and the persistent kernel (same card, same session), then a workgroup-count sweep of
# the persistent kernel. Everything lands in two files ($OUT/decode.txt, $OUT/decode.jsonl).
#   source .device/setup.sh; bash bench/device_decode.sh [shape ...]
set -u
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
shapes=${*:-smollm2-135m llama-3.2-1b llama-3.1-8b}
log=$OUT/decode.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
timeout 240 python3 -m pytest -q -x tests/test_decode.py tests/test_ops.py -p no:cacheprovider 2>&1 | tail -6 | tee -a "$log"
bench() {  # shape, extra args...
  local s=$1; shift
  python3 -m llmgpu.cli bench --shape "$s" -p 0 -r 5 --json "$@" > /tmp/b.json 2> /tmp/b.err || { tail -3 /tmp/b.err | tee -a "$log"; return; }
  python3 - "$s" "$*" <<'PY' | tee -a "$log"
import json, os, sys
d = json.load(open("/tmp/b.json"))
with open(os.environ["OUT"] + "/decode.jsonl", "a") as f:
    f.write(json.dumps({"shape": sys.argv[1], "args": sys.argv[2], **d}) + "\n")
for r in d["rows"]:
    print(f"{sys.argv[1]:<14} {sys.argv[2]:<40} {r['test']:<12} {r['tps']:8.1f} ± {r['sd']:5.1f} t/s  "
          f"{r['roofline_pct']:5.1f}% roof  {r['schedule']} disp {r['dispatches']} barriers {r['barriers']} "
          f"wg {r.get('workgroups')}")
PY
}
for s in $shapes; do
  bench "$s" -n 128 --decode ops
  bench "$s" -n 128 --decode persistent
done
for cfg in WG=256,TPR=16 WG=128,TPR=32 WG=128,TPR=16 WG=64,TPR=16; do
  bench llama-3.2-1b -n 128 --decode persistent --kernel-config "$cfg"
  bench llama-3.1-8b -n 128 --decode persistent --kernel-config "$cfg"
done
bench llama-3.2-1b -n 128 -d 4096 --decode ops
bench llama-3.2-1b -n 128 -d 4096 --decode persistent
