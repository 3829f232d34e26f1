"""`llmgpu bench`: prompt processing (pp) and token generation (tg) speed, llama-bench style.

Each test runs after a warm-up and is repeated; the table shows mean ± sd tokens/s. Timing
excludes tokenization and loading and waits for the GPU (every step reads its logits back, as
generation with CPU sampling does). Each row also shows q4gsw bytes read per decoded token,
the GB/s that implies, that as a % of the streaming-read bandwidth measured in the same run on
the same adapter (the roofline), the CPU time spent encoding a decode step, and dispatches per
token. `--profile` adds GPU time per kernel (timestamp queries) for one decode step and for the
first and (where the prompt spans several chunks) last prefill chunks of the pp test. Start-up is reported too: load, device, upload, pipelines
compiled and the first token (a prefill of the pp test's length, compilation included).

Shapes (`--shape NAME`, models/shapes.json) run with random q4gsw weights created directly in
packed form, so an 8B shape starts in seconds; real checkpoints with `--model`.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import sys
import time

import numpy as np

from .config import ModelConfig
from .defaults import DECODE_SCHEDULES, DEFAULT_GROUP_SIZE, SAMPLING_PLACES
from .gpu import Device
from .loader import Checkpoint
from .quant import random_q4
from .shapes import get_shape


def random_checkpoint(name: str, group_size: int = DEFAULT_GROUP_SIZE, rng=None, offsets: bool = False) -> Checkpoint:
    """A checkpoint of a named shape with random weights (no tokenizer; ids are random too).
    ``offsets``: the layers' linears carry per-group offsets, as `quantize --asymmetric` makes them
    (lm_head does not: that quantization leaves it int8, without offsets)."""
    rng = rng or np.random.default_rng(0)
    s = {k: v for k, v in get_shape(name).items() if k != "hub_id"}
    cfg = ModelConfig.from_hf(s)
    d, ff, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    T: dict = {"model.embed_tokens.weight": (rng.standard_normal((V, d), np.float32) * 0.02).astype(np.float16),
               "model.norm.weight": np.ones(d, np.float32),
               "lm_head.weight": random_q4(V, d, group_size, rng)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        T[p + "input_layernorm.weight"] = np.ones(d, np.float32)
        T[p + "post_attention_layernorm.weight"] = np.ones(d, np.float32)
        for n, (rows, k) in {"q_proj": (cfg.q_dim, d), "k_proj": (cfg.kv_dim, d), "v_proj": (cfg.kv_dim, d),
                             "o_proj": (d, cfg.q_dim)}.items():
            T[p + f"self_attn.{n}.weight"] = random_q4(rows, k, group_size, rng, offsets=offsets)
        for n, (rows, k) in {"gate_proj": (ff, d), "up_proj": (ff, d), "down_proj": (d, ff)}.items():
            T[p + f"mlp.{n}.weight"] = random_q4(rows, k, group_size, rng, offsets=offsets)
        if cfg.model_type == "qwen2":
            for n, rows in (("q_proj", cfg.q_dim), ("k_proj", cfg.kv_dim), ("v_proj", cfg.kv_dim)):
                T[p + f"self_attn.{n}.bias"] = np.zeros(rows, np.float32)
    return Checkpoint(config=cfg, tensors=T, tokenizer=None, source=f"shape:{name}", group_size=group_size)


def decode_bytes(model) -> int:
    """Bytes a decode step must read: every q4gsw weight once, one embedding row, the KV cache."""
    n = model.lm_head.nbytes
    for L in model.layers:
        n += L.qkv.nbytes + L.o.nbytes + L.gate_up.nbytes + L.down.nbytes
    cfg = model.config
    n += cfg.hidden_size * (2 if model.embedding.dtype == "f16" else 4)
    return n


def kv_bytes(model, pos: int) -> int:
    cfg = model.config
    esz = 2 if model.dev.act_type == "f16" else 4
    return 2 * cfg.num_hidden_layers * pos * cfg.num_key_value_heads * cfg.head_dim * esz


def _mean_sd(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def encode_seconds(model, reps: int = 20) -> float:
    """CPU time to record one decode step's dispatches into a command buffer."""
    from . import fastpath
    from .ops import encode
    ops = model.step_ops(1, True)
    raw = fastpath.compile_ops(ops)
    t0 = time.perf_counter()
    for _ in range(reps):
        encode(model.dev, ops, raw)
    return (time.perf_counter() - t0) / reps


