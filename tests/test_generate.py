"""Generation loop on the fake model: token stream, EOS, stop strings, UTF-8 pieces, context limits, stats."""
import numpy as np
import pytest
from tests.fake_model import EOS, FakeModel

from llmgpu.generate import (GenerationStats, cached_prefix, generate_step, partial_stop, stop_index,
                             stream_text)
from llmgpu.sample import make_sampler

GREEDY = make_sampler(temperature=0)


def random_prompt(rng, model, n=None):
    n = int(rng.integers(1, 30)) if n is None else n
    return rng.integers(3, model.config.vocab_size, n).tolist()  # no special tokens


def test_generate_step_matches_full_recomputation(rng):
    m = FakeModel(seed=int(rng.integers(1000)))
    prompt = random_prompt(rng, m)
    n = int(rng.integers(1, 40))
    stats = GenerationStats()
    got = list(generate_step(m, prompt, GREEDY, n, stats=stats))
    assert len(got) == n
    assert m.prefills == [len(prompt)] and m.decodes == n - 1  # prefill once; the last token is not decoded
    ref = FakeModel(seed=0)
    ref.bigram, ref.context = m.bigram, m.context
    for i, t in enumerate(got):
        assert t == int(np.argmax(ref.logits(prompt + got[:i])[-1]))
    assert (stats.prompt_tokens, stats.new_tokens, stats.decode_calls, stats.finish_reason) == \
           (len(prompt), n, n - 1, "length")
    assert stats.prefill_s > 0 and (stats.decode_s > 0 or n == 1)


def test_sampled_generation_is_reproducible_with_a_seed(rng):
    m = FakeModel(seed=int(rng.integers(1000)))
    prompt = random_prompt(rng, m)
    seed = int(rng.integers(2**32))
    a = list(generate_step(m, prompt, make_sampler(temperature=1.0, top_k=0, min_p=0, seed=seed), 30))
    b = list(generate_step(m, prompt, make_sampler(temperature=1.0, top_k=0, min_p=0, seed=seed), 30))
    c = list(generate_step(m, prompt, make_sampler(temperature=1.0, top_k=0, min_p=0, seed=seed + 1), 30))
    assert a == b
    assert a != c


def test_repetition_history_includes_the_prompt(rng):
    m = FakeModel(seed=int(rng.integers(1000)))
    prompt = random_prompt(rng, m, 5)
    first = next(generate_step(m, prompt, GREEDY, 1))
    # penalize hard enough that a token already in the prompt can never win
    s = make_sampler(temperature=0, repetition_penalty=1e6, repeat_last_n=None)
    out = list(generate_step(m, prompt + [first], s, 10))
    assert not set(out) & set(prompt + [first])


def test_stream_text_stops_at_eos_and_hides_it():
    m = FakeModel()
    m.say("Hello world! How are you today?")
    stats = GenerationStats()
    ids = []
    pieces = list(stream_text(m, [5, 6, 7], GREEDY, 100, stats=stats, token_ids=ids))
    assert "".join(pieces) == "Hello world! How are you today?"
    assert ids[-1] == EOS and stats.finish_reason == "eos" and stats.new_tokens == len(ids)
    assert m.decodes == len(ids) - 1


def test_utf8_pieces_are_whole_characters():
    m = FakeModel()
    text = "日本語 🙂 café ok ✓"
    ids = m.ckpt.tokenizer.encode(text, add_special_tokens=False).ids
    pieces_of = [m.ckpt.tokenizer.decode([i]) for i in ids]
    assert sum("\ufffd" in p for p in pieces_of) >= 6  # the test needs tokens that split characters
    m.say(text)
    pieces = list(stream_text(m, [5], GREEDY, 100))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p and p for p in pieces)
    for p in pieces:
        p.encode("utf-8")  # no lone surrogates either


def test_max_tokens_cut_inside_a_character_still_returns_text():
    m = FakeModel()
    m.say("🙂🙂")  # 4 byte tokens each
    out = "".join(stream_text(m, [5], GREEDY, 6))
    assert out.startswith("🙂") and len(out) == 2 and out[1] == "\ufffd"


@pytest.mark.parametrize("text,stops,expect,reason", [
    ("Hello world! How are you today?", ["How"], "Hello world! ", "stop"),
    ("Hello world! How are you today?", ["you", "world"], "Hello ", "stop"),  # the earliest wins
    ("Hello world! How are you today?", ["Hello"], "", "stop"),
    ("Hello world! How are you today?", ["today?"], "Hello world! How are you ", "stop"),
    ("Hello world! How are you today?", ["wor!"], "Hello world! How are you today?", "eos"),  # a false start
    ("Hello world! How are you today?", ["?x"], "Hello world! How are you today?", "eos"),  # held back, then out
    ("Hello world! How are you today?", [""], "Hello world! How are you today?", "eos"),
    ("日本語 🙂 ok", ["🙂"], "日本語 ", "stop"),
])
def test_stop_strings(text, stops, expect, reason):
    m = FakeModel()
    m.say(text)
    stats = GenerationStats()
    pieces = list(stream_text(m, [5], GREEDY, 100, stop=stops, stats=stats))
    assert "".join(pieces) == expect
    assert stats.finish_reason == reason
    if reason == "stop":  # generation ended at the stop string, not at EOS
        assert stats.new_tokens < len(m.script)


