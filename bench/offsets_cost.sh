#!/usr/bin/env bash
# On the GPU machine: the speed cost of per-group offsets (asymmetric q4gsw, `quantize --asymmetric`,
# GGUF Q4_1). `llmgpu bench kernels --offsets both` times every projection of each shape without,
# then with f32 offsets, on the same shapes and kernel configurations in one run, and prints
# time(with) / time(without) for the GEMV (decode) and each prefill GEMM route. The offset kernels'
# correctness on this card is checked first. Results land in $OUT.
#   source .device/setup.sh; bash bench/offsets_cost.sh [shape ...]
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
shapes=${*:-smollm2-135m llama-3.2-1b llama-3.1-8b}
shapes=${shapes// /,}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_gemm.py -k "offset or off" 2>&1 \
  | tail -2 | tee "$OUT/offsets_tests.txt"
for g in 32 64; do
  python3 -m llmgpu.cli bench kernels --shapes "$shapes" --offsets both --group-size $g --json \
    > "$OUT/offsets_g$g.json" 2> "$OUT/offsets_g$g.log"
  python3 - "$OUT/offsets_g$g.json" <<'PY' | tee "$OUT/offsets_g$g.txt"
import json, math, sys
d = json.load(open(sys.argv[1]))
print(f"{d['date']}  {d['adapter']}  streaming read {d['stream_read_gbs']:.0f} GB/s  group {d['group_size']}")
rows = {(r["shape"], r["proj"], r["offsets"]): r for r in d["rows"]}
routes = d["capabilities"]["gemm_routes"]
print(f"{'shape':<14} {'proj':<8} {'N x K':>13} {'GEMV us no/off':>17} {'ratio':>6} {'% roof no/off':>14}"
      + "".join(f" {r + ' GEMM ms no/off':>22} {'ratio':>6}" for r in routes))
for c in d["offsets_cost"]:
    a, b = rows[(c["shape"], c["proj"], False)], rows[(c["shape"], c["proj"], True)]
    line = (f"{c['shape']:<14} {c['proj']:<8} {c['N']:>6}x{c['K']:<6} {a['gemv_us']:>8.1f}/{b['gemv_us']:<8.1f}"
            f" {c['gemv_ratio']:>6.3f} {a['roofline_pct']:>6.1f}/{b['roofline_pct']:<6.1f}")
    for r in routes:
        k = f"gemm_{r}_ms"
        line += (f" {a[k]:>10.3f}/{b[k]:<11.3f} {c[f'gemm_{r}_ratio']:>6.3f}" if k in a and k in b else f" {'':>22} {'':>6}")
    print(line)
keys = sorted({k for c in d["offsets_cost"] for k in c if k.endswith("_ratio")})
gm = {k: math.exp(sum(math.log(c[k]) for c in d["offsets_cost"] if k in c) / sum(k in c for c in d["offsets_cost"]))
      for k in keys}
print("geometric mean of time with / without offsets: " + ", ".join(f"{k[:-6]} {v:.3f}" for k, v in gm.items()))
PY
done