def profile_step(model, M: int = 1, pos0: int = 0) -> list[tuple[str, float, int]]:
    """GPU time per kernel of one step over M new tokens (M = 1: a decode step; M > 1: a prefill
    chunk at cache position pos0, attending to pos0 + M positions), each dispatch in its own
    timestamped pass, mean of 3 runs.
    Returns (kernel, seconds, count) sorted by time."""
    dev = model.dev
    if not dev.has_timestamps:
        raise ValueError(f"--profile needs timestamp queries, which {dev.name} lacks")
    import wgpu
    model.reset()
    model.prefill([0] * M)  # compiles the step's pipelines and sets the uniforms a step reads
    if M == 1 and model.decode_schedule == "persistent":
        rows = model.kernel.phase_profile()
        model.reset()
        return rows
    ops = model.step_ops(M, True)
    if M > 1:  # the step reads `pos0` from the uniform (the cache's contents do not change the time)
        model.dev.write(model.step, np.array([pos0, 0, 0, 0], np.uint32))
    n = len(ops)
    names = [op.name for op in ops]
    if M == 1 and model.decode_schedule == "phased":  # the decode kernel's dispatches, by phase kind
        from .decode import PHASE_KINDS
        names = [f"phase {PHASE_KINDS[i % len(PHASE_KINDS)]}" for i in range(n - 1)] + ["phase head"]
    qs = dev.device.create_query_set(type=wgpu.QueryType.timestamp, count=2 * n)
    res = dev.buffer(size=16 * n, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC,
                     binding=False, label="timestamps")
    totals: dict[str, list] = {}
    for _ in range(3):
        enc = dev.device.create_command_encoder()
        for i, op in enumerate(ops):
            cpass = enc.begin_compute_pass(timestamp_writes={
                "query_set": qs, "beginning_of_pass_write_index": 2 * i, "end_of_pass_write_index": 2 * i + 1})
            op.record(cpass)
            cpass.end()
        enc.resolve_query_set(qs, 0, 2 * n, res, 0)
        dev.queue.submit([enc.finish()])
        t = dev.read(res, np.uint64, (n, 2)).astype(np.float64)
        for name, (a, b) in zip(names, t):
            totals.setdefault(name, []).append(max(b - a, 0) * 1e-9)
    model.reset()
    count = {}
    for name in names:
        count[name] = count.get(name, 0) + 1
    rows = [(k, sum(v) / 3, count[k]) for k, v in totals.items()]
    return sorted(rows, key=lambda r: -r[1])


def _bench_model(args, dev):
    """The model under test: a named shape with random weights, or a checkpoint.
    -> (model, label, seconds its checkpoint took to load or to make)"""
    from .model import Model
    t = time.perf_counter()
    if args.shape:
        offsets = getattr(args, "offsets", "no") == "yes"
        ckpt = random_checkpoint(args.shape, args.group_size, offsets=offsets)
        label = args.shape + (" (offsets)" if offsets else "")
    else:
        from .defaults import default_model_path
        from .loader import load_cached_or_quantize
        ckpt = load_cached_or_quantize(args.model or default_model_path(), args.group_size, progress=not args.json)
        label = str(args.model or "default (SmolLM2-135M-Instruct)")
    load_s = time.perf_counter() - t
    model = Model(ckpt, dev=dev, max_seq=args.ctx or (args.p + args.n + args.d + 16), decode=args.decode,
                  sampling=getattr(args, "sampling", "auto"), gemm=gemm_routes_of(args)[0])
    model.loop_queue = {k: v for k in ("per_submit", "ahead") if (v := getattr(args, k, 0))}
    if model.kernel is not None:
        model.kernel.workgroups = getattr(args, "workgroups", 0) or None
        for kv in filter(None, (getattr(args, "kernel_config", "") or "").split(",")):
            k, _, v = kv.partition("=")
            model.kernel.config[k.strip()] = int(v)
    if args.p + args.n + args.d + 1 > model.max_seq:
        raise ValueError(f"-p {args.p} + -n {args.n} + -d {args.d} exceed the context {model.max_seq}; raise --ctx")
    return model, label, load_s


def _pp(model, p: int, rng) -> float:
    """Tokens/s of one prefill of p random tokens from an empty cache."""
    model.reset()
    ids = rng.integers(0, model.config.vocab_size, p).tolist()
    t0 = time.perf_counter()
    model.prefill(ids)
    return p / (time.perf_counter() - t0)


