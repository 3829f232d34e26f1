"""Peer for `llmgpu bench`: transformers' `generate` on CUDA (bf16, random weights of a named shape),
greedy, tg128 after a warm-up, tokens/s mean ± sd over repetitions. Run on the GPU machine:
    python3 bench/peer_transformers.py llama-3.1-8b [llama-3.2-1b ...]
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmgpu.shapes import get_shape  # noqa: E402

for name in sys.argv[1:] or ["llama-3.1-8b"]:
    s = {k: v for k, v in get_shape(name).items() if k not in ("hub_id", "model_type")}
    cls = transformers.Qwen2Config if get_shape(name)["model_type"] == "qwen2" else transformers.LlamaConfig
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = transformers.AutoModelForCausalLM.from_config(cls(**s), dtype=torch.bfloat16).eval()
    ids = torch.randint(100, min(40000, s["vocab_size"]), (1, 16), device=dev)

    def tg(n=128):
        torch.cuda.synchronize() if dev == "cuda" else None
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.cuda.synchronize() if dev == "cuda" else None
        return n / (time.perf_counter() - t)

    tg(16)
    r = [tg() for _ in range(3)]
    res = dict(model=name, runtime=f"transformers {transformers.__version__} bf16 generate",
               tg128=statistics.mean(r), tg128_sd=statistics.stdev(r))
    print(f"{name}: transformers bf16 generate tg128 {res['tg128']:.1f} ± {res['tg128_sd']:.1f} t/s")
    print("JSON", json.dumps(res))
    del model
    torch.cuda.empty_cache()
