"""`llmgpu bench kernels`: q4gsw GEMV / GEMM speed on the projection shapes of real models.

For each shape it prints the GEMV's time, the GB/s of weight + scale bytes it moved and the
percentage of the streaming-read bandwidth measured in the same run by a plain WGSL read
kernel (the roofline), and the GEMM's TFLOP/s at M = 512. Weights are random q4gsw created
in packed form; several copies are rotated so that repeated runs stream from memory, not
from the cache. Times are wall-clock over many dispatches in one submission, after a warm-up,
waiting for the GPU: the gaps between dispatches count, as they do in a model.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np

from .defaults import DEFAULT_GROUP_SIZE
from .gpu import Device
from .ops.core import make_op
from .ops import (Op, Q4Linear, encode, gemm_config, gemv_config, linear, q8_act, quantize_q8, silu_gemv_config,
                  submit)
from .quant import GROUP_SIZES, random_q4
from .shapes import get_shape

CACHE_BUSTER = 256 << 20  # rotate weight copies until this many bytes are in flight


def projection_shapes(name: str) -> list[tuple[str, int, int]]:
    """(label, N, K) of every distinct linear in one layer of a named shape, plus lm_head."""
    s = get_shape(name)
    d, ff = s["hidden_size"], s["intermediate_size"]
    hd = s.get("head_dim") or d // s["num_attention_heads"]
    q, kv = s["num_attention_heads"] * hd, s["num_key_value_heads"] * hd
    out = [("q", q, d), ("k/v", kv, d), ("o", d, q), ("gate/up", ff, d), ("down", d, ff),
           ("lm_head", s["vocab_size"], d)]
    seen, uniq = set(), []
    for lab, n, k in out:
        if (n, k) not in seen:
            seen.add((n, k))
            uniq.append((lab, n, k))
    return uniq


def time_ops(dev: Device, op_sets: list[list[Op]], reps: int, trials: int = 5) -> float:
    """Median GPU seconds per op set. Each trial submits `reps` and `2·reps` sets (rotating)
    and takes the difference, so the fixed cost of a submission and of waiting for it cancels.
    Where timing noise swamps that difference (kernels of a microsecond or less), the median of
    the plain 2·reps timings is returned instead: an overestimate, never an impossible number."""
    submit(dev, [op for s in op_sets for op in s], sync=True)  # warm-up
    times = []
    for _ in range(trials):
        t = []
        for n in (reps, 2 * reps):
            cmd = encode(dev, [op for r in range(n) for op in op_sets[r % len(op_sets)]])
            dev.sync()
            t0 = time.perf_counter()
            dev.queue.submit([cmd])
            dev.sync()
            t.append(time.perf_counter() - t0)
        times.append(((t[1] - t[0]) / reps, t[1] / (2 * reps)))
    diff = statistics.median(d for d, _ in times)
    whole = statistics.median(w for _, w in times)
    return diff if diff > 0.25 * whole else whole


def _bench_gemm(dev, lins, M, cfgs, reps, rng, log) -> dict:
    """The best GEMM time of the configurations at M rows (x, y of the device's act_type)."""
    N, K = lins[0].N, lins[0].K
    dt = dev.act_dtype
    xm = dev.buffer(rng.standard_normal((M, K)).astype(dt), label="xM")
    ym = dev.buffer(size=M * N * np.dtype(dt).itemsize, label="yM")
    best: dict = {}
    for cfg in cfgs:
        if cfg and 4 * 32 * (cfg["BM"] + cfg["BN"]) > dev.max_workgroup_storage:
            continue
        t = time_ops(dev, [linear(dev, lin, xm, ym, M, config=cfg) for lin in lins[:2]], max(2, reps // 20))
        if log:
            log(f"gemm {M}x{N}x{K} {cfg}: {2 * M * N * K / t / 1e12:.2f} TFLOP/s")
        if "gemm_ms" not in best or t * 1e3 < best["gemm_ms"]:
            best = dict(M=M, gemm_ms=t * 1e3, gemm_tflops=2 * M * N * K / t / 1e12,
                        gemm_config=cfg or gemm_config(dev, M, N))
    return best


def stream_bandwidth(dev: Device, nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Bytes/s of a plain WGSL streaming read of one large buffer."""
    nbytes = min(nbytes, dev.max_binding, dev.max_buffer) // 16 * 16
    src = dev.buffer(size=nbytes, label="stream.src")
    dev.write(src, np.random.default_rng().integers(0, 2**32, nbytes // 4, dtype=np.uint32))
    wg, groups = 256, 4096
    dst = dev.buffer(size=wg * groups * 4, label="stream.dst")
    pipe = dev.pipeline("stream_read", consts={"WG": wg})
    op = make_op(dev, pipe, {"src": src, "dst": dst}, (groups, 1, 1), [nbytes // 16, wg * groups])
    return max(nbytes / time_ops(dev, [[op]], reps) for _ in range(3))


def _copies(dev, N, K, gs, rng, budget):
    one = N * K // 2 + N * (K // gs) * 2
    n = max(1, min(64, -(-budget // one)))  # small weights: many copies, still past the L2
    return [Q4Linear(dev, random_q4(N, K, gs, rng), label=f"w{N}x{K}#{i}") for i in range(n)], one


def bench_shape(dev, N, K, *, gs, M, reps, rng, budget, gemv_cfgs=(None,), gemm_cfgs=(None,),
                log=None, silu: bool = False) -> dict:
    """Time the GEMV (and the GEMM at M unless gemm_cfgs is empty) of one shape; keep the best
    of the given configurations (None = the default one). silu: the decode path's fused gate/up
    GEMV (N = 2·ff rows) that writes silu(gate)·up as int8."""
    lins, wbytes = _copies(dev, N, K, gs, rng, budget)
    dt = dev.act_dtype
    row = dict(N=N, K=K, group_size=gs, weight_bytes=wbytes)
    for cfg in gemv_cfgs:
        cfg = dict(cfg or {})
        q8 = cfg.pop("Q8", False)  # int8 activations, quantized once (in a model: by the norm)
        act = cfg.pop("ACT", None)  # activations' type, f32 as in a model, else the device's
        adt = np.float32 if act == "f32" else dt
        x1 = dev.buffer(rng.standard_normal(K).astype(adt), label="x1")
        if q8:
            xq = q8_act(dev, K)
            submit(dev, [quantize_q8(dev, x1, xq)])
            x1 = xq
        # An output buffer per dispatch: no dispatch depends on another, so no barrier (a full
        # drain of the GPU, ~3 µs) separates them and the time is the kernel's streaming rate.
        # In a model, dependent dispatches pay that drain: see `llmgpu bench --profile`.
        n_out = min(2 * reps, 512)
        if silu:
            ys = [q8_act(dev, N // 2, label="act8") for _ in range(n_out)]
        else:
            ys = [dev.buffer(size=N * np.dtype(adt).itemsize, label="y1") for _ in range(n_out)]
        sets = [linear(dev, lins[i % len(lins)], x1, y, 1, config=cfg or None, silu=silu, act=act)
                for i, y in enumerate(ys)]
        t = time_ops(dev, sets, reps)
        default = silu_gemv_config(dev, K) if silu else gemv_config(dev, K, N)
        label = {**(cfg or default), **({"Q8": True} if q8 else {}), **({"ACT": act} if act else {})}
        if log:
            log(f"gemv {N}x{K} {label}: {t * 1e6:.1f} us")
        if "gemv_us" not in row or t * 1e6 < row["gemv_us"]:
            row.update(gemv_us=t * 1e6, gemv_gbs=wbytes / t / 1e9, gemv_config=label)
    if gemm_cfgs:
        row.update(_bench_gemm(dev, lins, M, gemm_cfgs, reps, rng, log))
    for lin in lins:
        for sl in lin.slices:
            for b in (sl.qweight, sl.scales, sl.offsets):
                if b is not None:
                    b.destroy()
    return row


GEMV_SWEEP = [dict(WG=128, TPR=32, R=2), dict(WG=256, TPR=64, R=4),
              dict(WG=128, TPR=32, R=2, Q8=True), dict(WG=128, TPR=32, R=4, Q8=True),
              dict(WG=256, TPR=64, R=4, Q8=True), dict(WG=64, TPR=32, R=2, Q8=True),
              dict(WG=128, TPR=16, R=4, Q8=True), dict(WG=64, TPR=16, R=2, Q8=True),
              dict(WG=256, TPR=128, R=2, Q8=True), dict(WG=128, TPR=128, R=1, Q8=True),
              dict(WG=256, TPR=256, R=1, Q8=True), dict(WG=256, TPR=64, R=2, Q8=True),
              dict(WG=128, TPR=64, R=1, Q8=True), dict(WG=256, TPR=32, R=1, Q8=True)]
SILU_SWEEP = [dict(WG=256, TPR=16, R=4, Q8=True), dict(WG=256, TPR=32, R=8, Q8=True),
              dict(WG=512, TPR=32, R=4, Q8=True), dict(WG=512, TPR=64, R=8, Q8=True),
              dict(WG=128, TPR=16, R=8, Q8=True), dict(WG=1024, TPR=64, R=4, Q8=True),
              dict(WG=512, TPR=16, R=2, Q8=True), dict(WG=1024, TPR=32, R=2, Q8=True)]
GEMM_SWEEP = [dict(BM=64, BN=64, TM=4, TN=4), dict(BM=128, BN=128, TM=8, TN=8),
              dict(BM=128, BN=64, TM=8, TN=4), dict(BM=64, BN=128, TM=4, TN=8),
              dict(BM=128, BN=64, TM=4, TN=8), dict(BM=64, BN=64, TM=8, TN=8),
              dict(BM=128, BN=128, TM=8, TN=4), dict(BM=128, BN=32, TM=8, TN=4),
              dict(BM=64, BN=64, TM=8, TN=4), dict(BM=64, BN=32, TM=4, TN=4)]
# CPU adapters (lavapipe): large per-invocation tiles, the row tile by M (ops/linear.py)
GEMM_SWEEP_CPU = [dict(BM=64, BN=64, TM=4, TN=4), dict(BM=64, BN=64, TM=8, TN=8),
                  dict(BM=8, BN=128, TM=8, TN=16), dict(BM=8, BN=128, TM=8, TN=8),
                  dict(BM=16, BN=128, TM=16, TN=16), dict(BM=16, BN=64, TM=16, TN=16),
                  dict(BM=32, BN=128, TM=16, TN=16), dict(BM=64, BN=128, TM=16, TN=16),
                  dict(BM=64, BN=128, TM=8, TN=16), dict(BM=128, BN=64, TM=16, TN=16)]


def validate(args) -> list[str]:
    """Every argument of `llmgpu bench kernels` checked before the device (and before measuring
    the read bandwidth, which takes seconds). -> the shape names"""
    names = [n.strip() for n in args.shapes.split(",")]
    for n in names:
        get_shape(n)
    for flag, v, low in (("-m", args.m, 1), ("--repeat", args.repeat, 1), ("--max-k", args.max_k, 0),
                         ("--stream-bytes", args.stream_bytes, 16), ("--cache-bytes", args.cache_bytes, 0)):
        if v < low:
            raise ValueError(f"{flag} must be >= {low}, got {v}")
    return names


def run(args) -> int:
    names = validate(args)
    dev = Device(args.adapter, dump_wgsl=getattr(args, "dump_wgsl", None))
    rng = np.random.default_rng()
    bw = stream_bandwidth(dev, args.stream_bytes)
    rows = []
    log = (lambda m: print("  sweep " + m, file=sys.stderr, flush=True)) if args.sweep else None
    for name in names:
        for lab, N, K in projection_shapes(name):
            if args.max_k and K > args.max_k:
                continue
            row = bench_shape(dev, N, K, gs=args.group_size, M=args.m, reps=args.repeat, rng=rng,
                              budget=args.cache_bytes,
                              gemv_cfgs=GEMV_SWEEP if args.sweep else ({**gemv_config(dev, K, N), "Q8": True},),
                              gemm_cfgs=() if args.no_gemm else (
                                  (GEMM_SWEEP_CPU if dev.is_cpu else GEMM_SWEEP) if args.sweep else (None,)),
                              log=log)
            row.update(shape=name, proj=lab, roofline_pct=100 * row["gemv_gbs"] * 1e9 / bw)
            rows.append(row)
            if lab == "gate/up":  # decode's fused gate+up GEMV with the SiLU·mul int8 epilogue
                row = bench_shape(dev, 2 * N, K, gs=args.group_size, M=args.m, reps=args.repeat, rng=rng,
                                  budget=args.cache_bytes, silu=True, log=log, gemm_cfgs=(),
                                  gemv_cfgs=SILU_SWEEP if args.sweep else ({"Q8": True},))
                row.update(shape=name, proj="gu+silu", roofline_pct=100 * row["gemv_gbs"] * 1e9 / bw)
                rows.append(row)
    result = dict(adapter=dev.name, stream_read_gbs=bw / 1e9, group_size=args.group_size,
                  date=time.strftime("%Y-%m-%d"), rows=rows)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"adapter: {dev.name}   streaming read: {bw / 1e9:.1f} GB/s   group size {args.group_size}")
    hdr = f"{'shape':<14} {'proj':<8} {'N x K':>13} {'GEMV us':>9} {'GB/s':>8} {'% roof':>7}"
    if not args.no_gemm:
        hdr += f" {'GEMM M':>7} {'ms':>8} {'TFLOP/s':>8}"
    print(hdr)
    for r in rows:
        line = (f"{r['shape']:<14} {r['proj']:<8} {r['N']:>6}x{r['K']:<6} {r['gemv_us']:>9.1f} "
                f"{r['gemv_gbs']:>8.1f} {r['roofline_pct']:>6.1f}%")
        if "gemm_ms" in r:
            line += f" {r['M']:>7} {r['gemm_ms']:>8.3f} {r['gemm_tflops']:>8.2f}"
        print(line)
    return 0


def add_arguments(p) -> None:
    p.add_argument("--shapes", default="llama-3.1-8b,llama-3.2-1b",
                   help="comma-separated shape presets from models/shapes.json")
    p.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, choices=GROUP_SIZES)
    p.add_argument("-m", "--m", type=int, default=512, help="rows of activations for the GEMM")
    p.add_argument("--repeat", type=int, default=200, help="GEMV dispatches per timing")
    p.add_argument("--no-gemm", action="store_true", help="time the GEMV only")
    p.add_argument("--max-k", type=int, default=0, help="skip shapes with K above this")
    p.add_argument("--sweep", action="store_true", help="try several kernel configurations, keep the best")
    p.add_argument("--stream-bytes", type=int, default=1 << 30, help="size of the streaming-read buffer")
    p.add_argument("--cache-bytes", type=int, default=CACHE_BUSTER,
                   help="rotate weight copies until this many bytes are in flight (defeats the cache)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
