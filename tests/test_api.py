"""Python API and Chat on the fake model: prompt wrapping, streaming, logits, KV-cache reuse across turns."""
import numpy as np
import pytest

import llmgpu
from llmgpu import LLM, Chat
from llmgpu.tokenizer import encode_prompt, render_chat
from tests.fake_model import FakeModel, install, make_checkpoint


def rendered_ids(ckpt, messages):
    text = render_chat(ckpt.chat_template, messages, add_generation_prompt=True, bos_token=ckpt.bos_token,
                       eos_token=ckpt.eos_token)
    return encode_prompt(ckpt.tokenizer, text, add_bos=ckpt.add_bos, bos_token_id=ckpt.bos_token_id)


def test_exports():
    assert set(llmgpu.__all__) >= {"load", "LLM", "Chat", "__version__"}
    assert isinstance(llmgpu.__version__, str) and llmgpu.__version__


def test_load_passes_options(monkeypatch):
    cls = install(monkeypatch)
    llm = llmgpu.load(max_seq=100, group_size=64, adapter="lavapipe", progress=False, sampling="cpu")
    assert isinstance(llm, LLM) and isinstance(llm.model, cls) and llm.model.max_seq == 100
    assert cls.loads == [dict(source=None, group_size=64, max_seq=100, adapter="lavapipe", progress=False,
                              decode="auto", sampling="cpu")]
    with pytest.raises(ValueError, match="sampling must be one of auto, gpu, cpu"):
        llmgpu.load(sampling="tpu")
    with pytest.raises(FileNotFoundError):
        llmgpu.load("no/such-model")


def test_load_passes_quantization_options(monkeypatch, tmp_path):
    """asymmetric / calibrate / requantize reach Model.load (only when asked for), and bad values are
    refused at the call. Catches an option accepted by load() but dropped on the way to the quantizer."""
    cls = install(monkeypatch)
    (tmp_path / "cal.txt").write_text("calibration text")
    llmgpu.load(asymmetric=True, calibrate=tmp_path / "cal.txt", requantize=True, progress=False)
    llmgpu.load(calibrate=True, progress=False)
    llmgpu.load(progress=False)
    assert [{k: v for k, v in d.items() if k in ("asymmetric", "calibrate", "requantize")} for d in cls.loads] == [
        dict(asymmetric=True, calibrate=str(tmp_path / "cal.txt"), requantize=True), dict(calibrate=True), {}]
    with pytest.raises(TypeError, match="asymmetric must be True or False"):
        llmgpu.load(asymmetric="yes")
    with pytest.raises(TypeError, match="calibrate must be a path, True or None"):
        llmgpu.load(calibrate=3)
    with pytest.raises(FileNotFoundError, match="calibrate=.*no such file"):
        llmgpu.load(calibrate=tmp_path / "missing.txt")
    assert len(cls.loads) == 3  # refused before any loading


def test_generate_wraps_the_prompt_in_the_chat_template():
    m = FakeModel()
    m.say("Hi there!")
    llm = LLM(m)
    assert llm.generate("Hello", temperature=0) == "Hi there!"
    assert m.ids[:len(rendered_ids(m.ckpt, [{"role": "user", "content": "Hello"}]))] == \
           rendered_ids(m.ckpt, [{"role": "user", "content": "Hello"}])
    assert m.prefills[-1] == len(rendered_ids(m.ckpt, [{"role": "user", "content": "Hello"}]))
    llm.generate("Hello", system="Be brief.", temperature=0)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert m.prefills[-1] == len(rendered_ids(m.ckpt, msgs))
    assert llm.encode("Hello", system="Be brief.") == rendered_ids(m.ckpt, msgs)
    assert llm.encode(msgs) == rendered_ids(m.ckpt, msgs)
    raw = m.ckpt.tokenizer.encode("Hello", add_special_tokens=False).ids
    assert llm.encode("Hello", chat_template=False) == raw
    llm.generate("Hello", chat_template=False, temperature=0)
    assert m.prefills[-1] == len(raw)


