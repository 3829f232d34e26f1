"""The raw wgpu-native recording route gives exactly what wgpu-py's classes give."""
import numpy as np

from llmgpu import fastpath
from llmgpu.ops import Q4Linear, linear, submit
from llmgpu.quant import random_q4


def test_fastpath_available_with_pinned_wgpu():
    assert fastpath.AVAILABLE, "wgpu-py's private cffi layout changed: update llmgpu/fastpath.py"


def test_same_results_both_routes(dev, rng):
    t = random_q4(300, 256, 32, rng)
    lin = Q4Linear(dev, t)
    x = dev.buffer(rng.standard_normal((3, 256)).astype(dev.act_dtype))
    outs = []
    for fast in (False, True):
        y = dev.buffer(np.full((3, 300), np.nan, dev.act_dtype))
        ops = linear(dev, lin, x, y, 3) + linear(dev, lin, x, y, 3, residual=True)
        if fast:
            submit(dev, ops, raw=fastpath.compile_ops(ops))
        else:
            enc = dev.device.create_command_encoder()
            cpass = enc.begin_compute_pass()
            for op in ops:
                op.record(cpass)
            cpass.end()
            dev.queue.submit([enc.finish()])
        outs.append(dev.read(y, dev.act_dtype, (3, 300)))
    assert not np.isnan(outs[0]).any()
    np.testing.assert_array_equal(outs[0], outs[1])


def test_model_runs_with_the_c_route_off(monkeypatch):
    """The public wgpu-py route alone (fastpath.AVAILABLE False) runs a model to the same logits."""
    from llmgpu.bench import random_checkpoint
    from llmgpu.model import Model

    from .conftest import get_device
    ckpt = random_checkpoint("tiny")
    ids = [5, 17, 3, 99, 4]

    def run():
        m = Model(ckpt, dev=get_device(), max_seq=32, chunk=4)
        out = [m.prefill(ids[:3])] + [m.decode(t) for t in ids[3:]]
        return np.stack(out + [m.logits(ids)[-1]])
    fast = run()
    monkeypatch.setattr(fastpath, "AVAILABLE", False)
    assert fastpath.compile_ops([]) is None
    slow = run()
    assert np.isfinite(fast).all()
    np.testing.assert_array_equal(fast, slow)
