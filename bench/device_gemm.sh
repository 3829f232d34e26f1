#!/usr/bin/env bash
# On the GPU machine, one call (issue 9, the prefill GEMM routes): the int8 GEMM's correctness on
# the real adapter, a sweep of the f32 / i8 / f16 GEMM tiles at M = 512 on the Llama-3.1-8B and
# Llama-3.2-1B projection shapes (TFLOP/s-equivalent = 2·M·N·K / time; lm_head left out: prefill
# runs it as a GEMV for the last token only), the cooperative-matrix probe, then pp512 of three
# shapes with each route on the same model. ~4–5 minutes on an H200. Whole log: $OUT/gemm.log
# (JSON beside it).
#   source .device/setup.sh; bash bench/device_gemm.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
main() {
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git log -1 --format='commit %h %s' 2>/dev/null

echo "== int8 / f16 GEMM tests on this adapter"
timeout 300 python3 -m pytest -q -x tests/test_gemm.py -k "not planted" -p no:cacheprovider 2>&1 | tail -4

echo "== GEMM sweep, M = 512 (every route's tiles; best per route)"
python3 -m llmgpu bench kernels --shapes llama-3.1-8b,llama-3.2-1b -m 512 --sweep --no-gemv --no-lm-head \
  --repeat 100 --json > "$OUT/gemm_kernels.json"
python3 - "$OUT/gemm_kernels.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["adapter"], "| capabilities:", json.dumps(d["capabilities"]))
for r in d["rows"]:
    cells = [f"{x} {r[f'gemm_{x}_tflops']:6.2f} TF/s {r[f'gemm_{x}_config']}" for x in ("f32", "i8", "f16")
             if f"gemm_{x}_tflops" in r]
    print(f"{r['shape']:<13} {r['proj']:<8} {r['N']:>6}x{r['K']:<6} best {r['gemm_route']}:", " | ".join(cells))
EOF

echo "== pp512 per route (llmgpu bench --gemm f32,i8,f16, same model and session)"
for s in smollm2-135m llama-3.2-1b llama-3.1-8b; do
  python3 -m llmgpu bench --shape "$s" -p 512 -n 0 -r 3 --gemm f32,i8,f16 --json > "$OUT/pp-$s.json"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print(d['model'], r['test'], round(r['tps'], 1), '+-', round(r['sd'], 1)) for r in d['rows']]" "$OUT/pp-$s.json"
done
}
main 2>&1 | tee "$OUT/gemm.log"
