"""Decode GEMV shapes of the LANES kernel on a CPU adapter (lavapipe), on the default model's real
weights (layer 0 and lm_head): GPU time per dispatch (timestamps, each dispatch its own pass, as
`llmgpu bench --profile` measures), several rounds alternating between shapes, medians.

    python3 bench/cpu_gemv_sweep.py --proj qkv,o,down,gu,lm_head --rounds 5 \\
        --configs "WG=64,R=2;WG=16,R=4;WG=32,R=2"

gu is the fused gate/up GEMV with the SiLU epilogue (64 rows per workgroup: WG·R = 64).
"""
from __future__ import annotations

import argparse
import collections
import statistics

import numpy as np
import wgpu

from llmgpu import ops
from llmgpu.model import Model
from llmgpu.ops.linear import gemv


def dispatch_us(dev, op_sets, reps: int = 3) -> float:
    """Median GPU µs of one dispatch of the ops (each in its own timestamped pass)."""
    allops = [op for s in op_sets for op in s]
    n = len(allops)
    qs = dev.device.create_query_set(type=wgpu.QueryType.timestamp, count=2 * n)
    res = dev.buffer(size=16 * n, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC,
                     binding=False, label="timestamps")
    out = []
    for _ in range(reps):
        enc = dev.device.create_command_encoder()
        for i, op in enumerate(allops):
            cp = enc.begin_compute_pass(timestamp_writes={"query_set": qs, "beginning_of_pass_write_index": 2 * i,
                                                          "end_of_pass_write_index": 2 * i + 1})
            op.record(cp)
            cp.end()
        enc.resolve_query_set(qs, 0, 2 * n, res, 0)
        dev.queue.submit([enc.finish()])
        t = dev.read(res, np.uint64, (n, 2)).astype(np.float64)
        out += list((t[:, 1] - t[:, 0]) / 1e3)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proj", default="qkv,o,down,gu,lm_head")
    p.add_argument("--configs", default="WG=64,R=2;WG=16,R=4;WG=32,R=2;WG=64,R=1;WG=32,R=4")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    m = Model.load(progress=False, max_seq=64)
    dev, L = m.dev, m.layers[0]
    if not dev.is_cpu:
        raise SystemExit(f"{dev.name} is not a CPU adapter: the LANES GEMV is theirs")
    rng = np.random.default_rng(0)
    weights = {"qkv": L.qkv, "o": L.o, "down": L.down, "gu": L.gate_up, "lm_head": m.lm_head}
    cfgs = [{k: int(v) for k, v in (kv.split("=") for kv in c.split(","))} for c in args.configs.split(";")]
    for name in args.proj.split(","):
        lin = weights[name]
        x = dev.buffer(rng.standard_normal(lin.K).astype(np.float32), label="x")
        xq = ops.q8_act(dev, lin.K)
        ops.submit(dev, [ops.quantize_q8(dev, x, xq, act="f32")], sync=True)
        xin = x if lin.w8 else xq  # as the model: int8 activations, but float ones for lm_head
        sets = {}
        for c in cfgs:
            cfg = dict(c, TPR=1, LANES=True)
            if name == "gu":
                if cfg["WG"] * cfg["R"] != 64:
                    continue
                y = ops.q8_act(dev, lin.N // 2)
                sets[str(c)] = [gemv(dev, lin, xin, y, silu=True, config=cfg, act="f32") for _ in range(4)]
            else:
                y = dev.buffer(size=lin.N * 4, label="y")
                sets[str(c)] = [gemv(dev, lin, xin, y, config=cfg, act="f32") for _ in range(4)]
        res = collections.defaultdict(list)
        for _ in range(args.rounds):
            for k, s in sets.items():
                res[k].append(dispatch_us(dev, s))
        for k, v in sorted(res.items(), key=lambda kv: statistics.median(kv[1])):
            print(f"{name:8s} {lin.N:>6}x{lin.K:<5} {k:24s} median {statistics.median(v):9.1f} us  "
                  f"({', '.join(f'{t:.0f}' for t in v)})", flush=True)


if __name__ == "__main__":
    main()
