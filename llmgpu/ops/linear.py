"""The q4gsw linear y = x · Wᵀ: `Q4Linear` holds a weight on the GPU (split by rows where it
exceeds the adapter's storage-binding limit); `gemv` records it for one row of activations
(decode), `gemm` for M rows (prefill), by one of three routes: f32 FMA (the reference, and for
any adapter), int8 dot products on int8 activations (i8), or f16 FMA (f16). Kernel shapes and
the route per adapter class come from measured sweeps (`llmgpu bench kernels --sweep`,
BENCHMARKS.md)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..defaults import GEMM_ROUTES
from ..gpu import Device
from ..quant import Q4Tensor, Q8Tensor
from .codegen import gemm_i8_snippets, gemm_lanes_snippets, gemm_snippets, gemv_lanes_snippets, gemv_snippets
from .core import Op, esize, make_op, need, submit
from .layer import Q8Act, q8_act, quantize_q8


@dataclass
class _Slice:
    n0: int
    n: int
    qweight: object  # (n, K/8) u32; int8 weights: (n, K/4) u32
    scales: object  # (n, K/GS) act_type
    offsets: object  # (n, K/GS) f32, or None
    bias: object  # (n,) f32, or None
    lanes: object = None  # (n, ⌈G/2⌉ or ⌈G/4⌉, 4) f32: scales (and offsets) for the LANES GEMV, CPU adapters


class Q4Linear:
    """A q4gsw (or int8, quant.Q8Tensor) weight (N, K) on the GPU, split by rows to respect the
    binding limit; optional per-group offsets and a bias (N,)."""

    def __init__(self, dev: Device, t: Q4Tensor | Q8Tensor, label: str = "linear",
                 bias: np.ndarray | None = None):
        self.N, self.K = t.shape
        self.w8 = isinstance(t, Q8Tensor)  # int8 weights (GEMV only)
        self.group_size = t.group_size
        self.has_offsets = t.offsets is not None
        self.has_bias = bias is not None
        if bias is not None and np.shape(bias) != (self.N,):
            raise ValueError(f"{label}: bias of shape {np.shape(bias)} for a weight with {self.N} rows")
        self.label = label
        scales = t.scales.astype(dev.act_dtype)
        self.nbytes = t.qweight.nbytes + scales.nbytes + (t.offsets.nbytes if t.offsets is not None else 0)
        row_bytes = max(t.qweight[0].nbytes, t.scales[0].size * 4)
        # Rows per slice: within the binding limit, and a multiple of 256 so that every slice's
        # output offset stays aligned for any adapter's storage-offset alignment.
        per = max(256, (dev.max_binding // row_bytes) // 256 * 256)
        part = lambda a, n0, n1, name: dev.buffer(a[n0:n1], label=f"{label}.{name}[{n0}:{n1}]")  # noqa: E731
        self.slices = [_Slice(n0, min(self.N, n0 + per) - n0,
                              part(t.qweight, n0, n0 + per, "qweight"), part(scales, n0, n0 + per, "scales"),
                              part(t.offsets, n0, n0 + per, "offsets") if t.offsets is not None else None,
                              part(np.asarray(bias, np.float32), n0, n0 + per, "bias") if bias is not None else None)
                       for n0 in range(0, self.N, per)]
        if lanes_gemv(dev, self.K):  # the CPU adapters' GEMV reads scales and offsets interleaved
            sw = lane_scales(scales, t.offsets)
            for s in self.slices:
                s.lanes = dev.buffer(sw[s.n0:s.n0 + s.n], label=f"{label}.lanes[{s.n0}:{s.n0 + s.n}]")

    def lane_binds(self, s: _Slice) -> dict:
        """The LANES GEMV's weight bindings: the weight, sw (scales and offsets), the bias."""
        return {"w": s.qweight, "sw": s.lanes, **({"bias": s.bias} if s.bias is not None else {})}

    def weight_binds(self, s: _Slice) -> dict:
        binds = {"w": s.qweight, "sc": s.scales}
        if s.offsets is not None:
            binds["off"] = s.offsets
        if s.bias is not None:
            binds["bias"] = s.bias
        return binds

    def flags(self) -> dict:
        return dict(GS=self.group_size, HAS_OFFSETS=self.has_offsets, HAS_BIAS=self.has_bias)


