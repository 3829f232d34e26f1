"""`llmgpu bench kernels`: q4gsw GEMV / GEMM speed on the projection shapes of real models.

For each shape it prints the GEMV's time, the GB/s of weight + scale bytes it moved and the
percentage of the streaming-read bandwidth measured in the same run by a plain WGSL read
kernel (the roofline), and the GEMM's TFLOP/s-equivalent (2·M·N·K / time) at M = 512 for each
prefill GEMM route the adapter runs (f32 FMA, int8 dot products on activations quantized
beforehand, f16 FMA; ops/linear.py). It also reports what the adapter offers beyond that:
whether a cooperative-matrix (tensor core) feature is listed and granted, and the WGSL language
features. Weights are random q4gsw created in packed form; several copies are rotated so that
repeated runs stream from memory, not from the cache. ``--offsets both`` times every shape without,
then with per-group f32 offsets (asymmetric weights) and prints time(with) / time(without) per
shape and route (bench/offsets_cost.sh runs it on the GPU machine). Times are wall-clock over many dispatches in one submission, after a warm-up,
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
from .ops import (GEMM_ROUTES, Op, Q4Linear, encode, gemm_config, gemm_route, gemm_routes, gemv_config, linear,
                  q8_act, quantize_q8, silu_gemv_config, submit)
from .ops.linear import gemm_workgroup_bytes
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


def _bench_gemm(dev, lins, M, route_cfgs, reps, rng, log) -> dict:
    """The best GEMM time of each route's configurations at M rows (x, y of the device's
    act_type; the int8 route's x quantized once beforehand, as a norm's epilogue does in a model).
    -> gemm_<route>_{ms,tflops,config} per route, and gemm_{ms,tflops,config,route} of the best."""
    N, K = lins[0].N, lins[0].K
    dt = dev.act_dtype
    xm = dev.buffer(rng.standard_normal((M, K)).astype(dt), label="xM")
    x8 = q8_act(dev, K, M, label="x8M")
    submit(dev, [quantize_q8(dev, xm, x8)])
    ym = dev.buffer(size=M * N * np.dtype(dt).itemsize, label="yM")
    best: dict = {}
    for route, cfgs in route_cfgs.items():
        for cfg in cfgs:
            cfg = dict(cfg or gemm_config(dev, M, N, route))
            if gemm_workgroup_bytes(cfg, route) > dev.max_workgroup_storage or \
                    (cfg["BM"] // cfg["TM"]) * (cfg["BN"] // cfg["TN"]) > dev.max_invocations:
                continue
            x = x8 if route == "i8" else xm
            t = time_ops(dev, [linear(dev, lin, x, ym, M, config=cfg, route=route) for lin in lins[:2]],
                         max(2, reps // 20))
            tf = 2 * M * N * K / t / 1e12
            if log:
                log(f"gemm {route} {M}x{N}x{K} {cfg}: {t * 1e3:.3f} ms, {tf:.3g} TFLOP/s")
            if f"gemm_{route}_ms" not in best or t * 1e3 < best[f"gemm_{route}_ms"]:
                best.update({f"gemm_{route}_ms": t * 1e3, f"gemm_{route}_tflops": tf, f"gemm_{route}_config": cfg})
            if "gemm_ms" not in best or t * 1e3 < best["gemm_ms"]:
                best.update(M=M, gemm_ms=t * 1e3, gemm_tflops=tf, gemm_config=cfg, gemm_route=route)
    return best


def capabilities(dev: Device, adapter: str | None = None) -> dict:
    """What the adapter offers for matrix math beyond FMA: the cooperative-matrix (tensor core)
    feature, listed or not and granted or not (a second device is requested with it; wgpu-native
    refuses experimental features), any other *matrix* feature it lists, and the WGSL language
    features wgpu reports (wgpu-py 0.32: none, so packed int8 dot products are assumed)."""
    from .gpu import choose_adapter
    listed = sorted(f for f in dev.adapter.features if "matrix" in f)
    coop = "not listed"
    if "cooperative-matrix" in listed:
        try:
            choose_adapter(adapter).request_device_sync(required_features=["cooperative-matrix"])
            coop = "granted"
        except Exception as e:  # noqa: BLE001  (any refusal is the answer)
            coop = "refused: " + " ".join(str(e).split())[:200]
    import wgpu
    langs = sorted(getattr(wgpu.gpu, "wgsl_language_features", None) or ())
    return dict(cooperative_matrix=coop, matrix_features=listed, wgsl_language_features=langs,
                dot4I8Packed=dev.has_dot4i8, shader_f16=dev.has_f16, gemm_routes=list(gemm_routes(dev)),
                gemm_route_auto=gemm_route(dev))


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


def _copies(dev, N, K, gs, rng, budget, offsets: bool = False):
    one = N * K // 2 + N * (K // gs) * (2 + 4 * offsets)  # nibbles, f16 scales (, f32 offsets)
    n = max(1, min(64, -(-budget // one)))  # small weights: many copies, still past the L2
    return [Q4Linear(dev, random_q4(N, K, gs, rng, offsets=offsets), label=f"w{N}x{K}#{i}") for i in range(n)], one


def bench_shape(dev, N, K, *, gs, M, reps, rng, budget, gemv_cfgs=(None,), gemm_cfgs=None,
                log=None, silu: bool = False, offsets: bool = False) -> dict:
    """Time the GEMV (unless gemv_cfgs is empty) and the GEMM at M (gemm_cfgs: {route: configs},
    unless empty) of one shape; keep the best of the given configurations (None = the default
    one). silu: the decode path's fused gate/up GEMV (N = 2·ff rows) that writes silu(gate)·up
    as int8. offsets: asymmetric weights (per-group f32 offsets, read by the same kernels;
    weight_bytes and GB/s count them)."""
    lins, wbytes = _copies(dev, N, K, gs, rng, budget, offsets)
    dt = dev.act_dtype
    row = dict(N=N, K=K, group_size=gs, weight_bytes=wbytes, offsets=offsets)
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
    if gemm_cfgs is None:
        gemm_cfgs = {r: (None,) for r in gemm_routes(dev)}
    if gemm_cfgs:
        row.update(_bench_gemm(dev, lins, M, gemm_cfgs, reps, rng, log))
    for lin in lins:
        for sl in lin.slices:
            for b in (sl.qweight, sl.scales, sl.offsets, sl.lanes):
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
# CPU adapters (lavapipe): the LANES kernel (one invocation per row, ops/linear.py) by rows per
# invocation and workgroup size, and the cooperative kernel it replaced
GEMV_SWEEP_CPU = [dict(WG=64, TPR=1, R=2, LANES=True, Q8=True), dict(WG=64, TPR=1, R=1, LANES=True, Q8=True),
                  dict(WG=32, TPR=1, R=4, LANES=True, Q8=True), dict(WG=128, TPR=1, R=2, LANES=True, Q8=True),
                  dict(WG=64, TPR=1, R=2, LANES=True), dict(WG=128, TPR=16, R=4, Q8=True)]
SILU_SWEEP_CPU = [dict(WG=32, TPR=1, R=2, LANES=True, Q8=True), dict(WG=64, TPR=1, R=1, LANES=True, Q8=True),
                  dict(WG=16, TPR=1, R=4, LANES=True, Q8=True), dict(WG=128, TPR=16, R=8, Q8=True)]
SILU_SWEEP = [dict(WG=256, TPR=16, R=4, Q8=True), dict(WG=256, TPR=32, R=8, Q8=True),
              dict(WG=512, TPR=32, R=4, Q8=True), dict(WG=512, TPR=64, R=8, Q8=True),
              dict(WG=128, TPR=16, R=8, Q8=True), dict(WG=1024, TPR=64, R=4, Q8=True),
              dict(WG=512, TPR=16, R=2, Q8=True), dict(WG=1024, TPR=32, R=2, Q8=True)]
GEMM_SWEEP = [dict(BM=64, BN=64, TM=4, TN=4), dict(BM=128, BN=128, TM=8, TN=8),
              dict(BM=128, BN=64, TM=8, TN=4), dict(BM=64, BN=128, TM=4, TN=8),
              dict(BM=128, BN=64, TM=4, TN=8), dict(BM=64, BN=64, TM=8, TN=8),
              dict(BM=128, BN=128, TM=8, TN=4), dict(BM=128, BN=32, TM=8, TN=4),
              dict(BM=64, BN=64, TM=8, TN=4), dict(BM=64, BN=32, TM=4, TN=4)]
# The int8 route: KB blocks of 32 along K per step; EXPAND: weights unpacked once per tile
GEMM_I8_SWEEP = [dict(BM=128, BN=128, TM=8, TN=4, KB=2), dict(BM=128, BN=128, TM=8, TN=8, KB=2),
                 dict(BM=128, BN=128, TM=4, TN=8, KB=2), dict(BM=128, BN=64, TM=8, TN=4, KB=2),
                 dict(BM=128, BN=64, TM=4, TN=4, KB=2), dict(BM=64, BN=64, TM=4, TN=4, KB=2),
                 dict(BM=64, BN=128, TM=4, TN=8, KB=2), dict(BM=128, BN=128, TM=8, TN=4, KB=4),
                 dict(BM=128, BN=128, TM=8, TN=4, KB=1), dict(BM=128, BN=128, TM=8, TN=4, KB=2, EXPAND=True),
                 dict(BM=128, BN=64, TM=8, TN=4, KB=2, EXPAND=True), dict(BM=64, BN=64, TM=4, TN=4, KB=4, EXPAND=True)]
GEMM_F16_SWEEP = [dict(BM=128, BN=128, TM=8, TN=4), dict(BM=128, BN=128, TM=8, TN=8), dict(BM=128, BN=64, TM=4, TN=8),
                  dict(BM=128, BN=64, TM=8, TN=4), dict(BM=64, BN=64, TM=4, TN=4)]
# CPU adapters (lavapipe): large per-invocation tiles, the row tile by M (ops/linear.py)
GEMM_SWEEP_CPU = [dict(BM=64, BN=64, TM=4, TN=4), dict(BM=64, BN=64, TM=8, TN=8),
                  dict(BM=8, BN=128, TM=8, TN=16), dict(BM=8, BN=128, TM=8, TN=8),
                  dict(BM=16, BN=128, TM=16, TN=16), dict(BM=16, BN=64, TM=16, TN=16),
                  dict(BM=32, BN=128, TM=16, TN=16), dict(BM=64, BN=128, TM=16, TN=16),
                  dict(BM=64, BN=128, TM=8, TN=16), dict(BM=128, BN=64, TM=16, TN=16)]
GEMM_I8_SWEEP_CPU = [dict(BM=8, BN=128, TM=8, TN=16, KB=2), dict(BM=16, BN=128, TM=16, TN=16, KB=2),
                     dict(BM=16, BN=64, TM=16, TN=16, KB=2), dict(BM=32, BN=64, TM=16, TN=16, KB=4),
                     dict(BM=32, BN=128, TM=16, TN=16, KB=4), dict(BM=64, BN=128, TM=16, TN=16, KB=4),
                     dict(BM=64, BN=128, TM=16, TN=16, KB=2), dict(BM=64, BN=64, TM=16, TN=16, KB=4),
                     dict(BM=32, BN=64, TM=8, TN=8, KB=2), dict(BM=32, BN=64, TM=16, TN=16, KB=2, EXPAND=True)]
GEMM_F16_SWEEP_CPU = [dict(BM=8, BN=128, TM=8, TN=16), dict(BM=16, BN=128, TM=16, TN=16),
                      dict(BM=64, BN=128, TM=16, TN=16)]


def lanes_gemm_sweep(dev) -> list[dict]:
    """The CPU adapters' LANES GEMM (ops/linear.py) by rows and columns per invocation, for this
    adapter's subgroup size (one subgroup per workgroup)."""
    if not dev.has_subgroups:
        return []
    S = dev.subgroup_size
    return [dict(BM=tm, BN=S * tn, TM=tm, TN=tn, WG=S, LANES=True)
            for tm, tn in ((32, 4), (16, 4), (16, 8), (8, 8), (32, 2), (24, 4))]


