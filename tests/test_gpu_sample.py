"""Sampling on the GPU (shaders/sample.wgsl, llmgpu/ops/sample.py) against the CPU sampler
(llmgpu/sample.py): greedy picks the same token; each filter setting keeps the same survivors and
draws them with the CPU's probabilities; the RNG is a function of (seed, counter); non-finite
logits raise; the token history the kernel keeps on the GPU penalizes like the CPU's. Both device
paths, and both kernel paths (candidates in workgroup memory, or read from the logits throughout:
CAP=1). The last test plants a bug in the shader and checks that the matching check fails."""
import math

import numpy as np
import pytest

from llmgpu import ops
from llmgpu.gpu import Device
from llmgpu.ops.sample import GpuSampler, sample_config
from llmgpu.sample import NonFiniteLogitsError, apply_repetition_penalty, make_sampler

F32 = np.float32
GLOBAL = {"WG": 64, "CAP": 1}  # the path without workgroup-memory candidates
PATHS = {"shared": None, "global": GLOBAL}
N_DRAWS = 2000
FALSE_FAIL = 1e-8  # per statistical test case; ~50 cases per run of this file keep it under 1e-6


def key(x):
    """sample.wgsl's order key of f32 values."""
    b = np.asarray(x, F32).view(np.uint32).copy()
    b[b == 0x80000000] = 0
    return np.where(b & 0x80000000, ~b, b | 0x80000000).astype(np.uint32)


def run_steps(dev, x, sampler, n, history=(), config=None, counter=0):
    """n steps recorded in one submission (the kernel advances the counter); (tokens, out words).
    The history, if any, is uploaded once and not appended to, so that every step sees the same."""
    V = x.size
    out = dev.buffer(np.r_[[0, 0, counter, 0], np.zeros(n, np.uint32)].astype(np.uint32))
    hist = None
    if sampler.repetition_penalty != 1.0:
        w = sampler.repeat_last_n
        ring = np.zeros(w, np.uint32)
        h = np.asarray(history, np.int64)[-w:]
        ring[np.arange(len(history) - h.size, len(history)) % w] = h
        hist = dev.buffer(np.r_[[len(history)], ring].astype(np.uint32))
    op = ops.sample(dev, dev.buffer(x), hist, out, vocab=V, sampler=sampler, append=False, log=n, config=config)
    ops.submit(dev, [op] * n)
    words = dev.read(out, np.uint32, count=4 + n)
    return np.roll(words[4:], -(counter % n)), words[:4]  # the log is a ring indexed by the counter


# ---- greedy ------------------------------------------------------------------------------

