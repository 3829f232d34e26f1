"""Sampler: greedy, filters (top-k / top-p / min-p) against an independent NumPy reference, temperature
statistics, repetition penalty, seeds and validation."""
import numpy as np
import pytest

from llmgpu.sample import NonFiniteLogitsError, Sampler, apply_repetition_penalty, make_sampler

from .test_gpu_sample import FALSE_FAIL, bernstein

N_DRAWS = 4000


def logits_for(rng, vocab, scale=3.0):
    return (scale * rng.standard_normal(vocab)).astype(np.float32)


def softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def reference_allowed(x, top_k, top_p, min_p):
    """The set of tokens the filters keep, computed the slow, obvious way."""
    order = sorted(range(len(x)), key=lambda i: -float(x[i]))
    if top_k:
        order = order[:top_k]
    p = softmax([x[i] for i in order])
    keep = len(order)
    if top_p < 1:
        acc = 0.0
        for n, q in enumerate(p, 1):
            acc += q
            if acc >= top_p - 1e-9:
                keep = min(keep, n)
                break
    keep = min(keep, sum(q >= min_p * p[0] for q in p))
    return set(order[:keep]), {order[i]: p[i] for i in range(keep)}


def draws(s: Sampler, x, n=N_DRAWS, history=()):
    return np.array([s(x, history) for _ in range(n)])


def test_greedy_is_argmax_whatever_the_filters(rng):
    for _ in range(20):
        x = logits_for(rng, int(rng.integers(2, 3000)))
        s = make_sampler(temperature=0, top_k=int(rng.integers(0, 5)), top_p=0.1, min_p=0.5,
                         seed=int(rng.integers(1000)))
        assert s.greedy
        assert s(x) == int(np.argmax(x))
    assert not make_sampler(temperature=0.01).greedy


@pytest.mark.parametrize("top_k,top_p,min_p", [(5, 1.0, 0.0), (0, 0.6, 0.0), (0, 1.0, 0.2), (20, 0.9, 0.05),
                                               (1, 1.0, 0.0), (0, 1.0, 0.0)])
def test_filters_match_reference_and_frequencies(rng, top_k, top_p, min_p):
    vocab = int(rng.integers(30, 200))
    x = logits_for(rng, vocab, scale=1.5)
    allowed, p = reference_allowed(x, top_k, top_p, min_p)
    s = make_sampler(temperature=1.0, top_k=top_k, top_p=top_p, min_p=min_p, seed=int(rng.integers(2**32)))
    idx, probs = s.candidates(x)
    assert set(idx.tolist()) == allowed
    got = draws(s, x)
    assert set(got.tolist()) <= allowed
    # at temperature 1 the survivors keep their relative probabilities: compare frequencies within
    # Bernstein's bound (5 sigma of the normal approximation failed for a token of probability 7e-5
    # drawn 4 times in 4000, seed 3592165993: rare tokens' counts are not normal)
    total = sum(p.values())
    for t, q in p.items():
        q /= total
        f = np.mean(got == t)
        assert abs(f - q) < bernstein(q, N_DRAWS, FALSE_FAIL / len(p)), (t, f, q)


def test_top_k_never_outside_top_k(rng):
    x = logits_for(rng, 5000, scale=0.5)  # flat enough that many tokens would otherwise be drawn
    k = int(rng.integers(2, 30))
    top = set(np.argsort(-x)[:k].tolist())
    got = draws(make_sampler(temperature=1.5, top_k=k, top_p=1.0, min_p=0.0, seed=int(rng.integers(2**32))), x)
    assert set(got.tolist()) <= top
    assert len(set(got.tolist())) > 1


def test_top_p_keeps_smallest_set_with_the_mass(rng):
    x = logits_for(rng, 1000)
    p = np.sort(softmax(x))[::-1]
    top_p = float(rng.uniform(0.3, 0.95))
    idx, _ = make_sampler(top_k=0, top_p=top_p, min_p=0).candidates(x)
    n = idx.size
    assert p[:n].sum() >= top_p - 1e-6
    assert p[:n - 1].sum() < top_p
    assert set(idx.tolist()) == set(np.argsort(-x)[:n].tolist())


def test_min_p_drops_unlikely_tokens(rng):
    x = logits_for(rng, 2000)
    p = softmax(x)
    min_p = float(rng.uniform(0.01, 0.3))
    got = draws(make_sampler(temperature=2.0, top_k=0, top_p=1.0, min_p=min_p, seed=int(rng.integers(2**32))), x,
                n=1000)
    assert (p[got] >= min_p * p.max() * (1 - 1e-6)).all()