def gemm_sweep(dev, routes) -> dict:
    """{route: tile configurations} that `--sweep` tries on this adapter (CPU or GPU lists)."""
    cpu = dev.is_cpu
    lists = {"f32": (lanes_gemm_sweep(dev) + GEMM_SWEEP_CPU) if cpu else GEMM_SWEEP,
             "i8": GEMM_I8_SWEEP_CPU if cpu else GEMM_I8_SWEEP,
             "f16": GEMM_F16_SWEEP_CPU if cpu else GEMM_F16_SWEEP}
    return {r: lists[r] for r in routes}


def parse_routes(dev, spec: str | None) -> tuple[str, ...]:
    """`--gemm` for `bench kernels`: comma-separated routes (auto: the adapter's own), default
    every route the adapter runs."""
    if not spec:
        return gemm_routes(dev)
    return tuple(dict.fromkeys(gemm_route(dev, r.strip()) for r in spec.split(",")))


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
    for r in filter(None, (getattr(args, "gemm", None) or "").split(",")):
        if r.strip() not in ("auto", *GEMM_ROUTES):
            raise ValueError(f"--gemm {r.strip()!r}: expected auto, {', '.join(GEMM_ROUTES)} (comma-separated)")
    if args.no_gemm and args.no_gemv:
        raise ValueError("--no-gemm and --no-gemv leave nothing to measure")
    return names