def _tg(model, n: int, rng, depth: int = 0) -> float:
    """Tokens/s of n decode steps after a prompt of depth + 1 tokens, as generation runs them:
    greedy with the sampler on the GPU (from the first token to the last: n steps), or with the
    logits of each step read back (random next tokens: no sampling time)."""
    V = model.config.vocab_size
    model.reset()
    prompt = rng.integers(0, V, depth + 1).tolist()
    if model.gpu_sampling:
        from .loop import TokenLoop
        from .sample import make_sampler
        model.prefill(prompt, read=False)
        t0 = None
        for _ in TokenLoop(model, make_sampler(temperature=0), **model.loop_queue).tokens(prompt, n + 1):
            t0 = t0 or time.perf_counter()
        return n / (time.perf_counter() - t0)
    model.prefill(prompt)
    t0 = time.perf_counter()
    for _ in range(n):
        model.decode(int(rng.integers(V)))
    return n / (time.perf_counter() - t0)


def gemm_routes_of(args) -> list[str]:
    """`--gemm`: the prefill GEMM route(s), comma-separated (default auto); pp runs once per route."""
    return [r.strip() for r in (getattr(args, "gemm", None) or "auto").split(",")]


def measure(model, args, bw: float) -> list[dict]:
    """The pp and tg rows: mean ± sd over args.r repetitions after a warm-up (pp once per --gemm
    route; tg does not use the GEMM)."""
    rng = np.random.default_rng()
    rows = []
    routes = gemm_routes_of(args)
    for route in routes if args.p > 0 else ():
        model.use_gemm(route)
        _pp(model, args.p, rng)
        mean, sd = _mean_sd([_pp(model, args.p, rng) for _ in range(args.r)])
        rows.append(dict(test=f"pp{args.p}" + (f" {model.gemm}" if len(routes) > 1 else ""), tps=mean, sd=sd,
                         gemm=model.gemm))
    if args.n > 0:
        _tg(model, 4, rng, args.d)
        mean, sd = _mean_sd([_tg(model, args.n, rng, args.d) for _ in range(args.r)])
        wbytes = decode_bytes(model) + kv_bytes(model, args.d + 1 + args.n // 2)
        name = f"tg{args.n}" + (f" @ d{args.d}" if args.d else "")
        rows.append(dict(test=name, tps=mean, sd=sd, bytes_per_token=wbytes,
                         gbs=wbytes * mean / 1e9, roofline_pct=100 * wbytes * mean / bw,
                         encode_ms=encode_seconds(model) * 1e3, **step_shape(model)))
    return rows


def step_shape(model) -> dict:
    """How a decode step reaches the GPU: dispatches, phases (kernel phases, or dispatches on the
    per-op path) and grid barriers per token, and the schedule."""
    n = len(model.step_ops(1, True))
    q = model.loop_queue
    from .loop import default_queue
    k, a = default_queue(model.dev)
    sampling = f"gpu {q.get('per_submit', k)}x{q.get('ahead', a)}" if model.gpu_sampling else "cpu"
    if model.kernel is None or model.decode_schedule == "ops":
        return dict(schedule="ops", sampling=sampling, dispatches=n, phases=n, barriers=0)
    p = model.kernel.n_phases
    return dict(schedule=model.decode_schedule, sampling=sampling, dispatches=n, phases=p,
                barriers=p - 1 if model.decode_schedule == "persistent" else 0,
                workgroups=model.kernel.workgroups)


def _check_model_path(model: str) -> None:
    """A --model that is neither a local path nor shaped like a hub id fails here, before the
    device (the loader would say the same after it)."""
    from pathlib import Path

    from .loader import _HUB_ID
    if not Path(model).expanduser().exists() and (not _HUB_ID.fullmatch(model) or model.startswith((".", "~"))):
        raise FileNotFoundError(f"{model}: no such file or directory, and not a Hugging Face hub id (org/name)")


def validate(args) -> None:
    """Every argument of `llmgpu bench` that can be checked before the device and the model."""
    if args.model and args.shape:
        raise ValueError("give --model or --shape, not both")
    if args.shape:
        get_shape(args.shape)
    if args.model:
        _check_model_path(args.model)
    for flag, v, low in (("-p", args.p, 0), ("-n", args.n, 0), ("-d", args.d, 0), ("-r", args.r, 1),
                         ("--ctx", args.ctx, 0), ("--workgroups", args.workgroups, 0),
                         ("--stream-bytes", args.stream_bytes, 16), ("--per-submit", args.per_submit, 0),
                         ("--ahead", args.ahead, 0)):
        if v < low:
            raise ValueError(f"{flag} must be >= {low}, got {v}")
    if args.p == 0 and args.n == 0:
        raise ValueError("-p 0 and -n 0 leave nothing to measure")
    from .defaults import GEMM_ROUTES
    for r in gemm_routes_of(args):
        if r not in ("auto", *GEMM_ROUTES):
            raise ValueError(f"--gemm {r!r}: expected auto, {', '.join(GEMM_ROUTES)} (comma-separated)")
    if args.ctx and args.p + args.n + args.d + 1 > args.ctx:
        raise ValueError(f"-p {args.p} + -n {args.n} + -d {args.d} exceed the context {args.ctx}; raise --ctx")
    for kv in filter(None, (args.kernel_config or "").split(",")):
        k, eq, v = kv.partition("=")
        if not (eq and k.strip() and v.strip().isdigit()):
            raise ValueError(f"--kernel-config {kv!r}: expected NAME=INTEGER, e.g. WG=128,TPR=16")
    if args.profile_png:
        if not args.profile:
            raise ValueError("--profile-png needs --profile")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--profile-png needs matplotlib: pip install 'llmgpu[plot]'") from None


def _startup(args, dev, st) -> tuple:
    """The model, timed into `st` (load, upload, and its first prefill: pipelines and the first
    token). -> (model, label)"""
    from .startup import first_token
    t = time.perf_counter()
    model, label, st.load_s = _bench_model(args, dev)
    st.upload_s = time.perf_counter() - t - st.load_s
    ids = np.random.default_rng().integers(0, model.config.vocab_size, min(max(args.p, 1), model.chunk)).tolist()
    t = time.perf_counter()
    model.prefill(ids)
    first_token(st, dev, time.perf_counter() - t, t)
    model.reset()
    return model, label


def run(args) -> int:
    from .startup import Startup
    validate(args)
    st = Startup()
    dev = Device(args.adapter, dump_wgsl=getattr(args, "dump_wgsl", None))
    st.device_s = time.perf_counter() - st.t0
    model, label = _startup(args, dev, st)
    from .bench_kernels import stream_bandwidth
    bw = stream_bandwidth(dev, args.stream_bytes)
    rows = measure(model, args, bw)
    result = dict(model=label, adapter=dev.name, group_size=args.group_size, stream_read_gbs=bw / 1e9,
                  date=time.strftime("%Y-%m-%d"), repetitions=args.r, startup=st.as_dict(), rows=rows)
    profs = {}
    if args.profile:  # a decode step, and the first and last prefill chunks of the pp test
        pp = min(args.p, model.chunk)
        for key, M, pos0 in (("profile", 1 if args.n else 0, 0), ("profile_pp", pp if pp > 1 else 0, 0),
                             ("profile_pp_last", pp if args.p > pp > 1 else 0, args.p - pp)):
            if M:
                profs[key] = profile_step(model, M, pos0)
                result[key] = [dict(kernel=k, us=s * 1e6, count=c) for k, s, c in profs[key]]
        if args.profile_png and profs:
            _plot(profs.get("profile") or profs["profile_pp"], args.profile_png, label)
    if args.json:
        print(json.dumps(result, indent=1))
    elif args.csv:
        _print_csv(rows, label, dev.name)
    else:
        _print_table(rows, label, dev.name, bw, args.group_size)
        _print_profiles(profs, min(args.p, model.chunk), args.p)
        print(st.line().replace("llmgpu: ", ""))
    return 0


def _print_csv(rows, label, adapter) -> None:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=["model", "adapter", "test", "tps", "sd", "gemm", "bytes_per_token", "gbs",
                                         "roofline_pct", "encode_ms", "schedule", "sampling", "dispatches", "phases",
                                         "barriers", "workgroups"])
    w.writeheader()
    for r in rows:
        w.writerow({"model": label, "adapter": adapter, **r})
    print(out.getvalue(), end="")