def test_no_template_uses_raw_text_and_add_bos():
    m = FakeModel(make_checkpoint(chat_template=None, add_bos=True))
    llm = LLM(m)
    raw = m.ckpt.tokenizer.encode("Hello", add_special_tokens=False).ids
    assert llm.encode("Hello") == [m.ckpt.bos_token_id] + raw
    with pytest.raises(ValueError, match="system prompt needs the chat template"):
        llm.generate("Hello", system="x")
    with pytest.raises(ValueError, match="chat_template=False"):
        LLM(FakeModel()).generate("Hello", system="x", chat_template=False)


def test_stream_equals_generate_and_stats():
    m = FakeModel()
    m.say("日本 and 🙂, ok")
    llm = LLM(m)
    pieces = list(llm.stream("q", temperature=0))
    assert len(pieces) > 1 and "".join(pieces) == llm.generate("q", temperature=0) == "日本 and 🙂, ok"
    st = llm.last_stats
    assert st.finish_reason == "eos" and st.prompt_tokens == len(llm.encode("q")) and st.cached_tokens == 0
    assert llm.generate("q", temperature=0, stop="and") == "日本 "
    assert llm.generate("q", temperature=0, max_tokens=3) == "日"


def test_generate_is_reproducible(rng):
    m = FakeModel(seed=int(rng.integers(1000)))
    llm = LLM(m)
    seed = int(rng.integers(2**32))
    a = llm.generate("Tell me a story", max_tokens=20, seed=seed, top_k=0, min_p=0)
    b = llm.generate("Tell me a story", max_tokens=20, seed=seed, top_k=0, min_p=0)
    assert a == b and m.prefills[-1] == m.prefills[0]  # every call starts from an empty cache


def test_bad_arguments_fail_before_generation():
    m = FakeModel()
    llm = LLM(m)
    for kw in (dict(temperature=-1), dict(top_p=0), dict(max_tokens=0)):
        with pytest.raises(ValueError):
            llm.stream("x", **kw)  # not lazily at the first piece
    with pytest.raises(TypeError):
        llm.generate(42)
    assert m.prefills == []


def test_logits(rng):
    m = FakeModel(seed=int(rng.integers(1000)))
    llm = LLM(m)
    ids = rng.integers(0, m.config.vocab_size, int(rng.integers(1, 50))).tolist()
    x = llm.logits(ids)
    assert x.shape == (len(ids), m.config.vocab_size) and x.dtype == np.float32
    np.testing.assert_array_equal(x, m.logits(ids))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.logits([m.config.vocab_size])
    with pytest.raises(ValueError, match="empty"):
        llm.logits([])
    with pytest.raises(ValueError, match="more than the context"):
        llm.logits([5] * (m.max_seq + 1))
    assert llm.tokenizer is m.ckpt.tokenizer


# ==== Chat =======================================================================================

def fresh_answer(model, messages, max_tokens):
    """What a brand-new model instance with the same weights answers to ``messages`` (greedy)."""
    f = FakeModel(model.ckpt, max_seq=model.max_seq)
    f.bigram, f.context = model.bigram, model.context
    return LLM(f).generate(messages, temperature=0, max_tokens=max_tokens)


