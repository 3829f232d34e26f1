"""Where a calibrated quantization loses: the model with only one kind of linear (or one third of the
layers) quantized and everything else kept float, scored against F on held-out text, in NumPy on
the CPU. The parts' KL divergences add up to about the whole's, so the largest is where to look.

    python bench/calib_sensitivity.py EVAL.txt [--tokens 2045] [--group-size 64]

Prints one line per part: perplexity vs F, top-1 agreement with F, mean KL(F || part) in nats.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

import calib_eval as ce
from llmgpu import calibrate
from llmgpu.quant import group_size_for


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("eval")
    p.add_argument("--tokens", type=int, default=2045)
    p.add_argument("--group-size", type=int, default=64)
    a = p.parse_args(argv)
    fl, ids, head, (nllF, topF, lpF) = ce.reference(a.eval, a.tokens)
    seqs = calibrate.sequences(fl, None)[0]
    L = fl.config.num_hidden_layers
    parts = {"all": lambda i, g: False}
    for grp in ("qkv", "o", "gate_up", "down"):
        parts[f"only {grp}"] = (lambda grp: lambda i, g: g != grp)(grp)
    for lo, hi in ((0, L // 3), (L // 3, 2 * L // 3), (2 * L // 3, L)):
        parts[f"only layers {lo}-{hi - 1}"] = (lambda lo, hi: lambda i, g: not lo <= i < hi)(lo, hi)
    try:
        for name, keep in parts.items():
            calibrate.KEEP_FLOAT = keep
            T, _ = calibrate.calibrate_and_quantize(fl.tensors, fl.config, seqs,
                                                    lambda K: group_size_for(K, a.group_size), False, {}, progress=False)
            nll, top, kl = ce.score(ce.floats(T), fl.config, ids, head, ref=lpF)
            print(f"g{a.group_size} {name}: {math.exp(nll.mean() - nllF.mean()) - 1:+.1%} vs F, "
                  f"top-1 {np.mean(top == topF):.1%}, {ce.kl_text(kl)}", flush=True)
    finally:
        calibrate.KEEP_FLOAT = None


if __name__ == "__main__":
    sys.exit(main())
