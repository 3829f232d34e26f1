"""Generation with the sampler on the GPU (llmgpu/loop.py): the token stays on the GPU, several
steps per command buffer, command buffers queued ahead. Checked against the CPU-sampling loop on
the same model: greedy tokens identical (both read the same logits; the GPU sampler's tie rule is
the CPU's, tests/test_gpu_sample.py), the cache left holding exactly the accepted tokens after a
stop in the middle of a queued batch, the context limit, a repetition penalty, both decode paths,
and the persistent kernel's fallback in the middle of a batch."""
import numpy as np
import pytest

from llmgpu.generate import GenerationStats, generate_step, stream_text
from llmgpu.loop import TokenLoop
from llmgpu.model import Model
from llmgpu.sample import make_sampler

from .conftest import get_device
from .test_model import BASE, make_checkpoint


def run(m, prompt, sampler, n, *, gpu, cached=0, take=None, **queue):
    """Tokens of generate_step with the sampler on the GPU or the CPU; `take` stops early;
    `queue`: the TokenLoop's per_submit / ahead."""
    m.gpu_sampling, m.loop_queue = gpu, queue
    st = GenerationStats()
    out = []
    for t in generate_step(m, prompt, sampler, n, cached=cached, stats=st):
        out.append(t)
        if take is not None and len(out) == take:
            break
    return out, st


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("loop"), "llama-tied", np.random.default_rng(7))[0]


@pytest.mark.parametrize("schedule", ["ops", "phased"])
@pytest.mark.parametrize("queue", [dict(per_submit=1, ahead=1), dict(per_submit=3, ahead=2)], ids=["1x1", "3x2"])
def test_greedy_tokens_and_cache_match_the_cpu_loop(ckpt, rng, schedule, queue):
    m = Model(ckpt, dev=get_device(), max_seq=64, decode=schedule)
    prompt = [int(i) for i in rng.integers(3, BASE["vocab_size"], 6)]
    greedy = make_sampler(temperature=0)
    want, _ = run(m, prompt, greedy, 11, gpu=False)
    want_ids = m.cached_ids
    got, st = run(m, prompt, greedy, 11, gpu=True, **queue)
    assert got == want
    assert m.cached_ids == want_ids == prompt + want[:-1]  # the last token is never decoded
    assert (st.new_tokens, st.decode_calls, st.finish_reason) == (11, 10, "length")
    # stop after 5 tokens: a 3x2 queue has run steps past it; the cache keeps prompt + 4
    got, _ = run(m, prompt, greedy, 11, gpu=True, take=5, **queue)
    assert got == want[:5] and m.cached_ids == prompt + want[:4]
    # continue from the cache (what a chat's next turn does): as if nothing speculative had run
    more = prompt + want[:5]
    a, _ = run(m, more, greedy, 6, gpu=True, cached=len(more), **queue)
    ref = Model(ckpt, dev=get_device(), max_seq=64, decode=schedule)
    run(ref, prompt, greedy, 11, gpu=False, take=5)
    b, _ = run(ref, more, greedy, 6, gpu=False, cached=len(more))
    assert a == b


def test_context_limit_and_repetition_penalty(ckpt, rng):
    m = Model(ckpt, dev=get_device(), max_seq=24)
    prompt = [int(i) for i in rng.integers(3, BASE["vocab_size"], 20)]
    s = make_sampler(temperature=0, repetition_penalty=3.0, repeat_last_n=8)
    want, st_cpu = run(m, prompt, s, 50, gpu=False)
    got, st = run(m, prompt, s, 50, gpu=True, per_submit=2, ahead=2)
    assert len(want) == 24 - 20 + 1 and st_cpu.finish_reason == "context"
    assert got == want and st.finish_reason == "context" and m.pos == 24


def test_stop_strings_and_text_match_the_cpu_loop(ckpt, rng):
    m = Model(ckpt, dev=get_device(), max_seq=64)
    prompt = [int(i) for i in rng.integers(3, BASE["vocab_size"], 5)]
    greedy = make_sampler(temperature=0)
    m.gpu_sampling = False
    text = "".join(stream_text(m, prompt, greedy, 16))
    stop = text[len(text) // 2:len(text) // 2 + 2] or None
    for gpu in (False, True):
        m.gpu_sampling = gpu
        st = GenerationStats()
        out = "".join(stream_text(m, prompt, greedy, 16, stop=stop, stats=st))
        if gpu:
            assert out == want_text and st.finish_reason == want_reason
        want_text, want_reason = out, st.finish_reason


def test_seeded_sampling_repeats_and_differs_by_seed(ckpt, rng):
    m = Model(ckpt, dev=get_device(), max_seq=64)
    prompt = [int(i) for i in rng.integers(3, BASE["vocab_size"], 4)]
    draws = [run(m, prompt, make_sampler(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=s), 12, gpu=True)[0]
             for s in (5, 5, 6)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    assert all(0 <= t < BASE["vocab_size"] for t in draws[2])


def test_persistent_fallback_in_the_middle_of_a_batch(ckpt, rng, capfd):
    """The persistent kernel's barrier gives up (forced: no spin, more workgroups than run at once
    on lavapipe): the loop drops that step and the queued ones, the model goes phased, and the
    tokens are still the CPU loop's."""
    dev = get_device()
    prompt = [int(i) for i in rng.integers(3, BASE["vocab_size"], 5)]
    greedy = make_sampler(temperature=0)
    want, _ = run(Model(ckpt, dev=dev, max_seq=64, decode="phased"), prompt, greedy, 9, gpu=False)
    m = Model(ckpt, dev=dev, max_seq=64, decode="phased")
    m.decode_schedule, m.kernel.workgroups, m.kernel.spin = "persistent", 8 if dev.is_cpu else 4096, 0
    got, _ = run(m, prompt, greedy, 9, gpu=True, per_submit=3, ahead=2)
    assert m.decode_schedule == "phased"
    assert capfd.readouterr().err.count("grid barrier timed out") == 1
    assert got == want and m.cached_ids == prompt + want[:-1]


def test_bad_queue_settings_are_refused(ckpt):
    m = Model(ckpt, dev=get_device(), max_seq=16)
    with pytest.raises(ValueError, match="at least 1"):
        TokenLoop(m, make_sampler(temperature=0), per_submit=0)
    with pytest.raises(ValueError, match="sampling 'tpu'"):
        Model(ckpt, dev=get_device(), max_seq=16, sampling="tpu")
