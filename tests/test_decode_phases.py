"""Each phase of the decode kernel (shaders/decode.wgsl) against its NumPy reference (tests/reference.py).

The phased schedule runs one dispatch per phase, so a step can be stopped after any phase: before
each phase the test reads the buffers it takes (residual h, qkv, attention partials, the int8 MLP
activations, the KV cache), runs that one dispatch, and checks what it wrote against NumPy computed
from those very inputs and the checkpoint's dequantized weights. Bounds: float paths 1e-4 (seen
≤ 8e-7 over 16 runs); the GEMVs fed int8 activations 1e-2 (seen ≤ 4e-7, but NumPy's and the GPU's
norms may round one activation a step apart: ~1e-3); the f16 cache row 2e-3. Every phase of every layer and
the head is checked this way in one decode step, after a prefill that fills the cache (130
positions: the step's attention spans two blocks of 128).

What each check catches, beyond "the whole model matches" (test_decode.py): a phase that reads the
wrong layer's weights or norm, drops a bias or a group offset, mis-scales the int8 activations,
forgets the residual, rotates with the wrong position, writes the cache row of another position,
or stores attention partials (o, max, sum) that combine right only by accident.
"""
import numpy as np
import pytest

from llmgpu.config import rope_inv_freq
from llmgpu.model import Model
from llmgpu.ops import submit
from llmgpu.quant import dequantize, q8_activations

from . import reference as ref
from .conftest import get_device
from .test_model import BASE, make_checkpoint

F32 = np.float32
EVEN_ODD = np.argsort([0, 2, 4, 6, 1, 3, 5, 7])


def unpack_q8(words: np.ndarray, d: np.ndarray) -> np.ndarray:
    """int8 blocks as the kernels store them (per 8 values the even elements' bytes, then the odd
    ones'; (scale, 8·Σq) per 32) → the values they stand for; checks the stored block sums."""
    b = words.view(np.int8).reshape(-1, 8)[:, EVEN_ODD].reshape(-1, 32).astype(np.int64)
    d = d.reshape(-1, 2)
    assert np.array_equal(d[:, 1], 8 * b.sum(1)), "the int8 block sums do not match the values"
    return (b * d[:, :1]).reshape(-1)


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert not np.isnan(got).any()
    return np.abs(got - want).max() / np.abs(want).max()


def within_one_step(got, want, what):
    """int8 values against the float values they quantize: at most one step (max|block| / 127) off
    each (rounding of nearly-equal float inputs may differ by one step)."""
    want = np.asarray(want, np.float64).reshape(-1, 32)
    step = np.abs(want).max(1, keepdims=True) / 127
    diff = np.abs(np.asarray(got, np.float64).reshape(-1, 32) - want)
    assert (diff <= 1.02 * step + 1e-12).all(), f"{what}: off by {(diff / step).max():.2f} int8 steps"


