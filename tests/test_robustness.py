"""Issue 11: bad input and faults. Every case gives one actionable line (or the documented behaviour),
never deletes a user's file, leaves nothing half-written, and a model is safe to share between threads.

README.md "When things go wrong" lists these cases; the comment on each test says which bug it catches.
"""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import llmgpu
from llmgpu import LLM, Chat, cli, loader
from llmgpu.api import model_lock
from llmgpu.loader import (DamagedCheckpointError, load_cached_or_quantize, load_checkpoint, quantize_checkpoint,
                           read_safetensors, save_q4_checkpoint, sweep_temp_dirs)
from llmgpu.sample import NonFiniteLogitsError
from tests.fake_model import FakeModel, install
from tests.test_cli import tiny_hf_dir

ROOT = Path(__file__).parents[1]


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, match: str) -> None:
    assert err.count("\n") == 1 and err.startswith("llmgpu: error: ") and match in err, err


# ==== 1. threads =================================================================================

class WatchedModel(FakeModel):
    """A FakeModel that counts calls made while another call is inside it, and sleeps in each call
    (releasing the GIL) so that unsynchronised threads do interleave."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.inside, self.overlaps, self._guard = 0, 0, threading.Lock()

    def _watch(method):
        def wrapped(self, *a):
            with self._guard:
                self.overlaps += self.inside > 0
                self.inside += 1
            try:
                time.sleep(0.0005)
                return method(self, *a)
            finally:
                with self._guard:
                    self.inside -= 1
        return wrapped

    reset, truncate = _watch(FakeModel.reset), _watch(FakeModel.truncate)
    prefill, decode, logits = _watch(FakeModel.prefill), _watch(FakeModel.decode), _watch(FakeModel.logits)


JOBS = [("Tell me a story", 11), ("Hello world!", 12), ("The quick brown fox", 13), ("café naïve", 14)]
TURNS = ["Hello", "How are you today?", "Once upon a time", "def f(x):"]


def generate_jobs(llm):
    return [llm.generate(p, seed=s, max_tokens=12, top_k=0, min_p=0) for p, s in JOBS]


def chat_turns(model):
    chat = Chat(model, system="Be brief.", seed=5, max_tokens=10, top_k=0, min_p=0)
    return [chat.send(t) for t in TURNS]


def test_two_threads_times_four_generations_share_one_model():
    # catches: no lock around the model (calls overlap; one generation's cache is reset under another)
    alone_gen, alone_chat = generate_jobs(LLM(FakeModel(max_seq=512))), chat_turns(FakeModel(max_seq=512))
    m = WatchedModel(max_seq=512)
    llm, barrier, results, errors = LLM(m), threading.Barrier(2), {}, []

    def worker(name, fn):
        try:
            barrier.wait()
            results[name] = fn()
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=worker, args=("gen", lambda: generate_jobs(llm))),
               threading.Thread(target=worker, args=("chat", lambda: chat_turns(m)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and m.overlaps == 0
    assert results == {"gen": alone_gen, "chat": alone_chat}
    assert len(m.prefills) == 8 and not model_lock(m).locked()


def test_an_open_stream_holds_the_model():
    # catches: a stream that drops the lock between pieces, or a lock that deadlocks its own thread
    m = FakeModel(max_seq=512)
    llm = LLM(m)
    alone = [LLM(FakeModel(max_seq=512)).generate(p, seed=1, max_tokens=20) for p in ("a story", "b")]
    s = llm.stream("a story", seed=1, max_tokens=20)
    assert not model_lock(m).locked()  # nothing taken until the first piece
    first = next(s)
    assert model_lock(m).locked()
    with pytest.raises(RuntimeError, match="already generating on this model.*close"):
        llm.generate("b", seed=1, max_tokens=20)  # same thread: an error, not a deadlock
    out = []
    t = threading.Thread(target=lambda: out.append(llm.generate("b", seed=1, max_tokens=20)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and out == []  # waits for the stream (it cannot finish while the lock is held)
    assert first + "".join(s) == alone[0]
    t.join(30)
    assert out == [alone[1]] and not model_lock(m).locked()
    s2 = llm.stream("a story", seed=1, max_tokens=20)
    next(s2)
    s2.close()  # closing early frees the model too
    assert not model_lock(m).locked() and llm.generate("b", seed=1, max_tokens=20) == alone[1]


def test_the_lock_is_released_when_generation_fails():
    # catches: an error inside the generation leaving the model locked for ever
    m = FakeModel()
    m._next = lambda: np.full(m.config.vocab_size, np.nan, np.float32)
    llm = LLM(m)
    with pytest.raises(NonFiniteLogitsError):
        llm.generate("x")
    with pytest.raises(NonFiniteLogitsError):
        Chat(m).send("x")
    assert not model_lock(m).locked()


# ==== 6/7. API arguments ===========================================================================

@pytest.mark.parametrize("kw,exc,match", [
    (dict(max_seq=0), ValueError, "max_seq must be an integer >= 1, got 0"),
    (dict(max_seq=-4), ValueError, "max_seq must be an integer >= 1"),
    (dict(max_seq="512"), TypeError, "max_seq must be an integer"),
    (dict(max_seq=1.5), TypeError, "max_seq must be an integer"),
    (dict(group_size=48), ValueError, "group_size must be one of"),
    (dict(model=3), TypeError, "model must be a path"),
    (dict(adapter=1), TypeError, "adapter must be a str"),
])
def test_load_checks_arguments_before_any_work(monkeypatch, kw, exc, match):
    # catches: max_seq=0 reaching Model (ZeroDivisionError) or -4 loading and failing on every prompt
    cls = install(monkeypatch)
    with pytest.raises(exc, match=match):
        llmgpu.load(**kw)
    assert cls.loads == []


def test_load_warns_when_max_seq_is_lowered_to_the_model_context(monkeypatch):
    # catches: a silently clamped context
    cls = install(monkeypatch)
    monkeypatch.setattr(cls, "__init__", lambda self, ck, max_seq, flat=False: FakeModel.__init__(
        self, ck, max_seq=min(max_seq, 300)))
    with pytest.warns(UserWarning, match="max_seq 1000 is more than this model's context of 300"):
        llm = llmgpu.load(max_seq=1000)
    assert llm.model.max_seq == 300


@pytest.mark.parametrize("call,exc,match", [
    (lambda llm: llm.logits([1.7]), TypeError, r"token ids must be integers, got 1.7 \(float\)"),
    (lambda llm: llm.logits([True]), TypeError, "token ids must be integers"),
    (lambda llm: llm.logits("abc"), TypeError, "token_ids must be a sequence"),
    (lambda llm: llm.generate("x", stop=5), TypeError, "stop must be a str, a list of str"),
    (lambda llm: llm.generate("x", stop=["a", 5]), TypeError, "stop must be"),
    (lambda llm: llm.generate("x", max_tokens="3"), TypeError, "max_tokens must be an integer >= 1, got '3'"),
    (lambda llm: llm.generate("x", max_tokens=2.0), TypeError, "max_tokens must be an integer"),
    (lambda llm: llm.generate("x", chat_template="no"), TypeError, "chat_template must be True or False"),
    (lambda llm: llm.generate("x", system=3), TypeError, "system must be a str"),
    (lambda llm: llm.generate([{"role": "user"}]), ValueError, r"message 0 \(user\) needs a 'content' str"),
    (lambda llm: llm.generate([{"content": "hi"}]), ValueError, "message 0 must be a dict with a 'role'"),
    (lambda llm: llm.generate([]), ValueError, "non-empty list"),
    (lambda llm: llm.generate("hi \udcff there"), ValueError, "prompt is not valid Unicode.*errors='replace'"),
    (lambda llm: llm.chat().send("hi \udcff"), ValueError, "chat message is not valid Unicode"),
    (lambda llm: llm.chat(max_tokens="3"), TypeError, "max_tokens must be an integer"),
    (lambda llm: llm.chat().send("x", stop=5), TypeError, "stop must be"),
])
def test_api_arguments_fail_at_the_call_with_their_name(call, exc, match):
    # catches: coercion (logits([1.7]) read token 1), and errors from deep inside (jinja2, tokenizers)
    m = FakeModel()
    with pytest.raises(exc, match=match):
        call(LLM(m))
    assert m.prefills == [] and m.ids == []


def test_logits_takes_numpy_integers():
    m = FakeModel()
    np.testing.assert_array_equal(LLM(m).logits(np.array([3, 4, 5])), m.logits([3, 4, 5]))
