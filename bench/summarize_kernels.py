"""Print the table of a `llmgpu bench kernels --json` result (usage: summarize_kernels.py FILE)."""
import json
import sys

d = json.load(open(sys.argv[1]))
print(f"{d['date']}  {d['adapter']}  streaming read {d['stream_read_gbs']:.0f} GB/s  group {d['group_size']}")
for r in d["rows"]:
    g = f"{r.get('gemm_tflops', 0):6.2f} TFLOP/s {r.get('gemm_config')}" if "gemm_ms" in r else ""
    print(f"{r['shape']:<13} {r['proj']:<8} {r['N']:>6}x{r['K']:<6} {r['gemv_us']:8.1f} us "
          f"{r['gemv_gbs']:7.0f} GB/s {r['roofline_pct']:5.1f}%  {r['gemv_config']}  {g}")