def _print_table(rows, label, adapter, bw, group_size) -> None:
    print(f"adapter: {adapter}   streaming read: {bw / 1e9:.1f} GB/s   q4gsw group {group_size}")
    print(f"| {'model':<28} | {'test':>12} | {'t/s':>18} | {'MB/token':>8} | {'GB/s':>7} | {'% roof':>6} "
          f"| {'enc ms/tok':>10} | {'schedule':>10} | {'sampling':>8} | {'disp/tok':>8} | {'phases':>6} | {'barriers':>8} |")
    print(f"|{'-' * 30}|{'-' * 14}|{'-' * 20}|{'-' * 10}|{'-' * 9}|{'-' * 8}|{'-' * 12}|{'-' * 12}|{'-' * 10}|{'-' * 10}"
          f"|{'-' * 8}|{'-' * 10}|")
    for r in rows:
        extra = (f"{r['bytes_per_token'] / 1e6:>8.1f} | {r['gbs']:>7.1f} | {r['roofline_pct']:>5.1f}% | "
                 f"{r['encode_ms']:>10.2f} | {r['schedule']:>10} | {r['sampling']:>8} | {r['dispatches']:>8} | {r['phases']:>6} | "
                 f"{r['barriers']:>8}" if "gbs" in r else " | ".join(f"{'':>{w}}" for w in (8, 7, 6, 10, 10, 8, 8, 6, 8)))
        print(f"| {label[:28]:<28} | {r['test']:>12} | {r['tps']:>9.2f} ± {r['sd']:>6.2f} | {extra} |")


