"""Activation-aware (calibrated) quantization: run the float model on calibration text in NumPy, then
quantize each layer to minimise its *output* error ||X (W - W^)^T|| rather than its weight error.

Layer by layer, with the inputs X each linear sees on the calibration text (NumPy, no torch; with
``SEQUENTIAL``, the default, the inputs that the layers already quantized give it, as GPTQ does, so a
layer is fitted to what it will really see, errors of the earlier layers included):

* q/k/v (input: input_layernorm's output) and gate/up (input: post_attention_layernorm's output):
  AWQ-style per-input-channel scales ``s = mean|x|^alpha`` (normalised around 1). The weight becomes
  ``W diag(s)`` before quantizing and the norm weight is divided by ``s``, which leaves the float
  model unchanged (RMSNorm multiplies by its weight last) while salient channels get finer steps.
* down_proj (input: silu(gate) * up): the same, with ``1/s`` folded into up_proj's rows (the product
  is linear in up).
* o_proj (input: the attention output): no fold, only the weighted search. (Under grouped-query
  attention a v row feeds several heads' channels; folding one scale per kv-head channel into
  v_proj's rows was measured and changed nothing on held-out text.)

Each (scaled) weight is then quantized with importance E[(x_k / s_k)^2], the diagonal of the output
error (:func:`llmgpu.quant.quantize`; that search may also clip a group's largest weight for finer
steps, ``quant.CLIP_CANDIDATES``, where the inputs it multiplies matter less). alpha is chosen per layer and fused group from ``_ALPHAS`` by
the measured output error on up to ``_LOSS_ROWS`` calibration rows, with the plain (uncalibrated)
search as one more candidate, so on those rows a layer is never worse than without calibration.

Last, at group size 32 (``GPTQ_MAX_GROUP``), the weights are rounded by GPTQ with the chosen
channel scales (:func:`gptq`): column by column, each column's rounding error is moved onto the
columns not yet rounded, as far as the inputs' correlations E[x x^T] let them make up for it. The
damping added to E[x x^T] is ``GPTQ_DAMP`` = 1 times its mean diagonal, a hundred times GPTQ's
usual 0.01: with ~2,000 calibration tokens, 0.01 halves the output error on the calibration text
but raises perplexity on other text (an overfit). 1 did best of 0.1, 0.3 and 1 on held-out GPL-3
text (the values tried on the Apache-2.0 text are in BENCHMARKS.md). At group size 64 GPTQ did not
help (level at 1 within the noise, worse at 0.3, also when kept only where it lowered the error on
held-back calibration rows), so it is not used there.
(A search on each group's E[x x^T] block instead of its diagonal overfit too. Neither an alpha
grid of 10 steps with AWQ's duo scaling nor twice the calibration text helped on held-out text.)

Then, symmetric only, each row's group scales are refitted together for the levels already chosen
(:func:`refit_scales`): the least-squares scales under E[x x^T] + ``REFIT_DAMP`` (0.1) times its
mean diagonal, where they lower that damped error. On three held-out texts it moved g32 from
+10.1 / +6.2 / +4.1 % to +8.5 / +6.8 / +3.4 % of F's perplexity (BENCHMARKS.md); damping 0.01 and 1
did no better. (Neither did a second GPTQ pass with the refitted scales kept, with or without
GPTQ's act order, nor 16k tokens of other calibration text, nor text the model wrote itself, nor
rotating the residual stream.)

Where GPTQ does not round (group sizes above ``GPTQ_MAX_GROUP``: 64 and 128), the levels get
``CD_SWEEPS`` (2) sweeps of coordinate descent instead (:func:`cd_levels`), each level moved to the
grid point nearest its exact minimiser of the output error under E[x x^T] + ``CD_DAMP`` (1) times
its mean diagonal, each sweep followed by refitting the scales again. Judged by the mean KL
divergence from F's next-token distribution (low noise, unlike the perplexity difference), one
sweep at damping 3 on the first ~1,700-token text brought g64 from 0.224 to 0.208 nats on the
Apache-2.0 text; with the longer text below, two sweeps at damping 1 bring it to 0.162, and do
better than one at 3 on all four held-out texts measured; damping 0.3 overfits (worse on the
non-legal text). GPTQ at g64 did worse than the descent with either text. At g32, on top of
GPTQ, the descent gave nothing. (Nor did, at g64, reordering the MLP's hidden channels so
similar ones share a group, or fitting each linear to the float model's outputs instead of to
its own on the quantized inputs, which overfits badly.)

The default calibration text (``llmgpu/calibration/default.txt``) was written for llmgpu and is
under the project's licence, Apache-2.0: varied prose, dialogue, instructions, code and numbers
(~1,700 tokens), then formal and technical registers (terms of use, a privacy notice, a protocol
specification, a README, a study's methods, news, an encyclopedia entry, minutes; ~1,500 tokens).
The register of the calibration text matters more than any knob above: the second part lowered
the KL from F by 13-19 % on each of four held-out texts, a non-legal technical one included
(BENCHMARKS.md, sixth pass). Calibrating on text like the one the model will see
(``--calibrate FILE``) can do better still: another licence text, at the same settings, did on
licence texts.
"""
from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path

