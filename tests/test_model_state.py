"""The model's own checks and state, on a tiny random model: the context given to the model itself,
the KV cache's record of the ids it holds, and a long prefill that stops between chunks."""
import numpy as np
import pytest

from llmgpu.bench import random_checkpoint
from llmgpu.generate import cached_prefix
from llmgpu.model import Model

from .conftest import get_device


@pytest.fixture(scope="module")
def ckpt():
    return random_checkpoint("tiny")


@pytest.mark.parametrize("bad", [0, -4, 1.5, "512", True])
def test_model_refuses_a_bad_context(ckpt, bad):
    with pytest.raises(ValueError, match="whole number of tokens >= 1"):
        Model(ckpt, dev=get_device(), max_seq=bad)


def test_the_cache_knows_its_ids(ckpt):
    m = Model(ckpt, dev=get_device(), max_seq=32, chunk=4)
    m.prefill([5, 6, 7, 8, 9, 10])
    m.decode(11)
    assert m.pos == 7 and m.cached_ids == [5, 6, 7, 8, 9, 10, 11]
    assert cached_prefix(m, [5, 6, 7, 1]) == 3
    m.truncate(2)
    assert m.cached_ids == [5, 6]
    with pytest.raises(ValueError, match="cannot truncate"):
        m.truncate(3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.decode(10**6)
    assert m.cached_ids == [5, 6], "a refused step must not change the record"
    m.logits([1, 2, 3])
    assert m.cached_ids == [1, 2, 3]


def test_ctrl_c_lands_between_prefill_chunks(ckpt, monkeypatch):
    """A long prefill waits for the GPU between chunks, so KeyboardInterrupt (raised here by the
    wait itself) stops it after whole chunks, and the cache records exactly those."""
    m = Model(ckpt, dev=get_device(), max_seq=64, chunk=4)
    ids = list(range(1, 15))
    waits = []

    def sync():
        waits.append(m.pos)
        if len(waits) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(m.dev, "sync", sync)
    with pytest.raises(KeyboardInterrupt):
        m.prefill(ids)
    assert waits == [4, 8] and m.cached_ids == ids[:8]
    monkeypatch.undo()
    rest = m.prefill(ids[8:])  # carries on from there: same logits as in one go
    whole = Model(ckpt, dev=get_device(), max_seq=64, chunk=4).prefill(ids)
    np.testing.assert_allclose(rest, whole, rtol=0, atol=1e-4 * np.abs(whole).max())
