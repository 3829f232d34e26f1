"""Decode variants of one shape in one process (the random weights made once): tg after a 1-token
prompt (or -d DEPTH) for the per-op path and the decode kernel under several schedules, sampling
places and kernel shapes, then the per-phase profile. For the GPU machine (device time is scarce):

    python3 bench/decode_sweep.py SHAPE [-n 128] [-r 3] [-d 0] [--variants NAME,...] [--profile]

Each output line: shape, variant, t/s mean ± sd, workgroups, schedule it ended on.
"""
import argparse
import sys
import time

import numpy as np

sys.path.insert(0, ".")
from llmgpu.bench import _mean_sd, _tg, profile_step, random_checkpoint  # noqa: E402
from llmgpu.gpu import Device  # noqa: E402
from llmgpu.model import Model  # noqa: E402

SCHEDULES = {"ops": "ops", "pers": "persistent", "phased": "phased"}


def parse(name: str):
    """A variant name: SCHEDULE[-TOKEN...], SCHEDULE ops | pers | phased; tokens: cpu (sampling on
    the CPU; default gpu), qKxA (K steps a submission, A queued), wN (N workgroups), divN (the
    discovered workgroups / N), NAME=INT (a kernel override, e.g. TPR=8, UNROLL=8), fuse (ops
    schedule: Model.fuse_norms).
    -> (schedule, sampling, queue, config, workgroups or ("div", N))"""
    head, *toks = name.split("-")
    sampling, queue, config, wg = "gpu", {}, {}, None
    for t in toks:
        if t == "cpu":
            sampling = "cpu"
        elif t == "fuse":  # ops: the norms in the residual GEMVs' last workgroup
            config["fuse_norms"] = 1
        elif t.startswith("q") and "x" in t:
            k, a = t[1:].split("x")
            queue = dict(per_submit=int(k), ahead=int(a))
        elif t.startswith("div"):
            wg = ("div", int(t[3:]))
        elif t.startswith("w") and t[1:].isdigit():
            wg = int(t[1:])
        elif "=" in t:
            k, v = t.split("=")
            config[k] = int(v)
        else:
            raise ValueError(f"variant {name}: unknown token {t!r}")
    return SCHEDULES[head], sampling, queue, config, wg


def configure(m, schedule, sampling, queue, config, workgroups):
    m.gpu_sampling, m.loop_queue = sampling == "gpu", dict(queue)
    config = dict(config)
    fuse = bool(config.pop("fuse_norms", 0))
    if fuse != m.fuse_norms:
        m.fuse_norms = fuse
        m._steps = {k: v for k, v in m._steps.items() if k[0] == "kernel"}
    if m.kernel is not None:
        m.kernel.config, m.kernel.workgroups = dict(config), None
        m.kernel._ops.clear()
        if isinstance(workgroups, tuple):
            workgroups = max(1, m.kernel.resident_workgroups() // workgroups[1])
        m.kernel.workgroups = workgroups
        m.kernel._ops.clear()
        m._steps = {k: v for k, v in m._steps.items() if k[0] != "kernel"}
        m.decode_schedule, m._next_decode = schedule, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-d", type=int, default=0)
    ap.add_argument("--variants", default="ops-cpu,ops,ops-q8x3,pers,pers-w132,phased")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    dev = Device()
    t = time.perf_counter()
    ckpt = random_checkpoint(a.shape)
    print(f"# {a.shape} on {dev.name}: weights made in {time.perf_counter() - t:.0f} s", flush=True)
    ctx = a.d + a.n + 16
    models = {}
    rng = np.random.default_rng(0)
    for name in a.variants.split(","):
        schedule, sampling, queue, config, wg = parse(name)
        kind = "ops" if schedule == "ops" else "kernel"
        try:
            if kind not in models:
                models[kind] = Model(ckpt, dev=dev, max_seq=ctx, decode="ops" if kind == "ops" else "phased")
            m = models[kind]
            configure(m, schedule, sampling, queue, config, wg)
            _tg(m, 4, rng, a.d)  # warm-up (compiles; discovers workgroups)
            mean, sd = _mean_sd([_tg(m, a.n, rng, a.d) for _ in range(a.r)])
            wgs = m.kernel.workgroups if m.kernel is not None else "-"
            print(f"{a.shape} d{a.d} {name:<14} {mean:8.1f} ± {sd:5.1f} t/s  wg {wgs}  ended {m.decode_schedule}",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - one variant's failure must not end the sweep
            print(f"{a.shape} {name}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
    if a.profile:
        for name in ("ops-cpu", "pers-w132", "phased"):
            schedule, sampling, queue, config, wg = parse(name)
            m = models.get("ops" if schedule == "ops" else "kernel")
            if m is None:
                continue
            configure(m, schedule, sampling, queue, config, wg)
            try:
                rows = profile_step(m, 1)
            except Exception as e:  # noqa: BLE001
                print(f"profile {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
                continue
            total = sum(s for _, s, _ in rows)
            print(f"# profile {a.shape} {name}: total {total * 1e6:.0f} us")
            for k, s, c in rows[:14]:
                print(f"#   {k:<24} {c:>4}x {s * 1e6:9.1f} us {100 * s / total:5.1f}%")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