def run(args) -> int:
    names = validate(args)
    dev = Device(args.adapter, dump_wgsl=getattr(args, "dump_wgsl", None))
    caps = capabilities(dev, args.adapter)
    routes = parse_routes(dev, getattr(args, "gemm", None))
    rng = np.random.default_rng()
    bw = stream_bandwidth(dev, args.stream_bytes)
    rows = []
    log = (lambda m: print("  sweep " + m, file=sys.stderr, flush=True)) if args.sweep else None
    gemm_cfgs = {} if args.no_gemm else (gemm_sweep(dev, routes) if args.sweep else {r: (None,) for r in routes})
    variants = OFFSETS[getattr(args, "offsets", "no")]
    for name in names:
        for lab, N, K in projection_shapes(name):
            if (args.max_k and K > args.max_k) or (args.no_lm_head and lab == "lm_head"):
                continue
            gemv_cfgs = () if args.no_gemv else (
                (GEMV_SWEEP_CPU if dev.is_cpu else GEMV_SWEEP) if args.sweep else ({**gemv_config(dev, K, N), "Q8": True},))
            for off in variants:  # the same shape and configurations with and without offsets, back to back
                row = bench_shape(dev, N, K, gs=args.group_size, M=args.m, reps=args.repeat, rng=rng,
                                  budget=args.cache_bytes, gemv_cfgs=gemv_cfgs, gemm_cfgs=gemm_cfgs, log=log,
                                  offsets=off)
                row.update(shape=name, proj=lab)
                if "gemv_gbs" in row:
                    row["roofline_pct"] = 100 * row["gemv_gbs"] * 1e9 / bw
                rows.append(row)
            if lab == "gate/up" and not args.no_gemv:  # decode's fused gate+up GEMV, SiLU·mul int8 epilogue
                for off in variants:
                    row = bench_shape(dev, 2 * N, K, gs=args.group_size, M=args.m, reps=args.repeat, rng=rng,
                                      budget=args.cache_bytes, silu=True, log=log, gemm_cfgs={},
                                      gemv_cfgs=(SILU_SWEEP_CPU if dev.is_cpu else SILU_SWEEP) if args.sweep else ({"Q8": True},),
                                      offsets=off)
                    row.update(shape=name, proj="gu+silu", roofline_pct=100 * row["gemv_gbs"] * 1e9 / bw)
                    rows.append(row)
    result = dict(adapter=dev.name, stream_read_gbs=bw / 1e9, group_size=args.group_size,
                  date=time.strftime("%Y-%m-%d"), capabilities=caps, rows=rows)
    if len(variants) == 2:
        result["offsets_cost"] = offsets_cost(rows, routes)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"adapter: {dev.name}   streaming read: {bw / 1e9:.1f} GB/s   group size {args.group_size}")
    print(f"cooperative-matrix: {caps['cooperative_matrix']}   matrix features listed: "
          f"{', '.join(caps['matrix_features']) or 'none'}   WGSL language features reported: "
          f"{', '.join(caps['wgsl_language_features']) or 'none'}")
    print(f"prefill GEMM routes: {', '.join(caps['gemm_routes'])} (auto: {caps['gemm_route_auto']})")
    hdr = f"{'shape':<14} {'proj':<8} {'N x K':>13}" + (" off" if variants != (False,) else "")
    if not args.no_gemv:
        hdr += f" {'GEMV us':>9} {'GB/s':>8} {'% roof':>7}"
    if gemm_cfgs:
        hdr += f" {'GEMM M':>7}" + "".join(f" {r + ' TF/s':>10}" for r in routes)
    print(hdr)
    for r in rows:
        line = f"{r['shape']:<14} {r['proj']:<8} {r['N']:>6}x{r['K']:<6}" + (
            f" {'yes' if r['offsets'] else 'no':>3}" if variants != (False,) else "")
        if not args.no_gemv:
            line += f" {r['gemv_us']:>9.1f} {r['gemv_gbs']:>8.1f} {r['roofline_pct']:>6.1f}%"
        if "gemm_ms" in r:
            line += f" {r['M']:>7}" + "".join(f" {r.get(f'gemm_{x}_tflops', float('nan')):>10.3g}" for x in routes)
        print(line)
    if "offsets_cost" in result:
        print("time with offsets / without (same shape, configurations and run; > 1: offsets cost):")
        for c in result["offsets_cost"]:
            print(f"  {c['shape']:<14} {c['proj']:<8} {c['N']:>6}x{c['K']:<6} " + "   ".join(
                f"{k.removesuffix('_ratio')} {v:.3f}" for k, v in c.items() if k.endswith("_ratio")))
        print("  geometric mean: " + "   ".join(f"{k} {v:.3f}" for k, v in _geomeans(result["offsets_cost"]).items()))
    return 0


