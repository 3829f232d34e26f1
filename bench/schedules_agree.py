"""Greedy decode of a real model on two decode schedules, token by token, from the same prompt:
where they first pick different tokens, how close the two top logits were there (a near-tie, or
a real difference). Issue 8 asks this of the default model for 256 tokens.

    python3 bench/schedules_agree.py [-n 256] [--schedules ops,phased] [--model PATH] [PROMPT]

Each schedule decodes its own greedy continuation (no teacher forcing); at the first difference
the script prints both runs' top-2 logits at that step.
"""
import argparse
import sys
import time

import numpy as np

sys.path.insert(0, ".")
import llmgpu  # noqa: E402


def greedy(llm, ids, n):
    m = llm.model
    m.reset()
    logits = m.prefill(ids, read=True)
    out, tops = [], []
    for _ in range(n):
        t = int(np.argmax(logits))
        top2 = np.sort(logits)[-2:]
        out.append(t)
        tops.append((float(top2[1]), float(top2[0])))
        if len(ids) + len(out) >= m.max_seq:
            break
        logits = m.decode(t)
    return out, tops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prompt", nargs="?", default="Write a short story about a lighthouse keeper.")
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--schedules", default="ops,phased")
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    runs = {}
    for s in a.schedules.split(","):
        llm = llmgpu.load(a.model, decode=s, sampling="cpu", progress=False, max_seq=a.n + 128)
        ids = llm.encode(a.prompt)
        t = time.perf_counter()
        runs[s] = greedy(llm, ids, a.n)
        print(f"{s}: {len(runs[s][0])} tokens in {time.perf_counter() - t:.1f} s on {llm.model.dev.name} "
              f"(schedule used: {llm.model.decode_schedule})", flush=True)
        text = llm.tokenizer.decode(runs[s][0])
        print(f"  {text[:160]!r}", flush=True)
    (sa, (ta, pa)), (sb, (tb, pb)) = list(runs.items())[:2]
    n = min(len(ta), len(tb))
    diff = next((i for i in range(n) if ta[i] != tb[i]), None)
    if diff is None:
        print(f"same greedy tokens on {sa} and {sb} for all {n}")
        return
    print(f"first difference at token {diff} of {n}: {sa} picks {ta[diff]} (top-2 logits {pa[diff][0]:.4f}, "
          f"{pa[diff][1]:.4f}), {sb} picks {tb[diff]} (top-2 {pb[diff][0]:.4f}, {pb[diff][1]:.4f}); "
          f"margin {abs(pa[diff][0] - pa[diff][1]):.4f} / {abs(pb[diff][0] - pb[diff][1]):.4f}")


if __name__ == "__main__":
    main()