def check_greedy(dev, rng):
    for V in (1000, 49152):  # all tied: np.argmax's rule picks id 0, however invocations split the logits
        assert GpuSampler(dev, V, temperature=0, seed=1).run(dev.buffer(np.full(V, 1.5, F32))) == 0
    for V in (1, 7, 1000, 49152, 151936):
        x = (3 * rng.standard_normal(V)).astype(F32)
        wg = sample_config(dev, V)["WG"]
        if V > 2 * wg:  # ties for the max (np.argmax's rule: the lowest id), also within one invocation
            j = int(rng.integers(V - wg))
            x[[j, j + 1, j + wg]] = x.max()
        for penalty in (1.0, float(rng.uniform(1.5, 3.0)), float(rng.uniform(0.3, 0.7))):
            w = int(rng.integers(1, 40))
            k = max(1, w // 2)
            win = np.r_[np.argsort(-x, kind="stable")[:k], rng.integers(0, V, w - k)]  # the winners, penalized
            if w > k:
                win[-1] = win[0]  # a duplicate: penalized once
            hist = np.r_[rng.integers(0, V, 5), rng.permutation(win)]  # older tokens, outside the window
            s = GpuSampler(dev, V, temperature=0, repetition_penalty=penalty, repeat_last_n=w,
                           seed=int(rng.integers(2**32)))
            cpu = make_sampler(temperature=0, repetition_penalty=penalty, repeat_last_n=w)
            want = cpu(x, hist)
            assert s.run(dev.buffer(x), history=hist) == want, (V, penalty, w)
            assert s.run(dev.buffer(x), history=hist[-w:]) == want, "the ring's slots moved"


def test_greedy_matches_cpu(dev, rng):
    check_greedy(dev, rng)


def check_history_on_gpu(dev, rng, config=None):
    """Steps in one submission push their tokens onto the GPU's ring: greedy with a strong
    penalty walks through the top tokens as the CPU does with its growing history."""
    V, w = 50, int(rng.integers(2, 6))
    x = (rng.standard_normal(V) + 4).astype(F32)  # positive: the penalty divides
    prompt = [int(t) for t in rng.integers(0, V, 3)]
    s = GpuSampler(dev, V, temperature=0, repetition_penalty=8.0, repeat_last_n=w, config=config)
    s.set_history(prompt)
    out = dev.buffer(np.zeros(4 + 12, np.uint32))
    op = ops.sample(dev, dev.buffer(x), s.history, out, vocab=V, sampler=s.sampler, log=12, config=config)
    ops.submit(dev, [op] * 12)
    got = dev.read(out, np.uint32, count=16)[4:].tolist()
    cpu, hist = make_sampler(temperature=0, repetition_penalty=8.0, repeat_last_n=w), list(prompt)
    for _ in range(12):
        hist.append(cpu(x, hist))
    assert got == hist[3:], f"GPU {got}, CPU {hist[3:]} (window {w})"
    assert len(set(got)) > 1


def test_history_on_gpu(dev, rng):
    check_history_on_gpu(dev, rng)


# ---- the filtered distribution ------------------------------------------------------------

# (top_k, top_p, min_p, temperature, repetition penalty, the filter that must decide the survivors)
SETTINGS = [(6, 1.0, 0.0, 1.0, 1.0, "top_k"), (0, 0.7, 0.0, 1.0, 1.0, "top_p"),
            (0, 1.0, 0.15, 1.0, 1.0, "min_p"), (12, 0.8, 0.02, 1.0, 1.3, "top_p"),
            (0, 0.9, 0.0, 0.5, 1.0, "top_p"), (10, 1.0, 0.0, 1.5, 1.0, "top_k")]


def survivors(x, hist, top_k, top_p, min_p, penalty):
    idx, p = make_sampler(temperature=1.0, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=penalty,
                          repeat_last_n=8).candidates(x, hist)
    return set(idx.tolist())


def clear_margins(x, hist, top_k, top_p, min_p, penalty, deciding):
    """Logits whose survivors float rounding cannot change (no near-ties; no prefix mass or logit
    within 1e-3 of a cut), where the deciding filter cuts (turning it off changes the survivors)."""
    xp = apply_repetition_penalty(x, hist, penalty, 8).astype(np.float64)
    z = np.sort(xp)[::-1]
    if (-np.diff(z)).min() < 1e-3:
        return False
    zk = z[:top_k] if top_k else z
    mass = np.cumsum(np.exp(zk - z[0])) / np.exp(zk - z[0]).sum()
    if top_p < 1 and np.abs(mass - top_p).min() < 1e-3 or min_p and np.abs(z - z[0] - math.log(min_p)).min() < 1e-3:
        return False
    base = dict(top_k=top_k, top_p=top_p, min_p=min_p)
    off = {**base, deciding: {"top_k": 0, "top_p": 1.0, "min_p": 0.0}[deciding]}
    return survivors(x, hist, penalty=penalty, **base) != survivors(x, hist, penalty=penalty, **off)


def bernstein(q, n, delta):
    """eps with P(|frequency - q| >= eps) <= delta for n independent draws (Bernstein's inequality)."""
    L = math.log(2 / delta)
    return (2 * L / 3 + math.sqrt((2 * L / 3) ** 2 + 8 * n * L * q * (1 - q))) / (2 * n)


def check_distribution(dev, rng, setting, config=None, n=N_DRAWS):
    top_k, top_p, min_p, T, penalty, deciding = setting
    V = int(rng.integers(16, 32))
    hist = rng.integers(0, V, 10)
    while True:
        x = (1.5 * rng.standard_normal(V)).astype(F32)
        if clear_margins(x, hist, top_k, top_p, min_p, penalty, deciding):
            break
    s = make_sampler(temperature=T, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=penalty,
                     repeat_last_n=8, seed=int(rng.integers(2**63)))
    idx, p = s.candidates(x, hist)
    c0 = int(rng.integers(2**31))
    got, words = run_steps(dev, x, s, n, hist, config, counter=c0)
    assert words[2] == c0 + n, "each step advances the counter by one"
    xp = apply_repetition_penalty(x, hist, penalty, 8)
    kept = set(np.flatnonzero(key(xp) >= words[3]).tolist())
    assert kept == set(idx.tolist()), f"survivors: GPU {sorted(kept)}, CPU {sorted(idx.tolist())}"
    assert set(got.tolist()) <= kept, "drew a token that did not survive the filters"
    f = np.bincount(got, minlength=V)[idx] / n
    eps = np.array([bernstein(q, n, FALSE_FAIL / len(idx)) for q in p])
    assert (np.abs(f - p) < eps).all(), f"frequencies {np.round(f, 3)} vs CPU probabilities {np.round(p, 3)}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("setting", SETTINGS, ids=[f"k{s[0]}-p{s[1]}-min{s[2]}-T{s[3]}-pen{s[4]}" for s in SETTINGS])
def test_filtered_distribution(dev, rng, setting, path):
    check_distribution(dev, rng, setting, PATHS[path])


def check_top_p_cuts(dev, rng, config=None):
    """Two crafted cases: top-p's fractions are of the whole top-k set's mass even where min-p cuts
    deeper (the mass below the min-p cut moves the top-p cut by a token), and a plain top-p cut."""
    V = 20
    x = np.full(V, -10, F32)
    x[:8] = [5, 4.5, 4, 0.5, 0.4, 0.3, 0.2, 0.1]
    cases = [(x, dict(top_k=8, top_p=0.8, min_p=0.05), 3),  # 0.795 of the top-k mass < 0.8 <= 0.977
             (np.linspace(3, -3, V).astype(F32), dict(top_k=0, top_p=0.5, min_p=0.0), 3)]
    for x0, kw, n_keep in cases:
        perm = rng.permutation(V)
        x = x0[perm]
        s = make_sampler(temperature=1.0, seed=1, **kw)
        idx, _ = s.candidates(x)
        assert idx.size == n_keep
        words = run_steps(dev, x, s, 1, config=config)[1]
        assert set(np.flatnonzero(key(x) >= words[3]).tolist()) == set(idx.tolist()), kw


def test_top_p_cuts(dev, rng):
    for config in PATHS.values():
        check_top_p_cuts(dev, rng, config)


def check_all_distributions(dev, rng):
    for path in PATHS.values():
        for setting in SETTINGS:
            check_distribution(dev, rng, setting, path, n=1000)


# ---- the RNG -----------------------------------------------------------------------------

def check_rng(dev, rng):
    """Same seed and counter: same token; consecutive counters: draws as distinct as independent
    uniform ones (200 draws from 1000 equally likely tokens collide ~19 times; 50 collisions or more
    has probability < 1e-8), and another seed gives another sequence."""
    V, seed, c0 = 1000, int(rng.integers(2**63)), int(rng.integers(2**31))
    x = dev.buffer(np.zeros(V, F32))
    flat = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a, b = GpuSampler(dev, V, seed=seed, **flat), GpuSampler(dev, V, seed=seed, **flat)
    a.counter, b.counter = c0, c0
    t = a.run(x)
    assert a.counter == c0 + 1
    a.counter = c0
    assert a.run(x) == t == b.run(x)
    s = make_sampler(seed=seed, **flat)
    got, _ = run_steps(dev, np.zeros(V, F32), s, 200, counter=c0)
    assert got[0] == t
    assert 200 - len(set(got.tolist())) < 50, "consecutive counters draw alike"
    other, _ = run_steps(dev, np.zeros(V, F32), make_sampler(seed=seed + 1, **flat), 200, counter=c0)
    assert (other != got).sum() > 150, "the seed does not change the draws"


def test_rng(dev, rng):
    check_rng(dev, rng)


# ---- non-finite logits, validation --------------------------------------------------------

def check_nonfinite(dev, rng, config=None):
    V = 300
    for greedy in (True, False):
        kw = dict(temperature=0) if greedy else dict(temperature=1.0, top_k=0)
        s = GpuSampler(dev, V, config=config, seed=1, **kw)
        for bad in (np.nan, np.inf, "all -inf"):
            x = rng.standard_normal(V).astype(F32)
            if bad == "all -inf":
                x[:] = -np.inf
            else:
                x[rng.integers(V)] = bad
            c = s.counter
            with pytest.raises(NonFiniteLogitsError):
                s.run(dev.buffer(x))
            assert s.counter == c, "a failed step advanced the counter"
        x = rng.standard_normal(V).astype(F32)
        x[rng.choice(V, V - 3, replace=False)] = -np.inf  # masked tokens are fine, and never drawn
        for _ in range(5):
            t = s.run(dev.buffer(x))
            assert np.isfinite(x[t])
    words = run_steps(dev, np.full(V, np.nan, F32), make_sampler(seed=2), 3)[1]
    assert words[1] == 1 and words[2] == 0, "steps after a failed one must do nothing"


def test_nonfinite_logits_raise(dev, rng):
    check_nonfinite(dev, rng)
    check_nonfinite(dev, rng, GLOBAL)


def test_validation(dev):
    x, out = dev.buffer(np.zeros(10, F32)), dev.buffer(size=16)
    with pytest.raises(ValueError, match="repetition penalty needs a history"):
        ops.sample(dev, x, None, out, vocab=10, sampler=make_sampler(repetition_penalty=1.2))
    with pytest.raises(ValueError, match="logits holds 40 bytes"):
        ops.sample(dev, x, None, out, vocab=11, sampler=make_sampler())
    with pytest.raises(ValueError, match="out holds 16 bytes"):
        ops.sample(dev, x, None, out, vocab=10, sampler=make_sampler(), log=2)
    with pytest.raises(ValueError, match="WG a power of two"):
        ops.sample(dev, x, None, out, vocab=10, sampler=make_sampler(), config={"WG": 48, "CAP": 8})
    with pytest.raises(ValueError, match="top_p"):
        GpuSampler(dev, 10, top_p=0.0)


# ---- planted bugs: each check above fails when the kernel is broken ----------------------

PLANTED = [  # (check, correct text, broken text)
    (check_greedy, "select(v * P.penalty, v / P.penalty, v > 0.0)",
     "select(v / P.penalty, v * P.penalty, v > 0.0)"),  # the penalty's direction
    (check_greedy, "if (v > mx) { mx = v; am = i; }", "if (v >= mx) { mx = v; am = i; }"),  # ties: highest id
    (check_history_on_gpu, "hist[1u + n % P.window] = tok;", "hist[1u + n % (P.window + 1u)] = tok;"),  # ring
    (check_top_p_cuts, "P.top_p * cn.y", "P.top_p * cn.x"),  # top-p against the count, not the mass
    (check_top_p_cuts, "if (k >= ktk) { s += exp(v - m); }", "if (k >= klo) { s += exp(v - m); }"),  # norm
    (check_all_distributions, "f32(h >> 8u) * (1.0 / 16777216.0)", "f32(h >> 9u) * (1.0 / 16777216.0)"),  # RNG
    (check_rng, "rand01(c) * prefix_sum()", "rand01(P.seed_lo) * prefix_sum()"),  # the counter ignored
    (check_nonfinite, "if ((a & 0x7fffffffu) > 0x7f800000u || a == 0x7f800000u)", "if (a == 0x7f800000u)"),  # NaN
]


@pytest.mark.parametrize("check,good,bad", PLANTED, ids=[p[2][:32] for p in PLANTED])
def test_planted_bug_is_caught(rng, check, good, bad):
    dev = Device(f16=False, subgroups=False)
    src = dev._source("sample")
    assert good in src, "the planted bug's anchor text is gone: update PLANTED"
    dev._sources["sample"] = src.replace(good, bad)
    with pytest.raises((AssertionError, pytest.fail.Exception)):  # a failed check, or "DID NOT RAISE"
        check(dev, rng)