import numpy as np

from . import quant
from .config import ModelConfig, rope_inv_freq
from .quant import dequantize, quantize

_ALPHAS = (0.0, 0.25, 0.5, 0.75)
SEQUENTIAL = True  # each layer calibrated on the inputs the already quantized layers give it (GPTQ does so)
_LOSS_ROWS = 2048  # calibration rows the alpha choice is measured on, evenly spaced (256 read noisier at g64)
DEFAULT_TOKENS = 4096  # calibration tokens at most (the shipped text has ~3,200)
CHUNK = 512  # tokens per independent sequence in the calibration forward pass
GPTQ_DAMP = 1.0  # GPTQ rounding after the AWQ scales, H + GPTQ_DAMP * mean(diag H) * I; None: off
GPTQ_MAX_GROUP = 32  # GPTQ only for group sizes up to this (at 64 the coordinate descent stays closer to F by KL)
REFIT_DAMP = 0.1  # symmetric scales refitted for the chosen levels, per row, on H + REFIT_DAMP * mean(diag H) * I; None: off
CD_SWEEPS = 2  # where GPTQ is not used (group sizes above GPTQ_MAX_GROUP), symmetric only: coordinate-descent sweeps over the levels after the refit, each followed by another refit; 0: off
CD_DAMP = 1.0  # the coordinate descent's H + CD_DAMP * mean(diag H) * I
KEEP_FLOAT = None  # for bench/calib_sensitivity.py: f(layer, group) -> True leaves that group's (scaled) weights float


def read_text(path: str | None) -> tuple[str, str, str]:
    """(text, label, sha256) of a UTF-8 calibration file, or of the shipped default for None."""
    if path is None:
        data = resources.files("llmgpu").joinpath("calibration/default.txt").read_bytes()
        label = "llmgpu default (calibration/default.txt)"
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"calibration file {p}: no such file" if not p.exists()
                                    else f"calibration file {p} is not a file; give a UTF-8 text file")
        data, label = p.read_bytes(), p.name
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"calibration file {label} is not UTF-8 text (invalid byte at offset {e.start}); "
                         "convert it first") from None
    return text, label, hashlib.sha256(data).hexdigest()


def sequences(ckpt, path: str | None) -> tuple[list[list[int]], str, str]:
    """(calibration sequences, label, sha256): the text at ``path`` (the shipped default for None)
    in ``ckpt``'s tokens, cut by :func:`chunks`."""
    from .tokenizer import encode_prompt
    text, label, sha = read_text(path)
    ids = encode_prompt(ckpt.tokenizer, text, add_bos=ckpt.add_bos, bos_token_id=ckpt.bos_token_id)
    return chunks(ids), label, sha


def chunks(ids: list[int], max_tokens: int | None = None, chunk: int = CHUNK) -> list[list[int]]:
    ids = ids[:max_tokens or DEFAULT_TOKENS]
    if len(ids) < 16:
        raise ValueError(f"the calibration text has {len(ids)} tokens; give at least 16 (a few paragraphs)")
    return [ids[i:i + chunk] for i in range(0, len(ids), chunk) if len(ids[i:i + chunk]) >= 2]


# ---- the float forward pass, one layer at a time ---------------------------------------------

def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * np.asarray(w, np.float32)


