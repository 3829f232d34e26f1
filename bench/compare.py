"""One table from a device run: llmgpu bench (--json files) beside llama.cpp (peer.sh output).

usage: python3 bench/compare.py OUT_DIR   (reads OUT_DIR/bench-*.json and OUT_DIR/llamacpp.txt)
"""
import glob
import json
import os
import sys

out = sys.argv[1]
peer = {}
path = os.path.join(out, "llamacpp.txt")
if os.path.exists(path):
    for line in open(path):
        if line.startswith("JSON "):
            r = json.loads(line[5:])
            peer[os.path.basename(r["model"]).removeprefix("peer-").removesuffix(".gguf")] = r
rows = []
for f in sorted(glob.glob(os.path.join(out, "bench-*.json"))):
    res = json.load(open(f))
    p = peer.get(res["model"], {})
    for r in res["rows"]:
        t = r["test"]
        kind = "pp512" if t.startswith("pp") else "tg128"
        pv, psd = p.get(kind), p.get(kind + "_sd")
        ratio = f"{r['tps'] / pv:.2f}×" if pv else "–"
        extra = f"{r['roofline_pct']:.1f} % | {r['dispatches']}" if "gbs" in r else "– | –"
        peer_s = f"{pv:.1f} ± {psd:.1f}" if pv else "–"
        rows.append(f"| {res['model']} | {t} | {r['tps']:.1f} ± {r['sd']:.1f} | {peer_s} | {ratio} | {extra} |")
    adapter = res["adapter"]
print(f"{rows and adapter}, {res['date'] if rows else ''}; llama.cpp CUDA (Q4_0, llama-cpp-python 0.3.36) in the same session")
print("| shape | test | llmgpu t/s | llama.cpp t/s | llmgpu / llama.cpp | llmgpu % roofline | dispatches/token |")
print("|---|---|---|---|---|---|---|")
print("\n".join(rows))