def test_chat_reuses_the_cache_and_matches_a_fresh_model(rng):
    m = FakeModel(seed=int(rng.integers(1000)), max_seq=1024)
    chat = Chat(m, system="You are terse.", temperature=0, max_tokens=int(rng.integers(5, 20)))
    a1 = chat.send("Hello world!")
    assert chat.messages[-1] == {"role": "assistant", "content": a1}
    n1 = m.prefills[-1]
    assert n1 == len(rendered_ids(m.ckpt, chat.messages[:2]))
    for turn in ("How are you today?", "Once upon a time", "the lazy dog"):
        before, held = list(chat.messages), list(m.ids)
        a = chat.send(turn)
        full = rendered_ids(m.ckpt, before + [{"role": "user", "content": turn}])
        # the cache was kept up to the first difference from the new conversation, the rest prefilled
        common = next(i for i, (x, y) in enumerate(zip(held + [-1], full)) if x != y)
        assert chat.last_stats.cached_tokens == common >= n1
        assert m.prefills[-1] == len(full) - chat.last_stats.cached_tokens
        assert a == fresh_answer(m, before + [{"role": "user", "content": turn}], chat.max_tokens)
    assert [x["role"] for x in chat.messages] == ["system"] + ["user", "assistant"] * 4


def test_chat_with_scripted_answers_prefills_only_the_new_message():
    m = FakeModel(max_seq=1024)
    m.say("Fine, thanks.")
    chat = Chat(m, temperature=0)
    assert chat.send("Hello") == "Fine, thanks."
    assert chat.send("How are you?") == "Fine, thanks."
    full = rendered_ids(m.ckpt, chat.messages[:-1])
    new = rendered_ids(m.ckpt, [{"role": "user", "content": "How are you?"}])
    # the cache holds turn 1 up to the sampled <|im_end|> (not decoded); the template adds "\n" after it
    assert m.prefills[-1] == len(new) + 2
    assert chat.last_stats.cached_tokens == len(full) - len(new) - 2


def test_chat_reset_and_interleaved_generate(rng):
    m = FakeModel(seed=int(rng.integers(1000)), max_seq=1024)
    chat = Chat(m, temperature=0, max_tokens=8)
    chat.send("Hello")
    LLM(m).generate("something else", temperature=0, max_tokens=4)  # replaces the cache
    before = list(chat.messages)
    a = chat.send("again")
    other = rendered_ids(m.ckpt, [{"role": "user", "content": "something else"}])
    mine = rendered_ids(m.ckpt, before + [{"role": "user", "content": "again"}])
    common = next(i for i, (x, y) in enumerate(zip(other, mine)) if x != y)
    assert 0 < chat.last_stats.cached_tokens == common
    assert a == fresh_answer(m, before + [{"role": "user", "content": "again"}], 8)
    chat.reset()
    assert chat.messages == []
    b = chat.send("Hello")
    # the cache still holds the first turn's prompt: reused, and the answer is the fresh one
    hello = rendered_ids(m.ckpt, [{"role": "user", "content": "Hello"}])
    assert chat.last_stats.cached_tokens == len(hello) - 1 and len(chat.messages) == 2
    assert b == fresh_answer(m, [{"role": "user", "content": "Hello"}], 8)


def test_chat_closed_early_keeps_partial_answer():
    m = FakeModel()
    m.say("one two three four")
    chat = Chat(m, temperature=0)
    s = chat.stream("count")
    first = next(s)
    s.close()
    assert chat.messages == [{"role": "user", "content": "count"}, {"role": "assistant", "content": first}]


def test_chat_seed_reproducible_and_per_turn_overrides(rng):
    seed = int(rng.integers(2**32))
    runs = []
    for _ in range(2):
        m = FakeModel(max_seq=1024)
        chat = Chat(m, seed=seed, max_tokens=10)
        runs.append([chat.send("a"), chat.send("b", temperature=1.5), chat.send("c", max_tokens=3)])
    assert runs[0] == runs[1]
    m = FakeModel()
    m.say("Hello world! How")
    assert Chat(m, temperature=0).send("q", max_tokens=2) == "Hello world"
    with pytest.raises(ValueError, match="temperature"):
        Chat(m, temperature=-2)
    with pytest.raises(ValueError, match="temperature"):
        Chat(m).send("q", temperature=-2)


