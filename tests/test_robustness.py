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


# ==== 4/6. the CLI: one line for every error ===========================================================

def test_greedy_nan_logits_stop_with_an_error(monkeypatch, capsys):
    # catches: greedy argmax over NaN printing nothing (or garbage) and exiting 0
    cls = install(monkeypatch)
    monkeypatch.setattr(cls, "_next", lambda self: np.full(self.config.vocab_size, np.nan, np.float32))
    for temp in ("0", "0.8"):
        rc, out, err = run(capsys, "generate", "--temperature", temp, "Hi")
        assert rc == 2
        one_error_line(err, "logits are not finite (NaN)")


def test_invalid_utf8_in_the_prompt_is_replaced_with_a_note(monkeypatch, capsys):
    # catches: "TypeError: TextInputSequence must be str" from argv, stdin and chat lines
    cls = install(monkeypatch, script="ok")
    rc, out, err = run(capsys, "generate", "--no-chat-template", "hi \udcff there")  # argv bytes b"hi \xff there"
    assert rc == 0 and out == "ok\n"
    assert "the prompt is not valid UTF-8; 1 invalid byte sequence(s) replaced by U+FFFD" in err
    m = cls.instances[-1]
    assert m.ids[:m.prefills[0]] == m.ckpt.tokenizer.encode("hi \ufffd there").ids
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hi \xff\xfe there")))
    rc, out, err = run(capsys, "generate", "--no-chat-template", "-")
    assert rc == 0 and out == "ok\n" and "replaced by U+FFFD" in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9\n\xc3\xa9t\xc3\xa9\n")))
    rc, out, err = run(capsys, "chat")
    assert rc == 0 and out == "ok\nok\n" and err.count("this line is not valid UTF-8") == 1


@pytest.mark.parametrize("exc", [KeyError("data_offsets"), AttributeError("'list' object has no attribute 'get'"),
                                 TypeError("TextInputSequence must be str")])
def test_an_unexpected_exception_is_one_line_that_asks_for_a_bug_report(monkeypatch, capsys, exc):
    # catches: tracebacks reaching users (cli.main caught only four exception types)
    install(monkeypatch)

    def boom(*a, **k):
        raise exc
    monkeypatch.setattr(cli, "_sampler", boom)
    rc, out, err = run(capsys, "generate", "x")
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"llmgpu: internal error: {type(exc).__name__}: ")
    assert "This is a bug" in err and "https://github.com/llmgpu/llmgpu/issues" in err and "--debug" in err
    rc, out, err = run(capsys, "--debug", "generate", "x")
    assert rc == 1 and "Traceback (most recent call last)" in err and err.strip().endswith("with --debug")
    monkeypatch.setenv("LLMGPU_DEBUG", "1")
    rc, out, err = run(capsys, "generate", "x")
    assert rc == 1 and "Traceback (most recent call last)" in err


def test_ctx_above_the_model_context_says_so(monkeypatch, capsys):
    # catches: --ctx 100000 silently clamped to the model's context
    cls = install(monkeypatch, script="ok")
    monkeypatch.setattr(cls, "__init__", lambda self, ck, max_seq, flat=False: FakeModel.__init__(
        self, ck, max_seq=min(max_seq, 2048)))
    rc, out, err = run(capsys, "generate", "--ctx", "100000", "Hi")
    assert rc == 0 and "--ctx 100000 is more than this model's context of 2048 tokens; using 2048" in err


def test_perplexity_names_a_bad_file(monkeypatch, capsys, tmp_path):
    # catches: non-UTF-8 text without the file's name, and a directory reported as "no such file"
    cls = install(monkeypatch)
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin1"))
    rc, out, err = run(capsys, "perplexity", str(tmp_path / "latin1.txt"))
    assert rc == 2
    one_error_line(err, f"{tmp_path / 'latin1.txt'} is not UTF-8 text (invalid byte at offset 3)")
    rc, out, err = run(capsys, "perplexity", str(tmp_path))
    one_error_line(err, f"{tmp_path} is a directory; give a text file")
    assert cls.loads == []  # both before loading the model


