"""Where a calibrated quantization loses: the model with only one kind of linear (or one third of the
layers) quantized and everything else kept float, scored against F on held-out text, in NumPy on
the CPU. The parts' KL divergences add up to about the whole's, so the largest is where to look.

    python bench/calib_sensitivity.py EVAL.txt [--tokens 2045] [--group-size 64]

Prints one line per part: perplexity vs F, top-1 agreement with F, mean KL(F || part) in nats.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import numpy as np

import calib_eval as ce
from llmgpu import calibrate
from llmgpu.defaults import default_model_path
from llmgpu.loader import _requantizable, load_checkpoint
from llmgpu.quant import dequantize, group_size_for, quantize_q8
from llmgpu.tokenizer import encode_prompt


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("eval")
    p.add_argument("--tokens", type=int, default=2045)
    p.add_argument("--group-size", type=int, default=64)
    a = p.parse_args(argv)
    ck = load_checkpoint(default_model_path())
    enc = lambda t: encode_prompt(ck.tokenizer, t, add_bos=ck.add_bos, bos_token_id=ck.bos_token_id)  # noqa: E731
    ids = enc(open(a.eval, encoding="utf-8").read())[:a.tokens]
    seqs = calibrate.chunks(enc(calibrate.read_text(None)[0]))
    fl = dataclasses.replace(ck, tensors=_requantizable(ck))
    emb = np.asarray(fl.tensors["model.embed_tokens.weight"], np.float32)
    head = dequantize(quantize_q8(fl.tensors.get("lm_head.weight", emb))[0])
    nllF, topF, lpF = ce.score(ce.floats(fl.tensors), ck.config, ids, head)
    L = ck.config.num_hidden_layers
    parts = {"all": lambda i, g: False}
    for grp in ("qkv", "o", "gate_up", "down"):
        parts[f"only {grp}"] = (lambda grp: lambda i, g: g != grp)(grp)
    for lo, hi in ((0, L // 3), (L // 3, 2 * L // 3), (2 * L // 3, L)):
        parts[f"only layers {lo}-{hi - 1}"] = (lambda lo, hi: lambda i, g: not lo <= i < hi)(lo, hi)
    try:
        for name, keep in parts.items():
            calibrate.KEEP_FLOAT = keep
            T, _ = calibrate.calibrate_and_quantize(fl.tensors, ck.config, seqs,
                                                    lambda K: group_size_for(K, a.group_size), False, {}, progress=False)
            nll, top, kl = ce.score(ce.floats(T), ck.config, ids, head, ref=lpF)
            print(f"g{a.group_size} {name}: {math.exp(nll.mean() - nllF.mean()) - 1:+.1%} vs F, top-1 {np.mean(top == topF):.1%}, "
                  f"KL {kl.mean():.4f} ± {np.std(kl, ddof=1) / math.sqrt(len(kl)):.4f} nats", flush=True)
    finally:
        calibrate.KEEP_FLOAT = None


if __name__ == "__main__":
    sys.exit(main())