def _print_profiles(profs: dict, pp_rows: int, p: int) -> None:
    for key, what in (("profile", "one decode step"), ("profile_pp", f"a prefill of {pp_rows} tokens"),
                      ("profile_pp_last", f"a prefill of {pp_rows} tokens at position {p - pp_rows} (pp{p}'s last)")):
        prof = profs.get(key)
        if not prof:
            continue
        total = sum(s for _, s, _ in prof)
        print(f"\nGPU time of {what} by kernel (timestamp queries), total {total * 1e6:.0f} us:")
        for k, s, c in prof[:12]:
            print(f"  {k:<24} {c:>4}×  {s * 1e6:>9.1f} us  {100 * s / total:5.1f}%")


def _plot(prof, path, label) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--profile-png needs matplotlib: pip install 'llmgpu[plot]'") from None
    names = [k for k, _, _ in prof][::-1]
    us = [s * 1e6 for _, s, _ in prof][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1))
    ax.barh(names, us)
    ax.set_xlabel("GPU time per decode step (us)")
    ax.set_title(f"llmgpu decode step: {label}")
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}", file=sys.stderr)


def add_arguments(p) -> None:
    p.add_argument("--model", help="checkpoint: local dir, hub id or .gguf (default: the offline default model)")
    p.add_argument("--shape", help="named shape from models/shapes.json, with random q4gsw weights")
    p.add_argument("-p", type=int, default=512, help="prompt tokens for the pp test (0 skips it)")
    p.add_argument("-n", type=int, default=128, help="generated tokens for the tg test (0 skips it)")
    p.add_argument("-r", type=int, default=5, help="repetitions")
    p.add_argument("--ctx", type=int, default=0, help="context (KV cache) size; default p + n + d + 16")
    p.add_argument("-d", type=int, default=0, help="depth: tg runs after a prompt of this many tokens (llama-bench's -d)")
    p.add_argument("--decode", default="auto", choices=DECODE_SCHEDULES, help="decode schedule (see `generate --help`)")
    p.add_argument("--sampling", default="auto", choices=SAMPLING_PLACES,
                   help="tg samples greedily on the GPU, tokens queued ahead (gpu), or reads logits back (cpu)")
    p.add_argument("--per-submit", type=int, default=0, help="gpu sampling: decode steps per command buffer")
    p.add_argument("--ahead", type=int, default=0, help="gpu sampling: command buffers queued at once")
    p.add_argument("--gemm", default=None, metavar="ROUTE[,ROUTE]",
                   help="prefill GEMM route(s): auto, f32, i8, f16 (see `generate --help`); several, comma-separated: "
                        "bench runs pp once per route, bench kernels times those routes (default: auto for bench, "
                        "every route the adapter has for bench kernels)")
    p.add_argument("--workgroups", type=int, default=0, help="workgroups of the decode kernel (default: by adapter)")
    p.add_argument("--kernel-config", default="", metavar="K=V,...",
                   help="decode kernel shape for sweeps, e.g. WG=128,TPR=16")
    p.add_argument("--csv", action="store_true", help="print CSV")
    p.add_argument("--profile", action="store_true", help="GPU time per kernel of a decode step and a prefill")
    p.add_argument("--profile-png", help="also draw the profile as a PNG chart (needs matplotlib)")