def test_subprocess_invalid_utf8_argv_and_a_bad_model(tmp_path):
    # the real argv path (bytes -> surrogateescape) and the real process exit status
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("[1, 2]")
    (tmp_path / "m" / "tokenizer.json").write_text("{}")
    p = subprocess.run([sys.executable, "-m", "llmgpu.cli", "generate", "--model", str(tmp_path / "m"),
                        os.fsdecode(b"hi \xff there")], capture_output=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "LLMGPU_CACHE": str(tmp_path / "cache")})
    err = p.stderr.decode()
    assert p.returncode == 2 and p.stdout == b""
    assert "the prompt is not valid UTF-8" in err
    assert err.splitlines()[-1] == f"llmgpu: error: {tmp_path / 'm' / 'config.json'} holds a JSON list, not an " \
                                   "object; fix or re-download it"


# ==== 4/7. safetensors, config.json and GGUF metadata ===================================================

def write_st(path, header: dict, data: bytes, n=None):
    """A .safetensors file with this header (a dict, or raw bytes) and data; ``n`` overrides the length."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes((len(h) if n is None else n).to_bytes(8, "little") + h + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "I8", "shape": [4], "data_offsets": [24, 28]}}


@pytest.mark.parametrize("header,data,n,match", [
    (GOOD, bytes(28), 2**62, "header length 4611686018427387904 does not fit in the file"),
    (b"{not json", bytes(28), None, "the header is not JSON"),
    (b"\xff\xfe{}", bytes(28), None, "the header is not JSON"),
    (b"[1, 2]", b"", None, "not a JSON object of tensors"),
    ({"__metadata__": [1]}, b"", None, "not a JSON object of tensors"),
    ({"a": {"dtype": "F32", "shape": [2, 3]}}, bytes(24), None, "data_offsets None, not [start, end]"),
    ({"a": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8), None, "tensor 'a' has no dtype"),
    ({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, bytes(2), None, "llmgpu cannot read"),
    ({"a": {"dtype": "F32", "shape": "2x3", "data_offsets": [0, 24]}}, bytes(24), None, "not a list of sizes"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), None, "not a list of sizes"),
    (GOOD, bytes(20), None, "tensor 'a' needs data bytes [0, 24) but the file holds 20"),
    ({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}, bytes(24), None,
     "needs 24 bytes, its data_offsets span 20"),
    ({**GOOD, "c": {"dtype": "I8", "shape": [4], "data_offsets": [20, 24]}}, bytes(28), None,
     "tensors 'a' and 'c' overlap"),
])
def test_a_bad_safetensors_header_is_one_error_naming_the_file(tmp_path, header, data, n, match):
    # catches: MemoryError (2**62), KeyError (no data_offsets), "cannot reshape" (truncated) and
    # overlapping tensors silently sharing bytes
    path = write_st(tmp_path / "w.safetensors", header, data, n)
    with pytest.raises(ValueError) as e:
        read_safetensors(path)
    assert str(path) in str(e.value) and match in str(e.value)


def test_a_valid_header_still_reads(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = read_safetensors(write_st(tmp_path / "w.safetensors", GOOD, a.tobytes() + b"\x01\x02\x03\x04"))
    np.testing.assert_array_equal(got["a"], a)
    assert got["b"].tolist() == [1, 2, 3, 4]
    save_file({"e": np.zeros((0, 4), np.float32), "z": np.ones(1, np.float16)}, str(tmp_path / "e.safetensors"))
    assert read_safetensors(tmp_path / "e.safetensors")["e"].shape == (0, 4)  # empty tensors are fine


@pytest.mark.parametrize("change,match", [
    ({"hidden_size": "64"}, "config.json: hidden_size must be an integer > 0, got '64'"),
    ({"num_hidden_layers": -1}, "num_hidden_layers must be an integer > 0"),
    ({"vocab_size": True}, "vocab_size must be an integer > 0"),
    ({"rms_norm_eps": "1e-5"}, "rms_norm_eps must be a number > 0"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
    ({"rope_scaling": [1]}, "rope_scaling must be an object"),
    ({"rope_scaling": {"rope_type": "linear", "factor": "2"}}, "rope_scaling.factor must be a number > 0"),
    ({"quantization_config": "gptq"}, "quantization_config must be an object"),
    ({"eos_token_id": "2"}, "eos_token_id must be a token id or a list of them"),
    ({"model_type": ["llama"]}, "model_type must be a string"),
])
def test_config_json_types_are_checked(tmp_path, rng, change, match):
    # catches: AttributeError / silent int("64") coercion from a config.json with wrong types
    tiny_hf_dir(tmp_path / "m", rng)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ValueError) as e:
        load_checkpoint(tmp_path / "m")
    assert match in str(e.value) and "fix config.json" in str(e.value)


@pytest.mark.parametrize("key,value,match", [
    ("llama.block_count", "2", "llama.block_count must be an integer > 0, got '2'"),
    ("llama.embedding_length", 0, "llama.embedding_length must be an integer > 0"),
    ("llama.rope.freq_base", "1e4", "llama.rope.freq_base must be a number > 0"),
    ("tokenizer.ggml.tokens", [1, 2], "tokenizer.ggml.tokens must be a list of strings"),
    ("tokenizer.ggml.scores", [0.5], "tokenizer.ggml.scores has 1 entries for 3 tokens"),
    ("tokenizer.ggml.eos_token_id", 7, "outside the 3 tokens"),
])
def test_gguf_metadata_types_are_checked(tmp_path, key, value, match):
    # catches: int("2")-style coercion, TypeErrors inside tokenizers, IndexError on tokens[eos]
    gguf = pytest.importorskip("gguf")
    meta = {"llama.block_count": 1, "llama.embedding_length": 32, "llama.feed_forward_length": 64,
            "llama.attention.head_count": 2, "llama.context_length": 64, "llama.rope.freq_base": 10000.0,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
            "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.eos_token_id": 2, key: value}
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    for k, v in meta.items():
        if isinstance(v, list):
            w.add_array(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError) as e:
        load_checkpoint(tmp_path / "m.gguf")
    assert match in str(e.value)


# ==== 2. the quantized cache verifies what it loads =====================================================

@pytest.fixture
def cached(tmp_path, rng, monkeypatch):
    """(source dir, the cache entry's dir, the first load) for a tiny float checkpoint."""
    monkeypatch.setenv("LLMGPU_CACHE", str(tmp_path / "cache"))
    tiny_hf_dir(tmp_path / "src", rng)
    first = load_cached_or_quantize(tmp_path / "src", 32, progress=False)
    (entry,) = (tmp_path / "cache").iterdir()
    return tmp_path / "src", entry, first


def assert_same_weights(a, b):
    for name, t in a.tensors.items():
        u = b.tensors[name]
        np.testing.assert_array_equal(getattr(t, "qweight", t), getattr(u, "qweight", u), err_msg=name)


def overwrite_layer0_qweight(entry: Path) -> None:
    """Flip bytes of layer 0's q_proj (same file size), as the issue's reproduction did."""
    header, start = loader.safetensors_header(entry / "model.safetensors")
    a, _ = header["model.layers.0.self_attn.q_proj.weight.qweight"]["data_offsets"]
    with open(entry / "model.safetensors", "r+b") as f:
        f.seek(start + a)
        chunk = f.read(64)
        f.seek(start + a)
        f.write(bytes(x ^ 0xFF for x in chunk))


@pytest.mark.parametrize("damage,why", [
    (overwrite_layer0_qweight, "model.safetensors does not match the checksum"),
    (lambda e: os.truncate(e / "model.safetensors", os.path.getsize(e / "model.safetensors") - 100),
     "model.safetensors is"),
    (lambda e: (e / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (lambda e: (e / "llmgpu.json").write_text("{"), "llmgpu.json is not valid JSON"),
    (lambda e: (e / "llmgpu.json").write_text(json.dumps(
        {k: v for k, v in json.loads((e / "llmgpu.json").read_text()).items() if k != "files"})), "no checksums"),
])
def test_a_damaged_cache_entry_is_rebuilt_and_says_so(cached, capsys, damage, why):
    # catches: corrupted weights used silently (wrong answers, exit 0) and a truncated entry failing
    # "cannot reshape" on every run without ever being rebuilt
    src, entry, first = cached
    capsys.readouterr()
    damage(entry)
    again = load_cached_or_quantize(src, 32, progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the cached quantized model {entry} is unusable" in err and why in err
    assert f"rebuilding it from {src.resolve()}" in err
    assert_same_weights(first, again)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # rebuilt in place, nothing beside it
    load_cached_or_quantize(src, 32, progress=False)
    assert capsys.readouterr().err == ""  # and now trusted again


def test_a_damaged_q4_directory_of_the_user_names_itself(tmp_path, rng):
    # catches: a user's quantized directory with overwritten bytes loading as garbage
    tiny_hf_dir(tmp_path / "src", rng)
    out = save_q4_checkpoint(quantize_checkpoint(load_checkpoint(tmp_path / "src"), progress=False), tmp_path / "q")
    overwrite_layer0_qweight(out)
    with pytest.raises(DamagedCheckpointError, match=f"{out} is damaged: model.safetensors does not match the "
                                                     "checksum.*re-create it with llmgpu quantize"):
        load_checkpoint(out)


# ==== 3/5. outputs: never destroy a user's files, never leave temp dirs =================================

def quantize_cli(capsys, src, out, *extra):
    return run(capsys, "quantize", str(src), "-o", str(out), "-q", *extra)


def test_quantize_refuses_outputs_that_would_destroy_something(tmp_path, rng, capsys):
    # catches: -o replacing a directory of other files, a file, or the source checkpoint itself
    src = tmp_path / "src"
    tiny_hf_dir(src, rng)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("also mine")
    cases = [(tmp_path / "docs", "is not an llmgpu output (it holds notes.txt)"),
             (tmp_path / "file", "exists and is not a directory"),
             (src, "would overwrite the source"), (src / "sub", "would overwrite the source"),
             (tmp_path, "would overwrite the source")]
    for out, match in cases:
        for force in ((), ("--force",)):
            rc, _, err = quantize_cli(capsys, src, out, *force)
            assert rc == 2
            one_error_line(err, match)
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "also mine"
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "file", "src"]


def test_quantize_replaces_an_earlier_output_only_with_force(tmp_path, rng, capsys):
    # catches: silently replacing an earlier output, or --force not working
    tiny_hf_dir(tmp_path / "src", rng)
    (tmp_path / "empty").mkdir()
    assert quantize_cli(capsys, tmp_path / "src", tmp_path / "empty")[0] == 0  # an empty dir is fine
    rc, _, err = quantize_cli(capsys, tmp_path / "src", tmp_path / "empty", "--group-size", "64")
    assert rc == 2
    one_error_line(err, "holds an earlier llmgpu output; pass --force")
    assert load_checkpoint(tmp_path / "empty").group_size == 32
    rc, _, _ = quantize_cli(capsys, tmp_path / "src", tmp_path / "empty", "--group-size", "64", "--force")
    assert rc == 0 and load_checkpoint(tmp_path / "empty").group_size == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "src"]


def test_an_unwritable_output_is_one_line_without_errno(tmp_path, rng, capsys):
    # catches: "[Errno 2] No such file or directory: '/proc/.x.tmp-...'"
    tiny_hf_dir(tmp_path / "src", rng)
    rc, _, err = quantize_cli(capsys, tmp_path / "src", "/proc/x")
    assert rc == 2
    one_error_line(err, "cannot write /proc/x: ")
    assert "[Errno" not in err and "choose a directory you can write to" in err


def dead_pid() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # above pid_max: never a live process


def test_sweep_removes_only_abandoned_temp_dirs(tmp_path):
    # catches: leftovers of killed writers staying for ever, and a sweep that deletes live or foreign dirs
    old = time.time() - loader.STALE_AFTER_S - 60
    made = {}
    for label, name, age in [("abandoned", f".m.tmp-{dead_pid()}-0123abcd", old),
                             ("abandoned-old", f".m.old-{dead_pid()}-89abcdef", old),
                             ("fresh", f".m.tmp-{dead_pid()}-00000000", None),
                             ("alive", f".m.tmp-{os.getppid()}-11111111", old),
                             ("mine", f".m.tmp-{os.getpid()}-22222222", old),
                             ("other-name", f".notes.tmp-{dead_pid()}-33333333", old),
                             ("not-ours", ".m.tmp-backup", old)]:
        d = tmp_path / name
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
        if age is not None:
            for p in (d / "model.safetensors", d):
                os.utime(p, (age, age))
        made[label] = d
    sweep_temp_dirs(tmp_path, "m")
    assert {k for k, d in made.items() if d.exists()} == {"fresh", "alive", "mine", "other-name", "not-ours"}
    sweep_temp_dirs(tmp_path)  # the cache's sweep: every name
    assert {k for k, d in made.items() if d.exists()} == {"fresh", "alive", "mine", "not-ours"}


def test_loading_sweeps_the_cache(cached):
    # catches: cache temp dirs of a killed `generate` never removed
    src, entry, _ = cached
    left = entry.parent / f".{entry.name}.tmp-{dead_pid()}-0123abcd"
    left.mkdir()
    os.utime(left, (time.time() - loader.STALE_AFTER_S - 60,) * 2)
    load_cached_or_quantize(src, 32, progress=False)
    assert not left.exists()


SIGTERM_DURING_SAVE = """
import os, signal, sys
import safetensors.numpy
real = safetensors.numpy.save_file
def save_then_killed(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)  # the temp dir holds a whole weights file...
    os.kill(os.getpid(), signal.SIGTERM)  # ...when the user's `kill` arrives
safetensors.numpy.save_file = save_then_killed
from llmgpu import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv", [["quantize", "{src}", "-o", "{out}", "-q"],
                                  ["--debug", "perplexity", "--model", "{src}", "{src}/config.json"]])
def test_sigterm_removes_temp_dirs_like_ctrl_c(tmp_path, rng, argv):
    # catches: SIGTERM killing the process with its hidden temp dir left behind (quantize, and the cache
    # being filled by a command that loads a model)
    tiny_hf_dir(tmp_path / "src", rng)
    argv = [a.format(src=tmp_path / "src", out=tmp_path / "out") for a in argv]
    p = subprocess.run([sys.executable, "-c", SIGTERM_DURING_SAVE, *argv], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**os.environ, "LLMGPU_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) in (["src"], ["cache", "src"])
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_two_threads_times_four_generations_on_a_gpu_model(tmp_path, rng):
    # catches: the Rust panic "Buffer with 'logits.staging' label is still mapped" (exit 134) and
    # "Buffer map is pending" when two threads drive one GPU model
    from llmgpu.model import Model
    from tests.conftest import get_device

    tiny_hf_dir(tmp_path / "src", rng)
    llm = LLM(Model(quantize_checkpoint(load_checkpoint(tmp_path / "src"), progress=False), dev=get_device(),
                    max_seq=64))
    prompts = [["Hello world", "The quick", "café", "def f(x):"], ["Once upon", "How are you", "lazy dog", "12"]]
    kw = dict(temperature=0, max_tokens=8, chat_template=False)
    alone = [[llm.generate(p, **kw) for p in ps] for ps in prompts]
    barrier, results, errors = threading.Barrier(2), {}, []

    def worker(i):
        try:
            barrier.wait()
            results[i] = [llm.generate(p, **kw) for p in prompts[i]]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and [results[0], results[1]] == alone


def test_an_interrupted_replace_keeps_the_previous_output(tmp_path, rng, monkeypatch):
    # catches: Ctrl-C/SIGTERM between moving the old output aside and renaming the new one in deleting both
    tiny_hf_dir(tmp_path / "src", rng)
    q = quantize_checkpoint(load_checkpoint(tmp_path / "src"), progress=False)
    out = save_q4_checkpoint(q, tmp_path / "q")
    before = (out / "model.safetensors").read_bytes()
    real = os.replace

    def interrupted(a, b):
        if Path(a).name.startswith(".q.tmp-"):
            raise KeyboardInterrupt
        real(a, b)
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_q4_checkpoint(q, out, force=True)
    monkeypatch.undo()
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "src"]
