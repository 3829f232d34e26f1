"""Perplexity of quantization recipes on held-out text, in NumPy on the CPU (no GPU): for trying
calibration ideas quickly. The same windows as `llmgpu perplexity --ctx 512 --stride 511`; every
variant, and F (the checkpoint's own weights, dequantized), runs the same int8 lm_head, so the
numbers compare with one another (they matched llmgpu's to about 4 digits before).

    python bench/calib_eval.py EVAL.txt [--tokens 1020] [--group-size 32] [--calibrate FILE] [--variant NAME]

Prints one line per recipe: perplexity, vs F, top-1 agreement with F, the mean KL divergence of
its next-token distribution from F's (less noisy than the perplexity difference: it does not hang
on which tokens the text happens to hold), seconds to quantize.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import numpy as np

from llmgpu import calibrate
from llmgpu.config import rope_inv_freq
from llmgpu.defaults import default_model_path
from llmgpu.loader import _requantizable, load_checkpoint, quantize_checkpoint
from llmgpu.quant import Q4Tensor, Q8Tensor, dequantize, quantize_q8
from llmgpu.tokenizer import encode_prompt


def forward_logits(T: dict, cfg, ids: list[int], head: np.ndarray) -> np.ndarray:
    hs = [np.asarray(T["model.embed_tokens.weight"], np.float32)[ids]]
    inv = rope_inv_freq(cfg)
    for i in range(cfg.num_hidden_layers):
        hs, _ = calibrate.layer_forward(T, cfg, i, hs, inv)
    return calibrate.rmsnorm(hs[0], T["model.norm.weight"], cfg.rms_norm_eps) @ head.T


def score(T, cfg, ids, head, ctx=512, stride=511, ref=None):
    """(nll per scored token, argmax per scored token, log-probabilities per window) with
    perplexity's windows (cli.score_windows); with ``ref`` (F's log-probabilities per window) the
    third is KL(F || this) per scored token instead."""
    nll, top, lps, start, done = [], [], [], 0, 1
    while done < len(ids):
        end = min(start + ctx, len(ids))
        w = ids[start:end]
        x = forward_logits(T, cfg, w, head).astype(np.float64)[done - 1 - start:len(w) - 1]
        tgt = np.asarray(w[done - start:])
        m = x.max(1, keepdims=True)
        lp = x - (m + np.log(np.exp(x - m).sum(1, keepdims=True)))
        nll.append(-lp[np.arange(len(tgt)), tgt])
        top.append(x.argmax(1))
        if ref is None:
            lps.append(lp.astype(np.float32))
        else:
            r = ref[len(lps)].astype(np.float64)
            lps.append((np.exp(r) * (r - lp)).sum(1))
        done, start = end, start + stride
    return np.concatenate(nll), np.concatenate(top), (lps if ref is None else np.concatenate(lps))


def floats(T: dict) -> dict:
    return {n: (dequantize(t) if isinstance(t, (Q4Tensor, Q8Tensor)) else t) for n, t in T.items()}


def reference(eval_path: str, tokens: int):
    """The default model with its layers float (F), the first ``tokens`` ids of ``eval_path``, the
    int8 lm_head every recipe shares, and F's (nll, argmax, log-probabilities) on those ids."""
    ck = load_checkpoint(default_model_path())
    ids = encode_prompt(ck.tokenizer, open(eval_path, encoding="utf-8").read(), add_bos=ck.add_bos,
                        bos_token_id=ck.bos_token_id)[:tokens]
    fl = dataclasses.replace(ck, tensors=_requantizable(ck))
    emb = np.asarray(fl.tensors["model.embed_tokens.weight"], np.float32)
    head = dequantize(quantize_q8(fl.tensors.get("lm_head.weight", emb))[0])
    return fl, ids, head, score(floats(fl.tensors), ck.config, ids, head)


def kl_text(kl: np.ndarray) -> str:
    """Mean KL per token and its standard error."""
    return f"KL(F||it) {kl.mean():.4f} ± {np.std(kl, ddof=1) / math.sqrt(len(kl)):.4f} nats"


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("eval")
    p.add_argument("--tokens", type=int, default=1020)
    p.add_argument("--group-size", type=int, nargs="+", default=[32])
    p.add_argument("--calibrate", default=None, help="calibration text (default: the shipped one)")
    p.add_argument("--recipes", default="F,plain,calibrated")
    p.add_argument("--save", default=None, metavar="PREFIX",
                   help="save each recipe's per-token nll and KL as PREFIX-g<size>-<recipe>.npz (for paired comparisons)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="set a knob of llmgpu/calibrate.py (quant.NAME: of llmgpu/quant.py) for this run, e.g. quant.CLIP=False, "
                        "_ALPHAS=(0,0.25,0.5), SEQUENTIAL=True, DEFAULT_TOKENS=4096 (a Python literal)")
    a = p.parse_args(argv)
    import ast
    from llmgpu import quant
    for kv in a.set:
        k, v = kv.split("=", 1)
        mod, k = (quant, k[6:]) if k.startswith("quant.") else (calibrate, k)
        if not hasattr(mod, k):
            raise SystemExit(f"{mod.__name__} has no {k}")
        setattr(mod, k, ast.literal_eval(v))
        print(f"{mod.__name__}.{k} = {getattr(mod, k)!r}", flush=True)
    fl, ids, head, (nllF, topF, lpF) = reference(a.eval, a.tokens)
    n, pF = len(nllF), math.exp(nllF.mean())
    if "F" in a.recipes.split(","):
        print(f"F: perplexity {pF:.3f} over {n} tokens", flush=True)
    for gs in a.group_size:
        for r in a.recipes.split(","):
            if r == "F":
                continue
            t0 = time.time()
            q = quantize_checkpoint(fl, gs, progress=False, asymmetric=r == "asymmetric",
                                    calibrate=(a.calibrate or True) if r == "calibrated" else None, note=lambda m: None)
            dt = time.time() - t0
            T = floats(q.tensors)
            nll, top, kl = score(T, fl.config, ids, head, ref=lpF)
            pp = math.exp(nll.mean())
            if a.save:
                np.savez(f"{a.save}-g{gs}-{r}.npz", nll=nll, nllF=nllF, kl=kl)
            # the standard error of the mean per-token log-likelihood difference against F (paired):
            # how much of "vs F" the choice of scored text alone could move (tokens taken as independent)
            se = float(np.std(nll - nllF, ddof=1) / math.sqrt(len(nll)))
            extra = ""
            if "calibration" in q.quantization:
                extra = f"  calib output error {q.quantization['calibration']['output_error_mean']:.4f}"
            print(f"g{gs} {r}: perplexity {pp:.3f} ({pp / pF - 1:+.1%} ± {pp / pF * se:.1%} vs F), top-1 {np.mean(top == topF):.1%}, "
                  f"{kl_text(kl)}, "
                  f"quantized in {dt:.0f} s{extra}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