class State:
    """The decode kernel's buffers of one model, read back as NumPy."""

    def __init__(self, m: Model):
        self.m, self.k, self.dev, self.cfg = m, m.kernel, m.dev, m.config

    def f32(self, name, n):
        return self.dev.read(self.k.scratch[name], F32, (n,)).astype(np.float64)

    def h(self):
        return self.f32("h", self.cfg.hidden_size)

    def qkv(self):
        return self.f32("qkv", self.m.heads.qkv_dim)

    def part(self):
        cfg, k = self.cfg, self.k
        nbmax = -(-self.m.max_seq // k.block)
        return self.f32("part", cfg.num_attention_heads * nbmax * (cfg.head_dim + 2)).reshape(
            cfg.num_attention_heads, nbmax, cfg.head_dim + 2)

    def act(self):
        ff = self.cfg.intermediate_size
        words = self.dev.read(self.k.scratch["aq"], np.uint32, (ff // 4,))
        return unpack_q8(words, self.dev.read(self.k.scratch["ad"], F32, (ff // 32, 2)))

    def cache(self, layer):
        """Layer `layer`'s keys and values (max_seq, n_kv, hd) as stored (f16 or f32)."""
        cfg, kv = self.cfg, self.m.kv
        shape = (self.m.max_seq, cfg.num_key_value_heads, cfg.head_dim)
        out = []
        for buf, off, _ in (kv.k[layer], kv.v[layer]):
            out.append(self.dev.read(buf, self.dev.act_dtype, shape, offset=off).astype(np.float64))
        return out


def weights(T, names):
    return np.concatenate([dequantize(T[n]).astype(np.float64) for n in names], axis=0)


def bias(T, names, sizes):
    return np.concatenate([np.asarray(T[n], np.float64) if n in T else np.zeros(s) for n, s in zip(names, sizes)])


@pytest.mark.parametrize("arch,prompt", [("llama-bias", 130), ("qwen3", 5)])
def test_every_phase_of_a_step_matches_numpy(tmp_path, rng, arch, prompt):
    ckpt, _ = make_checkpoint(tmp_path, arch, rng, max_position_embeddings=256)
    T, dev = ckpt.tensors, get_device()
    m = Model(ckpt, dev=dev, max_seq=160, decode="phased")
    cfg, heads, k = m.config, m.heads, m.kernel
    d, ff, nh, nkv, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps = cfg.rms_norm_eps
    ids = [int(i) for i in rng.integers(0, BASE["vocab_size"], prompt + 1)]
    m.prefill(ids[:prompt])
    pos, token = prompt, ids[prompt]
    phases = k.ops("phased")
    k.prepare(pos, token)
    st = State(m)
    emb = np.asarray(T["model.embed_tokens.weight"], F32)
    if m.embedding.dtype == "f16":
        emb = emb.astype(np.float16)
    assert (pos + 1 > k.block) == (prompt == 130)  # the long case spans two attention blocks

    def run(ph):
        submit(dev, [phases[ph]], sync=True)

    h = emb[token].astype(np.float64)  # the residual stream as the reference carries it: from the GPU's own
    for layer in range(cfg.num_hidden_layers):
        a, p = f"model.layers.{layer}.self_attn.", f"model.layers.{layer}.mlp."
        base = 5 * layer

        # 0: attention norm → int8 → QKV (+ bias); layer 0 also starts the residual from the embedding
        h_in = h if layer == 0 else st.h()
        run(base)
        x = q8_activations(ref.rmsnorm(h_in, T[f"model.layers.{layer}.input_layernorm.weight"], eps)[None].astype(F32))[0]
        w = weights(T, [a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"])
        want = w @ x + bias(T, [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"], [cfg.q_dim, cfg.kv_dim, cfg.kv_dim])
        got = st.qkv()
        assert rel(got, want) < 1e-2, f"layer {layer} qkv: {rel(got, want):.2e}"
        if layer == 0:
            assert np.array_equal(st.h(), emb[token].astype(np.float64)), "phase 0 did not start h from the embedding"

        # 1: q/k norms, RoPE, this token's cache row, attention partials per (head, block)
        qkv = got
        K, V = st.cache(layer)
        run(base + 1)
        qn = (T[a + "q_norm.weight"], T[a + "k_norm.weight"]) if cfg.qk_norm else ()
        wq, wk, wv = ref.rope_qk(qkv[None], nh, nkv, hd, rope_inv_freq(cfg), pos, eps, *qn)
        K2, V2 = st.cache(layer)
        tol = 1e-5 if dev.act_type == "f32" else 2e-3
        assert rel(K2[pos], wk[0]) < tol and rel(V2[pos], wv[0]) < tol, f"layer {layer}: the cache row at {pos}"
        assert np.array_equal(K2[:pos], K[:pos]) and np.array_equal(V2[:pos], V[:pos]), "wrote other cache rows"
        K[pos], V[pos] = wk[0], wv[0]  # the kernel attends to this token's key and value unrounded
        part = st.part()
        group = nh // nkv
        nb = pos // k.block + 1
        for hh in range(nh):
            s = K[:pos + 1, hh // group] @ wq[0, hh] / np.sqrt(hd)
            for b in range(nb):
                t0, t1 = b * k.block, min((b + 1) * k.block, pos + 1)
                sb = s[t0:t1]
                mx, total = part[hh, b, hd], part[hh, b, hd + 1]
                assert abs(mx - sb.max()) < 1e-3 * max(1, abs(sb.max())), f"layer {layer} head {hh} block {b}: max"
                assert abs(total - np.exp(sb - mx).sum()) < 1e-3 * total, f"layer {layer} head {hh} block {b}: sum"
                o = np.exp(sb - mx) @ V[t0:t1, hh // group]
                assert rel(part[hh, b, :hd], o) < 1e-4, f"layer {layer} head {hh} block {b}: weighted values"

        # 2: combine the partials → int8 → O (+ bias), added to the residual
        h_in = st.h()
        run(base + 2)
        att = ref.attention(wq, K, V, pos)[0].reshape(-1)
        x = q8_activations(att[None].astype(F32))[0]
        want = h_in + weights(T, [a + "o_proj.weight"]) @ x + bias(T, [a + "o_proj.bias"], [d])
        got = st.h()
        assert rel(got - h_in, want - h_in) < 1e-2, f"layer {layer} o: {rel(got - h_in, want - h_in):.2e}"

        # 3: MLP norm → int8 → gate/up → silu(gate)·up → int8 blocks
        h_in = got
        run(base + 3)
        x = q8_activations(ref.rmsnorm(h_in, T[f"model.layers.{layer}.post_attention_layernorm.weight"], eps)[None].astype(F32))[0]
        gate, up = weights(T, [p + "gate_proj.weight"]) @ x, weights(T, [p + "up_proj.weight"]) @ x
        within_one_step(st.act(), gate / (1 + np.exp(-gate)) * up, f"layer {layer} silu(gate)·up")

        # 4: down, added to the residual
        act = st.act()
        run(base + 4)
        want = h_in + weights(T, [p + "down_proj.weight"]) @ act
        got = st.h()
        assert rel(got - h_in, want - h_in) < 1e-4, f"layer {layer} down: {rel(got - h_in, want - h_in):.2e}"
        h = got

    # the head: final norm (float activations) → lm_head
    run(5 * cfg.num_hidden_layers)
    want = dequantize(T["lm_head.weight"]).astype(np.float64) @ ref.rmsnorm(h, T["model.norm.weight"], eps)
    got = dev.read(m.buf.logits, F32, (cfg.vocab_size,))
    assert rel(got, want) < 1e-4, f"head: {rel(got, want):.2e}"