CPU_COOPERATIVE_GEMV = dict(WG=128, TPR=16, R=4)  # CPU adapters, where the LANES kernel does not serve
LANES_MAX_CHUNKS = 64  # the LANES GEMV unrolls K: up to K = 2048 (longer rows: the cooperative GEMV)


def lanes_gemv(dev: Device, K: int) -> bool:
    """Whether the GEMV of a weight with rows of K runs the LANES kernel by default (one
    invocation per row, K unrolled): on CPU adapters, for K up to 32·LANES_MAX_CHUNKS."""
    return bool(dev.is_cpu) and K % 32 == 0 and K // 32 <= LANES_MAX_CHUNKS


def lane_scales(scales: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """sw of the LANES GEMV (q4gsw_gemv.wgsl): per row, (s_g, o_g, s_g+1, o_g+1) for each pair
    of groups with offsets, else (s_g .. s_g+3), zero-padded: (N, ⌈G/2⌉·4) or (N, ⌈G/4⌉·4) f32.
    One vec4 load serves 2 (4) groups."""
    s = np.asarray(scales, np.float32)
    N, G = s.shape
    if offsets is None:
        out = np.zeros((N, -(-G // 4) * 4), np.float32)
        out[:, :G] = s
        return out
    out = np.zeros((N, -(-G // 2) * 2, 2), np.float32)
    out[:, :G, 0], out[:, :G, 1] = s, offsets
    return out.reshape(N, -1)


def gemv_config(dev: Device, K: int, N: int = 0) -> dict:
    """Workgroup shape of the GEMV for an (N, K) weight, from `llmgpu bench kernels --sweep`
    (BENCHMARKS.md): on a GPU, one row per row group with 32 threads for short rows and 64 for
    rows of 4096 and more; very tall weights (lm_head) 2 rows. On a CPU adapter (lavapipe), the
    LANES kernel (`lanes_gemv`): 16 invocations of 4 rows, so that SmolLM2-135M's 576-960-row
    weights make 9-15 workgroups to share among the CPU threads (down: 251 against 276 µs for
    64 × 2, q/k/v and o equal); the lm_head 64 × 2 (bench/cpu_gemv_sweep.py, BENCHMARKS.md).
    Else 16 threads and 4 rows (its subgroups are 8 wide)."""
    if lanes_gemv(dev, K):
        return dict(WG=64, TPR=1, R=2, LANES=True) if N >= 16384 else dict(WG=16, TPR=1, R=4, LANES=True)
    if dev.is_cpu:
        return dict(CPU_COOPERATIVE_GEMV)
    if N >= 65536:
        return dict(WG=128, TPR=32, R=2)
    if K >= 4096:
        return dict(WG=128, TPR=64, R=1)
    return dict(WG=256, TPR=32, R=1)


def silu_gemv_config(dev: Device, K: int = 0) -> dict:
    """A GEMV shape with 64 rows per workgroup, as the fused gate/up + SiLU epilogue needs; by K,
    from the H100 sweep in BENCHMARKS.md (28672×4096: 21.9 µs, 97 % of the read bandwidth)."""
    if lanes_gemv(dev, K):
        return dict(WG=32, TPR=1, R=2, LANES=True)
    if dev.is_cpu:
        return dict(WG=128, TPR=16, R=8)
    if K >= 4096:
        return dict(WG=512, TPR=64, R=8)
    if K >= 2048:
        return dict(WG=256, TPR=32, R=8)
    return dict(WG=256, TPR=16, R=4)


# ---- the prefill GEMM: routes and tiles ----------------------------------------------------

# The route `auto` takes, by adapter class. GPUs: int8, as llama.cpp's CUDA build quantizes
# activations for its integer matrix kernels: on an H200 (bench/device_gemm.sh, BENCHMARKS.md)
# 52–74 TFLOP/s against f32's 12–23 at M = 512, pp512 2.0–2.6× (8B 3 193 against 1 234 t/s), for
# +0.3 % perplexity on the default model. CPU adapters: f32, though int8 is faster on lavapipe too
# (pp128 of SmolLM2-135M 87 against 54 t/s), because int8 activations flip the default model's
# near-tied first answer to the README question ("The" 25.33 against "L" 25.25 in f32; 24.75
# against 24.89 through int8), which test_cli_real's golden answer catches — and would on a GPU
# (`--gemm f32` keeps it there). The f16 variant keeps it (25.31 / 25.22) and is slower on both.
# `--gemm i8|f16|f32` (Model(gemm=...)) selects a route by hand. Model keeps f32 in place of i8
# where int8 activations are turned off (q8=False).
GEMM_ROUTE = {"cpu": "f32", "gpu": "i8"}


def gemm_routes(dev: Device) -> tuple[str, ...]:
    """The prefill GEMM routes this adapter runs: f32 always, i8 where WGSL's packed integer dot
    product is available (Device.has_dot4i8), f16 where the adapter has shader-f16."""
    have = {"f32": True, "i8": dev.has_dot4i8, "f16": dev.has_f16}
    return tuple(r for r in GEMM_ROUTES if have[r])


def gemm_route(dev: Device, want: str = "auto") -> str:
    """`want` checked against the adapter; `auto`: GEMM_ROUTE for its class, else f32."""
    if want == "auto":
        r = GEMM_ROUTE["cpu" if dev.is_cpu else "gpu"]
        return r if r in gemm_routes(dev) else "f32"
    if want not in GEMM_ROUTES:
        raise ValueError(f"prefill GEMM route {want!r} is not one of auto, {', '.join(GEMM_ROUTES)}")
    if want not in gemm_routes(dev):
        need_ = "shader-f16" if want == "f16" else "packed 4x8-bit integer dot products"
        raise ValueError(f"the {want} prefill GEMM needs {need_}, which {dev.name} lacks; use --gemm f32")
    return want


def gemm_workgroup_bytes(cfg: dict, route: str = "f32") -> int:
    """Workgroup memory a GEMM tile needs (the adapter's limit: Device.max_workgroup_storage)."""
    if route == "i8":
        ww = 2 if cfg.get("EXPAND") else 1
        return cfg.get("KB", 2) * (cfg["BM"] * 48 + cfg["BN"] * (16 * ww + 8))
    return 32 * (cfg["BM"] + cfg["BN"]) * (2 if route == "f16" else 4)


def gemm_config(dev: Device, M: int, N: int = 1 << 30, route: str = "f32") -> dict:
    """GEMM tile, from `llmgpu bench kernels --sweep` on an H100 (BENCHMARKS.md): 128×128 with
    8×4 per thread when that still makes 128+ tiles (21–24 TFLOP/s at M = 512 on Llama-3.1-8B's
    shapes); 128×64 with 4×8 when fewer (16.5 against 11.5 on 2048-wide outputs at M = 512);
    64×64 with 4×4 for short inputs, where large tiles would leave the GPU idle. The f16 variant
    takes the same tiles; the int8 route: `_i8_gemm_config`. CPU adapters: `_cpu_gemm_config`."""
    if route == "i8":
        return _i8_gemm_config(dev, M, N)
    if dev.is_cpu and route == "f32" and getattr(dev, "has_subgroups", False) and dev.subgroup_size >= 4:
        return _cpu_lanes_gemm_config(dev, M)
    if dev.is_cpu:
        return _cpu_gemm_config(dev, M)
    if M >= 256 and -(-M // 128) * -(-N // 128) >= 128:
        cfg = dict(BM=128, BN=128, TM=8, TN=4)
    elif M >= 128:
        cfg = dict(BM=128, BN=64, TM=4, TN=8)
    else:
        cfg = dict(BM=64, BN=64, TM=4, TN=4)
    return {**cfg, "WG": (cfg["BM"] // cfg["TM"]) * (cfg["BN"] // cfg["TN"])}


def _cpu_lanes_gemm_config(dev: Device, M: int) -> dict:
    """The f32 GEMM on a CPU adapter with subgroups: the LANES kernel (q4gsw_gemm.wgsl), one
    subgroup per workgroup, each invocation TN output columns and all of the tile's TM rows.
    TM: of 16-40 rows (8 for M <= 8), the one that pads M least (rows past M are computed for
    nothing), the smaller on a tie; 16 rows take 8 columns, more rows 4. SmolLM2-135M on lavapipe
    (BENCHMARKS.md): gate/up (3072×576) at M = 128 in 24 ms for 16 × 8 and 32 × 4 (34 for 8 × 8),
    at M = 37 in 6.9 ms for 40 × 4 (11.9 for 32 × 4); the tiled kernel's best tile took 64–70
    ms at M = 128."""
    S = dev.subgroup_size
    if M <= 8 or S > 8:
        TM = S * -(-min(M, 32) // S)
    else:
        TM = min((t for t in (16, 24, 32, 40) if t % S == 0), key=lambda t: (t * -(-M // t), t))
    TN = 8 if TM <= 16 else 4
    return dict(BM=TM, BN=S * TN, TM=TM, TN=TN, WG=S, LANES=True)


def _cpu_gemm_config(dev: Device, M: int) -> dict:
    """The GEMM tile on a CPU adapter (lavapipe), from a sweep of SmolLM2-135M's prefill shapes
    (BENCHMARKS.md, lavapipe section): 16×16 outputs per invocation over 128 columns, because
    lavapipe runs an invocation's workgroup-memory loads lane by lane, so FMAs per load decide
    the speed; and the row tile only as tall as M needs (8 to 64), because each row tile
    dequantizes the weights again and rows past M are computed for nothing (M = 4: 8 rows,
    ~7× faster than the GPUs' 64×64). (256 columns measured faster still, but needs 34–40 KB of
    workgroup memory, above lavapipe's 32 KB limit.)"""
    BM = 8
    while BM < min(M, 64):
        BM *= 2
    TM = min(16, BM)
    return dict(BM=BM, BN=128, TM=TM, TN=16, WG=(BM // TM) * (128 // 16))


def can_norm_after(dev: Device, lin: Q4Linear, act: str | None = None) -> bool:
    """Whether `gemv(..., norm_after=...)` fuses the norm into this weight's GEMV (else it
    appends a norm op): one weight slice, f32 output, and coherent storage on the adapter."""
    return len(lin.slices) == 1 and (act or dev.act_type) == "f32" and dev.has_coherent and lin.N % 32 == 0


def _norm_counter(dev: Device):
    """The workgroups-finished counter every fused norm shares (dispatches run one after another;
    the last workgroup of each resets it)."""
    if getattr(dev, "_norm_counter", None) is None:
        dev._norm_counter = dev.buffer(size=16, label="gemv.done")
    return dev._norm_counter


def _i8_gemm_config(dev: Device, M: int, N: int) -> dict:
    """The int8 GEMM's tile: BM×BN outputs, TM×TN per invocation, KB blocks of 32 along K per
    step, EXPAND: weights unpacked to int8 once per tile in workgroup memory rather than by every
    invocation. GPUs: from the H200 sweep at M = 512 (bench/device_gemm.sh); 128-row tiles
    lost to 64-row ones on every shape. CPU adapters: from the lavapipe sweep (BENCHMARKS.md)."""
    if dev.is_cpu:  # as the f32 route's: 16×16 per invocation, the row tile as tall as M needs
        BM = 8
        while BM < min(M, 64):
            BM *= 2
        cfg = dict(BM=BM, BN=128, TM=min(16, BM), TN=16, KB=2 if BM <= 16 else 4, EXPAND=False)
    elif M >= 128 and -(-M // 64) * -(-N // 128) >= 128:  # H200 sweep: 57–72 TFLOP/s at M = 512
        cfg = dict(BM=64, BN=128, TM=4, TN=8, KB=2, EXPAND=False)
    else:  # fewer outputs: more, smaller tiles (8B k/v 1024×4096: 52 against 27 TFLOP/s)
        cfg = dict(BM=64, BN=64, TM=4, TN=4, KB=2, EXPAND=False)
    return {**cfg, "WG": (cfg["BM"] // cfg["TM"]) * (cfg["BN"] // cfg["TN"])}


def gemv(dev: Device, lin: Q4Linear, x, y, *, residual: bool = False, silu: bool = False,
         config: dict | None = None, act: str | None = None, norm_after: tuple | None = None) -> list[Op]:
    """Record y(N) = x(K) · Wᵀ (+ y when residual), one op per weight slice.

    x: a buffer of `act` (default: the device's act_type) or a Q8Act (int8 activations).
    y: a buffer of `act` (or (buffer, byte offset, size)); with silu, a Q8Act of N/2 values that
    receives silu(gate)·up from a gate/up weight interleaved in blocks of 32 rows (one slice).
    norm_after: (w, out, eps) — then RMSNorm(y) · w → out (a Q8Act of N values) after the GEMV:
    in its last workgroup where `can_norm_after` (residual GEMVs only), else as a norm op."""
    act = act or dev.act_type
    cfg = dict(config or (silu_gemv_config(dev, lin.K) if silu else gemv_config(dev, lin.K, lin.N)))
    lanes = bool(cfg.get("LANES"))
    if lanes and config is None and norm_after is not None:  # the fused norm: the cooperative kernel's
        cfg, lanes = dict(CPU_COOPERATIVE_GEMV), False
    if lanes and (lin.K % 32 or lin.slices[0].lanes is None or cfg.get("TPR", 1) != 1):
        raise ValueError(f"the LANES GEMV needs TPR 1 and lane scales (a CPU adapter, K <= "
                         f"{32 * LANES_MAX_CHUNKS}): {cfg}, K = {lin.K}")
    if norm_after is not None:
        w, out, eps = norm_after
        if not residual or silu or not isinstance(out, Q8Act):
            raise ValueError("norm_after needs a residual GEMV and an int8 (Q8Act) output")
        if not can_norm_after(dev, lin, act) or lanes:
            from .layer import rmsnorm
            return [*gemv(dev, lin, x, y, residual=True, config=config, act=act),
                    rmsnorm(dev, y, w, out, rows=1, dim=lin.N, eps=eps)]
        if isinstance(y, tuple) and y[1]:
            raise ValueError("norm_after normalises the whole of y: give the buffer, not a slice")
    q8 = isinstance(x, Q8Act)
    if silu and (len(lin.slices) != 1 or lin.N % 64 or not isinstance(y, Q8Act)):
        raise ValueError("the fused SiLU epilogue needs one weight slice, N % 64 == 0 and an int8 output")
    cfg.setdefault("TPR", 1)
    rows_per_wg = cfg["WG"] // cfg["TPR"] * cfg["R"]
    if silu and rows_per_wg != 64:
        raise ValueError(f"the fused SiLU epilogue needs 64 rows per workgroup, not {cfg}")
    fused = norm_after is not None
    w64 = lanes and cfg.pop("W64", getattr(dev, "has_int64", False))  # 64-bit weight loads (CPU adapters)
    types = {"act_t": act, "scale_t": dev.act_type}
    if lanes:
        snippets = gemv_lanes_snippets(cfg["R"], cfg["WG"], lin.K, lin.group_size, q8, lin.w8, silu,
                                       lin.has_offsets, w64)
        if w64:
            types["w64_t"] = "vec4<u64>" if lin.w8 else "vec2<u64>"
    else:
        snippets = gemv_snippets(cfg["R"], q8, lin.w8, silu, lin.has_offsets)
    pipe = dev.pipeline("q4gsw_gemv", consts={**cfg, **lin.flags(), "RESIDUAL": residual, "SILU": silu,
                                              "Q8": q8, "SUBGROUPS": dev.has_subgroups, "NORM_AFTER": fused,
                                              "COHERENT": fused, "LANES": lanes, "W64": w64},
                        types=types, snippets=snippets)
    xb = {"x": x.xq, "xd": x.xd} if q8 else {"x": x}
    need(pipe.name, "x", xb["x"], lin.K if q8 else lin.K * esize(act))
    ops = []
    for s in lin.slices:
        if silu:
            yb = {"yq": y.xq, "yd": y.xd}
            need(pipe.name, "y", y.xq, lin.N // 2)
        else:
            buf, off = (y[0], y[1]) if isinstance(y, tuple) else (y, 0)
            yb = {"y": (buf, off + s.n0 * esize(act), max(16, -(-s.n * esize(act) // 4) * 4))}
            need(pipe.name, "y", y, (s.n0 + s.n) * esize(act))
        nb = {}
        if fused:
            need(pipe.name, "norm out", norm_after[1].xq, lin.N)
            need(pipe.name, "norm weights", norm_after[0], lin.N * 4)
            nb = {"nw": norm_after[0], "nq": norm_after[1].xq, "nd": norm_after[1].xd, "done": _norm_counter(dev)}
        wb = lin.lane_binds(s) if lanes else lin.weight_binds(s)
        ops.append(make_op(dev, pipe, {**xb, **wb, **yb, **nb}, dev.grid(-(-s.n // rows_per_wg)),
                           [s.n, lin.K, float(norm_after[2]) if fused else 0.0]))
    return ops


def gemm(dev: Device, lin: Q4Linear, x, y, *, rows: int, residual: bool = False,
         config: dict | None = None, act: str | None = None, route: str = "f32") -> list[Op]:
    """Record y(rows, N) = x(rows, K) · Wᵀ (+ y when residual), one op per weight slice.
    x: a buffer of `act` (default: the device's act_type) for the f32 route and the f16 variant
    (route "f16"), or a Q8Act of rows × K for the int8 route (taken whenever x is one).
    y: a buffer of `act`, or (buffer, offset, size)."""
    act = act or dev.act_type
    if lin.w8:
        raise ValueError("int8 weights go through the GEMV only (M == 1)")
    q8 = isinstance(x, Q8Act)
    if route == "i8" and not q8:
        raise ValueError("the int8 GEMM takes int8 activations (a Q8Act, from quantize_q8)")
    route = "i8" if q8 else route
    cfg = dict(config or gemm_config(dev, rows, lin.N, route))
    cfg.setdefault("WG", (cfg["BM"] // cfg["TM"]) * (cfg["BN"] // cfg["TN"]))
    if gemm_workgroup_bytes(cfg, route) > dev.max_workgroup_storage:  # (wgpu does not check override-sized arrays)
        raise ValueError(f"GEMM tile {cfg} needs {gemm_workgroup_bytes(cfg, route)} bytes of workgroup memory; "
                         f"{dev.name} has {dev.max_workgroup_storage}")
    consts = {**cfg, **lin.flags(), "RESIDUAL": residual}
    lanes = bool(cfg.get("LANES"))
    if lanes and (route != "f32" or not dev.has_subgroups or cfg["WG"] != dev.subgroup_size or cfg["BM"] != cfg["TM"]
                  or cfg["BN"] != cfg["WG"] * cfg["TN"]):
        raise ValueError(f"the LANES GEMM takes the f32 route, one subgroup per workgroup (WG = "
                         f"{dev.subgroup_size if dev.has_subgroups else 'no subgroups'}), BM = TM, BN = WG·TN: {cfg}")
    if q8:
        consts.setdefault("KB", 2)
        consts.setdefault("EXPAND", False)
        pipe = dev.pipeline("q4gsw_gemm_i8", consts=consts, types={"act_t": act, "scale_t": dev.act_type},
                            snippets=gemm_i8_snippets(cfg["BM"], cfg["BN"], cfg["TM"], cfg["TN"], consts["KB"],
                                                      lin.has_offsets, consts["EXPAND"]))
        need(pipe.name, "x", x.xq, rows * lin.K)
        need(pipe.name, "x scales", x.xd, rows * (lin.K // 32) * 8)
        xb = {"xq": x.xq, "xd": x.xd}
    else:
        consts["LANES"] = lanes
        snippets = (gemm_lanes_snippets(cfg["TM"], cfg["TN"], cfg["WG"], lin.has_offsets) if lanes else
                    gemm_snippets(cfg["BM"], cfg["BN"], cfg["TM"], cfg["TN"], f16=route == "f16"))
        pipe = dev.pipeline("q4gsw_gemm", consts=consts,
                            types={"act_t": act, "scale_t": dev.act_type, "mul_t": "f16" if route == "f16" else "f32"},
                            snippets=snippets)
        need(pipe.name, "x", x, rows * lin.K * esize(act))
        xb = {"x": x}
    need(pipe.name, "y", y, rows * lin.N * esize(act))
    grid_m = -(-rows // cfg["BM"])
    if grid_m > dev.max_groups:
        raise ValueError(f"M={rows} is too many rows for one GEMM dispatch; prefill in chunks")
    return [make_op(dev, pipe, {**xb, **lin.weight_binds(s), "y": y}, (-(-s.n // cfg["BN"]), grid_m, 1),
                    [rows, s.n, lin.K, lin.N, s.n0]) for s in lin.slices]


def linear(dev: Device, lin: Q4Linear, x, y, M: int, *, residual: bool = False, config: dict | None = None,
           force: str | None = None, silu: bool = False, act: str | None = None, route: str = "f32") -> list[Op]:
    """y(M, N) = x(M, K) · Wᵀ: the GEMV when M == 1, else the GEMM (`force` = "gemv" / "gemm"
    overrides, for benchmarks and tests); int8 activations (a Q8Act) take the int8 GEMM."""
    kind = force or ("gemv" if M == 1 else "gemm")
    if kind == "gemv" and M != 1:
        raise ValueError("the GEMV computes one row of activations (M == 1)")
    if kind == "gemv":
        return gemv(dev, lin, x, y, residual=residual, silu=silu, config=config, act=act)
    if silu:
        raise ValueError("the SiLU epilogue goes through the GEMV only (M == 1)")
    return gemm(dev, lin, x, y, rows=M, residual=residual, config=config, act=act, route=route)


def run_linear(dev: Device, lin: Q4Linear, x: np.ndarray, *, residual: np.ndarray | None = None,
               poison: bool = True, q8: bool = False, **kw) -> tuple[np.ndarray, list[Op]]:
    """For tests and one-off use: upload x (M, K), run, read y (M, N) back (NaN-poisoned first,
    so that an element the kernel never writes shows)."""
    x = np.atleast_2d(np.asarray(x))
    M, K = x.shape
    if K != lin.K:
        raise ValueError(f"x has {K} columns but the weight has K={lin.K}")
    dt = dev.act_dtype
    xb = dev.buffer(x.astype(dt), label="x")
    y0 = residual.astype(dt) if residual is not None else np.full((M, lin.N), np.nan if poison else 0, dt)
    yb = dev.buffer(y0, label="y")
    pre = []
    if q8:
        xq = q8_act(dev, K, M)
        pre, xb = [quantize_q8(dev, xb, xq)], xq
    ops = linear(dev, lin, xb, yb, M, residual=residual is not None, **kw)
    submit(dev, pre + ops)
    return dev.read(yb, dt, (M, lin.N)).astype(np.float32), ops
