"""Prefill attention alone (attention_prefill.wgsl, flash attention) on a named shape: GPU time
of one chunk of M queries at several cache positions, for the adapter's default tile and others,
in ms and TFLOP/s (4·heads·hd·M·(pos0 + (M + 1)/2): q·k and p·v over each query's causal window).
The default tile is first checked against NumPy on a short case.
  python3 bench/attention_probe.py [--shape llama-3.2-1b] [-m 256] [--pos 0,1792,3840] [--tiles 16x8,8x16,8x8]"""
import argparse

import numpy as np

from llmgpu import ops
from llmgpu.bench_kernels import time_ops
from llmgpu.gpu import UNIFORM, Device
from llmgpu.shapes import get_shape


def reference(q, K, V, pos0):
    """Causal GQA attention in float64: q (M, nh, hd) at positions pos0 + m over K, V (≥ pos0 + M, nkv, hd)."""
    M, nh, hd = q.shape
    g = nh // K.shape[1]
    out = np.empty((M, nh, hd))
    for m in range(M):
        for h in range(nh):
            s = K[:pos0 + m + 1, h // g].astype(np.float64) @ q[m, h] / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[m, h] = p @ V[:pos0 + m + 1, h // g] / p.sum()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("-m", type=int, default=256, help="query rows (the prefill chunk)")
    ap.add_argument("--pos", default="0,1792,3840", help="cache positions of the chunk's first query")
    ap.add_argument("--tiles", default="", help="TXxTY tiles besides the default, e.g. 16x8,8x16,8x8")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    s = get_shape(a.shape)
    nh, nkv = s["num_attention_heads"], s["num_key_value_heads"]
    hd = s.get("head_dim") or s["hidden_size"] // nh
    dev = Device()
    rng = np.random.default_rng(0)
    positions = [int(p) for p in a.pos.split(",")]
    max_seq = max(positions) + a.m
    shape = ops.Heads(nh, nkv, hd, max_seq)
    K, V = (rng.standard_normal((max_seq, nkv, hd)).astype(dev.act_dtype) for _ in range(2))
    kc, vc = dev.buffer(K), dev.buffer(V)
    q = rng.standard_normal((a.m, nh, hd)).astype(np.float32)
    qb, out = dev.buffer(q), dev.buffer(size=q.nbytes)
    step = lambda p: dev.buffer(np.array([p, 0, 0, 0], np.uint32), usage=UNIFORM, binding=False)  # noqa: E731
    default = ops.flash_config(dev, hd, a.m * nh // nkv)
    print(f"adapter: {dev.name} | {a.shape}: {nh} heads, {nkv} kv heads, hd {hd} | default tile {default}")

    n = min(a.m, 24)  # correctness of the default tile, on a short case at the deepest position
    ops.submit(dev, [ops.attention_prefill(dev, step(positions[-1]), qb, kc, vc, out, rows=n, shape=shape)])
    got = dev.read(out, np.float32, (n, nh, hd))
    want = reference(q[:n], K, V, positions[-1])
    print(f"check: {n} rows at {positions[-1]}: max error {np.abs(got - want).max() / np.abs(want).max():.1e} "
          f"relative to the largest output")

    tiles = [None] + [dict(TX=int(t.split("x")[0]), TY=int(t.split("x")[1])) for t in a.tiles.split(",") if t]
    for p in positions:
        flops = 4 * nh * hd * a.m * (p + (a.m + 1) / 2)
        for t in tiles:
            cfg = t or default
            if ops.flash_storage(hd, cfg["TX"], cfg["TY"]) > dev.max_workgroup_storage:
                print(f"  pos {p:>6}  tile {cfg['TX']}x{cfg['TY']}: needs more workgroup memory than the adapter has")
                continue
            op = ops.attention_prefill(dev, step(p), qb, kc, vc, out, rows=a.m, shape=shape, config=t)
            sec = time_ops(dev, [[op]], a.reps)
            print(f"  pos {p:>6}  tile {cfg['TX']}x{cfg['TY']}{' (default)' if t is None else '':<10} "
                  f"{sec * 1e3:8.3f} ms  {flops / sec / 1e12:6.2f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