OFFSETS = {"no": (False,), "yes": (True,), "both": (False, True)}


def offsets_cost(rows: list[dict], routes) -> list[dict]:
    """Per shape measured both ways: time with offsets / time without, for the GEMV and each GEMM
    route (keys gemv_ratio, gemm_<route>_ratio)."""
    out = []
    for a, b in zip(rows, rows[1:]):
        if a["offsets"] or not b["offsets"] or (a["shape"], a["proj"], a["N"], a["K"]) != \
                (b["shape"], b["proj"], b["N"], b["K"]):
            continue
        c = dict(shape=a["shape"], proj=a["proj"], N=a["N"], K=a["K"])
        for key in ["gemv_us"] + [f"gemm_{r}_ms" for r in routes]:
            if key in a and key in b:
                c[key.rsplit("_", 1)[0] + "_ratio"] = b[key] / a[key]
        out.append(c)
    return out


def _geomeans(costs: list[dict]) -> dict:
    keys = dict.fromkeys(k for c in costs for k in c if k.endswith("_ratio"))
    return {k.removesuffix("_ratio"): float(np.exp(np.mean([np.log(c[k]) for c in costs if k in c]))) for k in keys}


def add_arguments(p) -> None:
    p.add_argument("--shapes", default="llama-3.1-8b,llama-3.2-1b",
                   help="comma-separated shape presets from models/shapes.json")
    p.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, choices=GROUP_SIZES)
    p.add_argument("-m", "--m", type=int, default=512, help="rows of activations for the GEMM")
    p.add_argument("--repeat", type=int, default=200, help="GEMV dispatches per timing")
    p.add_argument("--no-gemm", action="store_true", help="time the GEMV only")
    p.add_argument("--no-gemv", action="store_true", help="time the GEMM only")
    p.add_argument("--no-lm-head", action="store_true", help="skip lm_head (prefill runs it as a GEMV)")
    p.add_argument("--max-k", type=int, default=0, help="skip shapes with K above this")
    p.add_argument("--sweep", action="store_true", help="try several kernel configurations, keep the best")
    p.add_argument("--stream-bytes", type=int, default=1 << 30, help="size of the streaming-read buffer")
    p.add_argument("--cache-bytes", type=int, default=CACHE_BUSTER,
                   help="rotate weight copies until this many bytes are in flight (defeats the cache)")
    p.add_argument("--offsets", choices=tuple(OFFSETS), default="no",
                   help="weights with per-group offsets (asymmetric, `quantize --asymmetric`): no, yes, or both "
                        "(bench kernels: each shape without, then with; prints the time ratio). `llmgpu bench "
                        "--shape S --offsets yes`: the model's layer weights carry offsets")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