def test_stop_string_split_over_tokens_is_never_emitted(rng):
    m = FakeModel()
    words = ["Hello", " world", " How", " are", " you", " today", " the", " quick", " fox", "!", "?"]
    text = "".join(rng.choice(words, 30))
    ids = m.ckpt.tokenizer.encode(text, add_special_tokens=False).ids
    # a stop string that starts inside one token and ends inside a later one
    cuts = np.cumsum([len(m.ckpt.tokenizer.decode([i])) for i in ids])
    k = int(rng.integers(3, len(ids) - 3))
    a, b = cuts[k - 1] - 2, cuts[k + 1] - 1
    stop = text[a:b]
    m.say(text)
    emitted = ""
    for piece in stream_text(m, [5], GREEDY, 200, stop=[stop]):
        emitted += piece
        assert stop not in emitted
    assert emitted == text[:text.find(stop)]


def test_helpers():
    assert stop_index("abcabc", ["ca", "bc"]) == 1
    assert stop_index("abc", ["x"]) == -1
    assert partial_stop("hello wo", ["world", "o w"]) == 2
    assert partial_stop("hello w", ["hello wow"]) == 7
    assert partial_stop("abc", ["x"]) == 0


def test_prompt_longer_than_context_fails_before_any_work(rng):
    m = FakeModel(max_seq=16)
    with pytest.raises(ValueError, match="17 tokens, more than the context of 16"):
        next(generate_step(m, random_prompt(rng, m, 17), GREEDY, 1))
    assert m.prefills == [] and m.pos == 0
    with pytest.raises(ValueError, match="empty"):
        next(generate_step(m, [], GREEDY, 1))
    with pytest.raises(ValueError, match="max_tokens"):
        next(generate_step(m, [5], GREEDY, 0))


def test_generation_stops_when_the_context_is_full(rng):
    ctx = int(rng.integers(8, 40))
    m = FakeModel(max_seq=ctx)
    L = int(rng.integers(1, ctx + 1))
    stats = GenerationStats()
    m.script = [7] * 1000
    out = list(generate_step(m, random_prompt(rng, m, L), GREEDY, 1000, stats=stats))
    assert len(out) == ctx - L + 1  # the last token needs no cache slot
    assert stats.finish_reason == "context" and m.pos == ctx


def test_cache_reuse_prefills_only_the_new_part(rng):
    m = FakeModel(seed=int(rng.integers(1000)))
    prompt = random_prompt(rng, m, 20)
    first = list(generate_step(m, prompt, GREEDY, 5))
    held = prompt + first[:-1]
    assert m.pos == len(held) and cached_prefix(m, held + [3, 4]) == len(held)
    follow = held + random_prompt(rng, m, 7)
    k = int(rng.integers(0, len(held) + 1))  # the first difference from what is cached (none if len(held))
    if k < len(held):
        follow[k] = 3 if follow[k] != 3 else 4
    n = cached_prefix(m, follow)
    assert n == min(k, len(held))
    m.prefills.clear()
    again = list(generate_step(m, follow, GREEDY, 5, cached=n))
    assert m.prefills == [len(follow) - n]
    fresh = FakeModel()
    fresh.bigram, fresh.context = m.bigram, m.context
    assert again == list(generate_step(fresh, follow, GREEDY, 5))
    m.reset()  # used directly: the record no longer matches the cache
    assert cached_prefix(m, follow) == 0


def test_early_close_keeps_stats_and_cache_record(rng):
    m = FakeModel(seed=int(rng.integers(1000)))
    prompt = random_prompt(rng, m)
    stats = GenerationStats()
    gen = stream_text(m, prompt, make_sampler(seed=1), 50, stats=stats)
    next(gen)
    gen.close()
    assert stats.new_tokens >= 1 and stats.finish_reason == ""
    assert cached_prefix(m, prompt) == len(prompt)


def test_summary_line():
    s = GenerationStats(prompt_tokens=30, cached_tokens=10, prefill_s=0.5, new_tokens=11, decode_s=2.0,
                        decode_calls=10, finish_reason="eos")
    line = s.summary("GPU X")
    assert "\n" not in line
    assert line == "GPU X | prompt 30 tokens (10 cached), 40.0 t/s | generated 11 tokens, 5.0 t/s"


def test_a_fully_cached_prompt_still_prefills_its_last_token(rng):
    """Asking again with the same prompt: every prompt id is cached, but the last one is prefilled
    again (its logits start generation), and the answer is the same."""
    m = FakeModel(seed=int(rng.integers(1000)))
    prompt = random_prompt(rng, m, 12)
    first = list(generate_step(m, prompt, GREEDY, 6))
    m.prefills.clear()
    again = list(generate_step(m, prompt, GREEDY, 6, cached=len(prompt)))
    assert m.prefills == [1] and again == first
    m.prefills.clear()
    assert list(generate_step(m, prompt, GREEDY, 6, cached=10**6)) == first and m.prefills == [1]