def test_temperature_reweights_survivors(rng):
    x = logits_for(rng, 8, scale=1.0)
    T = float(rng.uniform(0.3, 2.0))
    s = make_sampler(temperature=T, top_k=0, top_p=1.0, min_p=0.0, seed=int(rng.integers(2**32)))
    got = draws(s, x)
    q = softmax(x / T)
    for t in range(8):
        assert abs(np.mean(got == t) - q[t]) < bernstein(q[t], N_DRAWS, FALSE_FAIL / 8)  # (as above)
    # lower temperature: the most likely token more often
    cold = draws(make_sampler(temperature=T / 4, top_k=0, top_p=1.0, min_p=0.0, seed=1), x)
    assert np.mean(cold == np.argmax(x)) > np.mean(got == np.argmax(x))


def test_filters_see_the_untempered_distribution(rng):
    # a hot temperature must not let in tokens that min-p removed at temperature 1
    x = logits_for(rng, 300)
    allowed, _ = reference_allowed(x, 0, 1.0, 0.1)
    got = draws(make_sampler(temperature=5.0, top_k=0, top_p=1.0, min_p=0.1, seed=int(rng.integers(2**32))), x,
                n=1000)
    assert set(got.tolist()) <= allowed


def test_masked_tokens_never_drawn(rng):
    x = logits_for(rng, 50, scale=0.1)
    masked = rng.choice(50, 45, replace=False)
    x[masked] = -np.inf
    got = draws(make_sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=int(rng.integers(2**32))), x,
                n=500)
    assert not set(got.tolist()) & set(masked.tolist())


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0, repetition_penalty=1.3),
                                dict(top_k=2), dict(top_k=0, top_p=1.0, min_p=0.0), dict()])
@pytest.mark.parametrize("bad", ["nan", "inf", "all -inf"])
def test_not_finite_logits_are_an_error_in_every_mode(rng, kw, bad):
    # the NaN sits at the smallest logit: argmax and a top-2 set would both pass over it
    x = logits_for(rng, 1000)
    if bad == "all -inf":
        x[:] = -np.inf
    else:
        x[int(np.argmin(x))] = np.nan if bad == "nan" else np.inf
    with pytest.raises(NonFiniteLogitsError, match="logits are not finite.*check the checkpoint"):
        make_sampler(seed=0, **kw)(x, history=[1, 2, 3])
    assert issubclass(NonFiniteLogitsError, RuntimeError)


def test_seed_reproduces_draws(rng):
    x = logits_for(rng, 500, scale=0.5)
    seed = int(rng.integers(2**32))
    a = draws(make_sampler(top_k=0, seed=seed), x, n=50)
    b = draws(make_sampler(top_k=0, seed=seed), x, n=50)
    c = draws(make_sampler(top_k=0, seed=seed + 1), x, n=50)
    assert (a == b).all()
    assert (a != c).any()


def test_does_not_modify_logits(rng):
    x = logits_for(rng, 100)
    y = x.copy()
    make_sampler(repetition_penalty=1.5, seed=0)(x, [1, 2, 3])
    assert (x == y).all()


def test_repetition_penalty_values(rng):
    x = logits_for(rng, 50)
    hist = rng.integers(0, 50, 30).tolist()
    pen = float(rng.uniform(1.1, 2.0))
    last_n = int(rng.integers(1, 30))
    y = apply_repetition_penalty(x, hist, pen, last_n)
    seen = set(hist[-last_n:])
    for t in range(50):
        if t in seen:
            assert y[t] == pytest.approx(x[t] / pen if x[t] > 0 else x[t] * pen)
            assert y[t] < x[t]  # > 1 always lowers a seen token
        else:
            assert y[t] == x[t]
    assert (apply_repetition_penalty(x, hist, pen, None)[list(set(hist))] < x[list(set(hist))]).all()
    assert (apply_repetition_penalty(x, hist, 1.0) == x).all()
    assert (apply_repetition_penalty(x, hist, 1 / pen, None)[list(set(hist))] > x[list(set(hist))]).all()


def test_repetition_penalty_changes_greedy_choice(rng):
    x = logits_for(rng, 100)
    best, second = (int(i) for i in np.argsort(-x)[:2])
    x[second] = abs(x[second])
    x[best] = x[second] + 0.01  # positive, just above the rest
    s = make_sampler(temperature=0, repetition_penalty=2.0, repeat_last_n=4)
    assert s(x, []) == best
    assert s(x, [best]) == second
    assert s(x, [best, 7, 7, 7, 7]) == best  # seen, but outside the last 4


@pytest.mark.parametrize("kw,match", [
    (dict(temperature=-1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature="hot"), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_p=0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(min_p=-0.1), "min_p"), (dict(min_p=2), "min_p"),
    (dict(repetition_penalty=0), "repetition_penalty"), (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(repeat_last_n=0), "repeat_last_n"), (dict(seed=-3), "seed"), (dict(seed=1.5), "seed"),
    (dict(top_k=True), "top_k")])
def test_bad_values_name_the_parameter(kw, match):
    with pytest.raises(ValueError, match=match):
        make_sampler(**kw)