def test_chat_too_long_for_the_context_says_reset():
    m = FakeModel(max_seq=40)
    m.say("a b c")
    chat = Chat(m, temperature=0)
    chat.send("hi")
    with pytest.raises(ValueError, match="reset"):
        for _ in range(10):
            chat.send("Once upon a time there was a little model that answered questions.")


def test_llm_chat_uses_the_template_fallback_when_missing():
    m = FakeModel(make_checkpoint(chat_template=None))
    m.say("ok")
    chat = LLM(m).chat(system="s", temperature=0)
    assert chat.send("hi") == "ok"
    # the fallback (ChatML) renders these turns as the fake's own ChatML template does
    assert m.prefills[0] == len(rendered_ids(make_checkpoint(), [{"role": "system", "content": "s"},
                                                                  {"role": "user", "content": "hi"}]))


# ==== logprobs ===================================================================================

def test_logprobs_match_logits_of_the_same_sequence(rng):
    from llmgpu.logprobs import log_softmax
    m = FakeModel(seed=int(rng.integers(1000)))
    llm = LLM(m)
    k = int(rng.integers(1, 6))
    # sampled (not greedy) with filters and a temperature: logprobs must still be the model's own
    out = llm.generate("Tell me a story", max_tokens=15, temperature=0.7, top_k=5, seed=int(rng.integers(2**32)),
                       logprobs=k)
    assert isinstance(out, str) and out.finish_reason in ("eos", "length")
    ids = [e.token_id for e in out.logprobs]
    assert m.ckpt.tokenizer.decode(ids) == out and 2 not in ids
    prompt = llm.encode("Tell me a story")
    lp = log_softmax(llm.logits(prompt + ids))[len(prompt) - 1:]
    for i, e in enumerate(out.logprobs):
        assert e.logprob == pytest.approx(lp[i, e.token_id], abs=1e-9)
        assert e.token == m.ckpt.tokenizer.decode([e.token_id], skip_special_tokens=False)
        assert len(e.top) == k and [t.token_id for t in e.top] == np.argsort(-lp[i], kind="stable")[:k].tolist()
        assert [t.logprob for t in e.top] == pytest.approx(np.sort(lp[i])[::-1][:k].tolist(), abs=1e-9)
    said = FakeModel()
    said.say("Hello world! How are you?")  # (the random model above may end at once: no entries to check)
    none = LLM(said).generate("q", max_tokens=3, temperature=0, logprobs=0).logprobs
    assert len(none) == 3 and all(e.top == () for e in none)


def test_logprobs_cover_exactly_the_returned_text():
    m = FakeModel()
    m.say("Hello world! How are you?")
    llm = LLM(m)
    full = llm.generate("q", temperature=0, logprobs=2)
    assert full == "Hello world! How are you?" and full.finish_reason == "eos"
    tok = m.ckpt.tokenizer
    assert tok.decode([e.token_id for e in full.logprobs]) == full  # no EOS entry
    assert full.logprobs[0].logprob == pytest.approx(0.0, abs=1e-6)  # the script's +1000
    cut = llm.generate("q", temperature=0, logprobs=2, stop=" How")
    assert cut == "Hello world!" and tok.decode([e.token_id for e in cut.logprobs]) == "Hello world!"
    pieces = list(llm.stream("q", temperature=0, logprobs=2))
    assert len(pieces) > 1 and "".join(pieces) == full
    assert [e for p in pieces for e in p.logprobs] == full.logprobs
    assert all(tok.decode([e.token_id for e in p.logprobs]) == p for p in pieces)
    starts = [len(tok.decode([e.token_id for e in full.logprobs[:i]])) for i in range(len(full.logprobs))]
    assert [e.offset for e in full.logprobs] == starts
    assert type(llm.generate("q", temperature=0)) is str


def test_logprobs_bad_value_fails_before_generation():
    m = FakeModel()
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="logprobs"):
            LLM(m).stream("x", logprobs=bad)
    assert m.prefills == []