def _rope(x: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """HF's rotate-half RoPE on (T, heads, hd) at positions 0..T-1."""
    ang = np.arange(x.shape[0])[:, None] * inv_freq[None, :]
    cos, sin = np.cos(ang).astype(np.float32)[:, None], np.sin(ang).astype(np.float32)[:, None]
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _attention(T: dict, cfg: ModelConfig, p: str, x: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Causal grouped-query self-attention of one sequence x (T, d) -> (T, q_dim), before o_proj."""
    n, hd, nh, nkv = x.shape[0], cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    proj = lambda k: x @ np.asarray(T[p + k + ".weight"], np.float32).T + (  # noqa: E731
        np.asarray(T[p + k + ".bias"], np.float32) if p + k + ".bias" in T else 0)
    q, k, v = proj("q_proj").reshape(n, nh, hd), proj("k_proj").reshape(n, nkv, hd), proj("v_proj").reshape(n, nkv, hd)
    if cfg.qk_norm:
        q, k = rmsnorm(q, T[p + "q_norm.weight"], cfg.rms_norm_eps), rmsnorm(k, T[p + "k_norm.weight"], cfg.rms_norm_eps)
    q, k = _rope(q, inv_freq), _rope(k, inv_freq)
    k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) / np.float32(math.sqrt(hd))
    s = np.where(np.tril(np.ones((n, n), bool))[None], s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("hqk,khd->qhd", e / e.sum(-1, keepdims=True), v).reshape(n, nh * hd)


def layer_forward(T: dict, cfg: ModelConfig, i: int, hs: list[np.ndarray], inv_freq: np.ndarray):
    """Layer i on each sequence's hidden states ``hs`` (float weights in ``T``): the new hidden states,
    and each linear's inputs over all sequences stacked: {"qkv", "o", "gate_up", "down"} -> (rows, K)."""
    p, eps = f"model.layers.{i}.", cfg.rms_norm_eps
    W = lambda n: np.asarray(T[p + n], np.float32)  # noqa: E731
    b = lambda n: np.asarray(T[p + n], np.float32) if p + n in T else 0  # noqa: E731
    seen = {"qkv": [], "o": [], "gate_up": [], "down": []}
    out = []
    for h in hs:
        xa = rmsnorm(h, T[p + "input_layernorm.weight"], eps)
        a = _attention(T, cfg, p + "self_attn.", xa, inv_freq)
        h = h + a @ W("self_attn.o_proj.weight").T + b("self_attn.o_proj.bias")
        xm = rmsnorm(h, T[p + "post_attention_layernorm.weight"], eps)
        g, u = xm @ W("mlp.gate_proj.weight").T, xm @ W("mlp.up_proj.weight").T
        act = g * (0.5 + 0.5 * np.tanh(0.5 * g)) * u  # silu; the tanh form cannot overflow
        out.append(h + act @ W("mlp.down_proj.weight").T)
        for k, x in zip(seen, (xa, a, xm, act)):
            seen[k].append(x)
    return out, {k: np.concatenate(v) for k, v in seen.items()}


# ---- the search ----------------------------------------------------------------------------

def output_error(x: np.ndarray, ws: list[np.ndarray], wq: list[np.ndarray]) -> float:
    """||X (W - W^)^T|| / ||X W^T|| over the fused weights ``ws`` and their reconstructions ``wq``."""
    num = sum(float(np.square(x @ (w - q).T).sum()) for w, q in zip(ws, wq))
    den = sum(float(np.square(x @ w.T).sum()) for w in ws)
    return math.sqrt(num / (den or 1.0))


def awq_quantize(x: np.ndarray, ws: list[np.ndarray], group_sizes: list[int], asymmetric: bool, fold: bool):
    """Quantize weights ``ws`` (each (N_i, K)) that share the input ``x`` (rows, K): returns (tensors,
    per-input scales s to divide the preceding op's output by (ones unless ``fold``), alpha or None
    for the plain search, output error); tensors are (Q4Tensor, relative weight error) pairs, each
    standing for ``W diag(s)``."""
    xs = loss_rows(x)
    mean_abs = np.abs(x).mean(0) + 1e-8
    ones = np.ones(x.shape[1], np.float32)
    cands = [(None, ones)] + [(a, _channel_scales(mean_abs, a)) for a in (_ALPHAS if fold else (0.0,))]
    mean_sq = np.square(x).mean(0)
    best = None
    for alpha, s in cands:
        imp = None if alpha is None else mean_sq / (s * s)  # E[(x / s)^2]: the scaled inputs' weight
        qs = [quantize(w * s, g, asymmetric=asymmetric, importance=imp) for w, g in zip(ws, group_sizes)]
        err = output_error(xs, ws, [dequantize(q) / s for q, _ in qs])
        if best is None or err < best[3]:
            best = (qs, s, alpha, err)
    return best


def loss_rows(x: np.ndarray) -> np.ndarray:
    """Up to ``_LOSS_ROWS`` rows of ``x``, evenly spaced: the rows output errors are measured on."""
    return x[:: max(1, len(x) // _LOSS_ROWS)][:_LOSS_ROWS]


def cd_sweeps(asymmetric: bool) -> int:
    """Coordinate-descent sweeps of this recipe where GPTQ does not round: none when asymmetric
    (each sweep ends in the scale refit, which is symmetric only)."""
    return 0 if refit_damp(asymmetric) is None else CD_SWEEPS


def refit_damp(asymmetric: bool) -> float | None:
    """The damping of the scale refit for this recipe: None (no refit) when asymmetric."""
    return None if asymmetric else REFIT_DAMP


def second_moment(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """E[x x^T] (f64) of the inputs ``x`` divided by the channel scales ``s``: what W diag(s) sees."""
    xsc = x / s
    return (xsc.T.astype(np.float64) @ xsc) / len(x)


def gptq_round(H: np.ndarray, ws: list[np.ndarray], s: np.ndarray, group_size: int, asymmetric: bool) -> list:
    """GPTQ rounding of the fused weights ``ws`` (sharing one input, so K and group size) scaled by
    the chosen channel scales ``s``, for scaled inputs of second moment ``H``: one run over the
    stacked rows (GPTQ treats rows independently). Returns one tensor per weight."""
    q = gptq(np.concatenate([w * s for w in ws]), H, group_size, asymmetric, GPTQ_DAMP)
    cut = np.cumsum([0] + [w.shape[0] for w in ws])
    return [_row_slice(q, a, b) for a, b in zip(cut, cut[1:])]


def refit_scales(t: quant.Q4Tensor, w: np.ndarray, H: np.ndarray, damp: float) -> quant.Q4Tensor:
    """Symmetric ``t`` (levels fixed) with each row's group scales refitted jointly to minimise
    (w - w^)^T (H + damp * mean(diag H) * I) (w - w^): the output error on inputs of second moment H,
    damped toward the weight error. One G x G solve per row; scales stay f16, a row keeps its old
    scales where the new ones do not lower that error."""
    N, K = w.shape
    gs = t.group_size
    G = K // gs
    q = (quant.unpack_nibbles(t.qweight).astype(np.int32) - 8).astype(np.float64)
    Hd = np.asarray(H, np.float64) + damp * float(np.mean(np.diag(H))) * np.eye(K)
    w = np.asarray(w, np.float64)
    b = ((w @ Hd) * q).reshape(N, G, gs).sum(2)  # b[r, g] = sum_{k in g} q[r, k] (Hd w_r)[k]
    A = np.empty((N, G, G))
    qg = q.reshape(N, G, gs)
    for g in range(G):
        Pg = qg[:, g] @ Hd[g * gs:(g + 1) * gs]  # (N, K): q_g^T Hd[g, :]
        A[:, g] = (Pg.reshape(N, G, gs) * qg).sum(2)
    A[:, np.arange(G), np.arange(G)] += 1e-12 * np.maximum(A[:, np.arange(G), np.arange(G)].max(1, keepdims=True), 1e-30)
    s_new = np.linalg.solve(A, b[:, :, None])[:, :, 0].astype(np.float16).astype(np.float64)
    s_old = t.scales.astype(np.float64)

    def loss(s):
        r = w - (qg * s[:, :, None]).reshape(N, K)
        return ((r @ Hd) * r).sum(1)
    keep = ~(np.isfinite(s_new).all(1) & (loss(np.nan_to_num(s_new)) < loss(s_old)))
    S = np.where(keep[:, None], s_old, s_new).astype(np.float16)
    return quant.Q4Tensor(t.qweight, S, gs, t.offsets)


def cd_levels(t: quant.Q4Tensor, w: np.ndarray, H: np.ndarray, damp: float, block: int = 128) -> quant.Q4Tensor:
    """One sweep of cyclic coordinate descent over ``t``'s levels (symmetric, scales fixed) on
    (w - w^)^T Hd (w - w^), Hd = H + damp * mean(diag H) * I: each level in turn moved to the grid
    point nearest its exact minimiser given all the others, which never raises that error. All rows
    at once; lazy in blocks of ``block`` columns like :func:`gptq`."""
    N, K = w.shape
    gs = t.group_size
    q = quant.unpack_nibbles(t.qweight).astype(np.int32) - 8
    s = np.repeat(t.scales.astype(np.float64), gs, axis=1)  # (N, K) each level's scale
    Hd = np.asarray(H, np.float64) + damp * float(np.mean(np.diag(H))) * np.eye(K)
    dh = np.diag(Hd)
    R = q * s - np.asarray(w, np.float64)  # w^ - w
    P = R @ Hd
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        D = np.zeros((N, i2 - i1))
        for j in range(i1, i2):
            target = (q[:, j] * s[:, j] - P[:, j] / dh[j]) / np.where(s[:, j] != 0, s[:, j], 1.0)
            qn = np.clip(np.rint(target), -8, 7).astype(np.int32)
            qn = np.where(s[:, j] != 0, qn, q[:, j])
            d = (qn - q[:, j]) * s[:, j]
            q[:, j] = qn
            D[:, j - i1] = d
            P[:, i1:i2] += np.outer(d, Hd[j, i1:i2])
        P[:, i2:] += D @ Hd[i1:i2, i2:]  # (columns before i1 are not visited again this sweep)
    return quant.Q4Tensor(quant.pack_nibbles(q + 8), t.scales, gs, t.offsets)


def _row_slice(t: quant.Q4Tensor, a: int, b: int) -> quant.Q4Tensor:
    return quant.Q4Tensor(t.qweight[a:b].copy(), t.scales[a:b].copy(), t.group_size,
                          None if t.offsets is None else t.offsets[a:b].copy())


def gptq(w: np.ndarray, H: np.ndarray, group_size: int, asymmetric: bool, damp: float,
         block: int = 128) -> quant.Q4Tensor:
    """GPTQ rounding of ``w`` (N, K) for inputs with second moment ``H`` (K, K): columns are
    quantized in order and each one's rounding error is spread over the columns not yet quantized,
    through the upper Cholesky factor of H^-1 (lazy batches of ``block`` columns). A group's scale
    (and offset) is searched when its first column is reached, on the group's updated weights, with
    diag(H) as importance."""
    W = np.asarray(w, np.float64).copy()
    N, K = W.shape
    H = np.asarray(H, np.float64).copy()
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    imp = np.diag(H).copy()
    H[np.diag_indices(K)] += damp * float(np.mean(imp))
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: H^-1 = U^T U
    G = K // group_size
    S = np.zeros((N, G), np.float16)
    O = np.zeros((N, G), np.float32) if asymmetric else None
    Qn = np.zeros((N, K), np.int32)

    def search(wg, ig):  # (N, 1, group) weights, (1, group) importance -> scales, offsets
        wg, ig = wg.astype(np.float32), (ig / (imp.mean() or 1.0) + 1e-6).astype(np.float32)[None]
        if asymmetric:
            s16, o, _ = quant._search_asymmetric(wg, ig)
            return s16, o
        return quant._search_symmetric(wg, ig)[0], None

    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1, E = W[:, i1:i2].copy(), np.zeros((N, i2 - i1))
        for j in range(i2 - i1):
            c = i1 + j
            g = c // group_size
            if c % group_size == 0:
                s16, o = search(W1[:, None, j:j + group_size], imp[None, c:c + group_size])
                S[:, g] = s16[:, 0]
                if asymmetric:
                    O[:, g] = o[:, 0]
            s, o = S[:, g:g + 1], (O[:, g:g + 1] if asymmetric else None)
            q = quant._levels(W1[:, None, j:j + 1], s, o)[:, 0, 0]  # the search's own rounding
            Qn[:, c] = q.astype(np.int32)
            e = (W1[:, j] - (q * s[:, 0].astype(np.float64) + (0.0 if o is None else o[:, 0]))) / U[c, c]
            W1[:, j + 1:] -= np.outer(e, U[c, c + 1:i2])
            E[:, j] = e
        W[:, i2:] -= E @ U[i1:i2, i2:]
    return quant.Q4Tensor(quant.pack_nibbles(Qn + 8), S, group_size, O)


def _channel_scales(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    s = mean_abs.astype(np.float64) ** alpha
    s = s / math.sqrt(s.max() * s.min())  # centred around 1 in log scale, as AWQ does
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
_GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")


def quantize_layer(T: dict, i: int, xs: dict, group_size_of, asymmetric: bool, errors: dict) -> dict:
    """Quantize layer i's seven linears from their inputs ``xs``, folding the channel scales into
    input_layernorm, post_attention_layernorm and up_proj's rows. Updates ``T`` in place (quantized
    weights, folded float norms) and ``errors`` (weight errors); returns {group: {alpha, gptq,
    cd_sweeps, output error}} for the metadata."""
    p = f"model.layers.{i}."
    info = {}
    for group, names, x, fold in (("down", ("mlp.down_proj.weight",), xs["down"], "mlp.up_proj.weight"),
                                  ("o", ("self_attn.o_proj.weight",), xs["o"], None),
                                  ("qkv", _QKV, xs["qkv"], "input_layernorm.weight"),
                                  ("gate_up", _GATE_UP, xs["gate_up"], "post_attention_layernorm.weight")):
        ws = [np.asarray(T[p + n], np.float32) for n in names]
        gs = [group_size_of(w.shape[1]) for w in ws]
        qs, s, alpha, err = awq_quantize(x, ws, gs, asymmetric, fold is not None)
        used = GPTQ_DAMP is not None and gs[0] <= GPTQ_MAX_GROUP
        damp, sweeps = refit_damp(asymmetric), (0 if used else cd_sweeps(asymmetric))
        if used or damp is not None:
            H = second_moment(x, s)
            tensors = gptq_round(H, ws, s, gs[0], asymmetric) if used else [t for t, _ in qs]
            if damp is not None:
                tensors = [refit_scales(t, w * s, H, damp) for t, w in zip(tensors, ws)]
            for _ in range(sweeps):
                tensors = [refit_scales(cd_levels(t, w * s, H, CD_DAMP), w * s, H, damp) for t, w in zip(tensors, ws)]
            qs = [(t, quant.relative_error(t, w * s)) for t, w in zip(tensors, ws)]
            err = output_error(loss_rows(x), ws, [dequantize(t) / s for t in tensors])
        for n, (q, e), w in zip(names, qs, ws):
            T[p + n], errors[p + n] = q, e
            if KEEP_FLOAT is not None and KEEP_FLOAT(i, group):
                T[p + n] = w * s
        if fold is not None:  # down before gate_up: up's rows take 1/s before up is quantized
            f = np.asarray(T[p + fold], np.float32)
            T[p + fold] = f / s[:, None] if f.ndim == 2 else f / s
        info[group] = {"alpha": alpha, "gptq": used, "cd_sweeps": sweeps, "output_error": round(err, 6)}
    return info


def calibrate_and_quantize(tensors: dict, cfg: ModelConfig, seqs: list[list[int]], group_size_of,
                           asymmetric: bool, errors: dict, progress: bool = True) -> tuple[dict, dict]:
    """Quantize every layer's linears of the float ``tensors`` with calibration sequences ``seqs``;
    returns (new tensors, {layer: {group: {alpha, output_error}}}) and fills ``errors``. lm_head is
    left to the caller."""
    from tqdm import tqdm

    T = dict(tensors)
    emb = np.asarray(T["model.embed_tokens.weight"], np.float32)
    hs = [emb[np.asarray(s)] for s in seqs]
    inv_freq = rope_inv_freq(cfg)
    info = {}
    for i in tqdm(range(cfg.num_hidden_layers), desc="calibrating", unit="layer", disable=not progress):
        out, xs = layer_forward(T, cfg, i, hs, inv_freq)  # layer i still float: its own target
        info[i] = quantize_layer(T, i, xs, group_size_of, asymmetric, errors)
        if SEQUENTIAL:  # the next layer calibrates on what the quantized layers so far compute
            p = f"model.layers.{i}."
            Ti = {n: (dequantize(t) if n.startswith(p) and hasattr(t, "qweight") else t) for n, t in T.items()
                  if n.startswith(p)}
            out, _ = layer_forward(Ti, cfg, i, hs, inv_freq)
        hs = out
    return T, info
