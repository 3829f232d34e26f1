"""The command line, in-process on the fake model, and as a subprocess for argument errors."""
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from llmgpu import cli
from llmgpu.config import ModelConfig
from llmgpu.loader import expected_shapes, load_checkpoint
from llmgpu.quant import Q4Tensor, Q8Tensor
from llmgpu.tokenizer import encode_prompt, render_chat
from tests.fake_model import FakeModel, install, make_tokenizer


def run(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_streams_and_prints_one_stats_line(monkeypatch, capsys):
    cls = install(monkeypatch, script="Hello world! How are you?")
    rc, out, err = run(capsys, "generate", "--temperature", "0", "Hi")
    assert rc == 0 and out == "Hello world! How are you?\n"
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fake adapter | prompt ") and lines[0].count("t/s") == 2
    m = cls.instances[0]
    ck = m.ckpt
    text = render_chat(ck.chat_template, [{"role": "user", "content": "Hi"}], True, ck.bos_token, ck.eos_token)
    assert m.prefills == [len(encode_prompt(ck.tokenizer, text))]
    assert f"prompt {m.prefills[0]} tokens" in lines[0] and "generated 8 tokens" in lines[0]


class Recorder(io.StringIO):
    def __init__(self):
        super().__init__()
        self.events = []

    def write(self, s):
        self.events.append(("write", s))
        return super().write(s)

    def flush(self):
        self.events.append(("flush", None))


def test_generate_flushes_every_piece(monkeypatch, capsys):
    install(monkeypatch, script="Hello world! How are you?")
    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    assert cli.main(["generate", "Hi"]) == 0
    writes = [i for i, (kind, _) in enumerate(rec.events) if kind == "write"]
    assert len(writes) >= 6 and all(rec.events[i + 1][0] == "flush" for i in writes)
    assert rec.getvalue() == "Hello world! How are you?\n"


def test_generate_flags_reach_the_model(monkeypatch, capsys):
    cls = install(monkeypatch, script="Hello world! How are you?")
    rc, out, err = run(capsys, "--adapter", "lavapipe", "generate", "--model", "fake", "--ctx", "100",
                       "--group-size", "64", "--stop", "How", "--stop", "zzz", "-n", "50", "--decode", "phased",
                       "--sampling", "gpu", "Hi")
    assert rc == 0 and out == "Hello world! \n"
    assert cls.loads == [dict(source="fake", group_size=64, max_seq=100, adapter="lavapipe", progress=True,
                              decode="phased", sampling="gpu")]
    rc, out, _ = run(capsys, "generate", "--temperature", "0", "--max-tokens", "2", "Hi")
    assert out == "Hello world\n"


def test_generate_raw_and_system_prompts(monkeypatch, capsys):
    cls = install(monkeypatch, script="ok")
    run(capsys, "generate", "--no-chat-template", "Hello world")
    tok = make_tokenizer()
    assert cls.instances[-1].prefills == [len(tok.encode("Hello world", add_special_tokens=False).ids)]
    run(capsys, "generate", "--system", "Be brief.", "Hello world")
    ck = cls.instances[-1].ckpt
    text = render_chat(ck.chat_template, [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hello world"}], True)
    assert cls.instances[-1].prefills == [len(encode_prompt(tok, text))]
    rc, _, err = run(capsys, "generate", "--system", "x", "--no-chat-template", "Hello")
    assert rc == 2 and err.startswith("llmgpu: error: a system prompt needs the chat template")


def test_generate_reads_the_prompt_from_stdin(monkeypatch, capsys):
    cls = install(monkeypatch, script="ok")
    rc, out, _ = run(capsys, "generate", "--no-chat-template", "-", stdin="Hello world", monkeypatch=monkeypatch)
    assert rc == 0 and out == "ok\n"
    assert cls.instances[0].prefills == [len(make_tokenizer().encode("Hello world").ids)]


def test_generate_notes_a_full_context(monkeypatch, capsys):
    cls = install(monkeypatch, script="Hello world! " * 50)
    rc, out, err = run(capsys, "generate", "--ctx", "40", "--no-chat-template", "-n", "1000", "Hello")
    assert rc == 0 and cls.instances[0].pos == 40
    assert err.count("\n") == 2 and "end of the context (40 tokens)" in err


def test_chat_repl_keeps_the_conversation(monkeypatch, capsys):
    cls = install(monkeypatch, script="Fine, thanks.")
    rc, out, err = run(capsys, "chat", "--temperature", "0", "--system", "Be nice.", "--stats",
                       stdin="Hello\n\nHow are you?\n/reset\nAgain\n/exit\nnever read\n", monkeypatch=monkeypatch)
    assert rc == 0
    assert out == "Fine, thanks.\n" * 3
    m = cls.instances[0]
    assert len(m.prefills) == 3
    # the second turn prefilled only what follows turn 1's prompt and answer (its EOS was never decoded)
    ck = m.ckpt
    msgs = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Fine, thanks."}, {"role": "user", "content": "How are you?"}]
    full = encode_prompt(ck.tokenizer, render_chat(ck.chat_template, msgs, True))
    answer = ck.tokenizer.encode("Fine, thanks.").ids
    assert m.prefills[1] == len(full) - m.prefills[0] - len(answer)
    again = msgs[:1] + [{"role": "user", "content": "Again"}]
    again = encode_prompt(ck.tokenizer, render_chat(ck.chat_template, again))
    # after /reset: a one-turn conversation; only the system prompt it shares with the cache is reused
    held = full + answer
    common = next(i for i, (x, y) in enumerate(zip(held, again)) if x != y)
    assert 0 < common < len(again) and m.prefills[2] == len(again) - common
    assert sum("t/s" in line for line in err.splitlines()) == 3


def test_chat_ends_cleanly_at_end_of_input(monkeypatch, capsys):
    cls = install(monkeypatch, script="ok")
    rc, out, _ = run(capsys, "chat", stdin="one\ntwo", monkeypatch=monkeypatch)
    assert rc == 0 and out == "ok\nok\n" and len(cls.instances[0].prefills) == 2
    rc, out, _ = run(capsys, "chat", stdin="", monkeypatch=monkeypatch)
    assert rc == 0 and out == ""


def perplexity_reference(model, ids, ctx, stride):
    """Each token t >= 1 scored once, in the first window (starts 0, stride, ...) that contains it."""
    nll = 0.0
    for t in range(1, len(ids)):
        start = 0
        while start + ctx <= t:
            start += stride
        x = model.logits(ids[start:t])[-1].astype(np.float64)  # the last position predicts token t
        nll += np.log(np.exp(x - x.max()).sum()) + x.max() - x[ids[t]]
    return math.exp(nll / (len(ids) - 1))


@pytest.mark.parametrize("ctx,stride", [(16, 5), (16, None), (8, 7), (1000, None)])
def test_perplexity_matches_a_token_by_token_reference(monkeypatch, capsys, tmp_path, rng, ctx, stride):
    cls = install(monkeypatch)
    words = ["Hello", " world", " the", " quick", " fox", "!", " café", " 日本", "\n"]
    text = "".join(rng.choice(words, int(rng.integers(10, 40))))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    args = ["perplexity", "--ctx", str(ctx)] + (["--stride", str(stride)] if stride else []) + [str(tmp_path / "t.txt")]
    rc, out, _ = run(capsys, *args)
    assert rc == 0
    ids = make_tokenizer().encode(text).ids
    ref = perplexity_reference(FakeModel(max_seq=ctx), ids, ctx, stride or ctx // 2)
    ppl = float(out.split()[1])
    assert ppl == pytest.approx(ref, rel=1e-4)
    assert f"over {len(ids) - 1} tokens" in out
    assert cls.loads[0]["max_seq"] == ctx


def test_perplexity_of_uniform_logits_is_the_vocabulary_size(monkeypatch, capsys, tmp_path):
    install(monkeypatch)
    (tmp_path / "t.txt").write_text("The quick brown fox jumps over the lazy dog. " * 5)
    rc, out, _ = run(capsys, "perplexity", "--model", "fake-flat", "--ctx", "32", "-q", str(tmp_path / "t.txt"))
    assert rc == 0
    assert float(out.split()[1]) == pytest.approx(make_tokenizer().get_vocab_size(), rel=1e-6)


def tiny_hf_dir(path, rng):
    tok = make_tokenizer()
    cfg = ModelConfig(model_type="llama", vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, eos_token_id=2,
                      tie_word_embeddings=True)
    path.mkdir()
    save_file({n: rng.standard_normal(s).astype(np.float32) for n, s in expected_shapes(cfg).items()},
              str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg.to_hf()))
    tok.save(str(path / "tokenizer.json"))


def test_quantize(capsys, tmp_path, rng):
    tiny_hf_dir(tmp_path / "src", rng)
    rc, _, err = run(capsys, "quantize", str(tmp_path / "src"), "-o", str(tmp_path / "q"), "--group-size", "64", "-q")
    assert rc == 0 and "wrote" in err and "group size 64" in err
    ck = load_checkpoint(tmp_path / "q")
    assert isinstance(ck.tensors["model.layers.1.mlp.down_proj.weight"], Q4Tensor) and ck.group_size == 64
    assert isinstance(ck.tensors["lm_head.weight"], Q8Tensor)  # int8 lm_head by default
    rc, _, err = run(capsys, "quantize", str(tmp_path / "nope"), "-o", str(tmp_path / "q2"))
    assert rc == 2 and err.count("\n") == 1 and err.startswith("llmgpu: error:")


@pytest.mark.parametrize("argv,match", [
    (["generate", "--temperature", "-1", "x"], "--temperature must be"),
    (["generate", "--top-p", "1.5", "x"], "--top-p must be"),
    (["generate", "--top-k", "-2", "x"], "--top-k must be"),
    (["generate", "--min-p", "2", "x"], "--min-p must be"),
    (["generate", "--repeat-penalty", "0", "x"], "--repeat-penalty must be"),
    (["generate", "--repeat-last-n", "0", "x"], "--repeat-last-n must be an integer >= 1, or -1"),
    (["generate", "--max-tokens", "0", "x"], "--max-tokens must be"),
    (["generate", "--ctx", "0", "x"], "--ctx must be"),
    (["chat", "--seed", "-1"], "--seed must be"),
    (["perplexity", "/no/such/file.txt"], "no such file"),
    (["perplexity", "--ctx", "8", "--stride", "8", "f"], "--stride"),
    (["generate", "--model", "no/such-model", "x"], "no/such-model"),
])
def test_bad_input_is_one_line_before_loading(monkeypatch, capsys, argv, match):
    cls = install(monkeypatch)
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("llmgpu: error: ") and match in err
    assert len(cls.loads) == (1 if "no/such-model" in argv else 0) and not cls.instances


@pytest.mark.parametrize("argv", [["generate", "--temperature", "-1", "x"], ["generate", "--bogus", "x"],
                                  ["generate"], ["generate", "--temperature", "hot", "x"], ["nope"],
                                  ["chat", "--top-p", "0"], ["perplexity", "/no/such/file.txt"]])
def test_subprocess_errors_are_one_line(argv):
    p = subprocess.run([sys.executable, "-m", "llmgpu.cli", *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("llmgpu: error: "), p.stderr


def test_help_lists_defaults_and_bench_still_parses(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    out = capsys.readouterr().out
    for text in ("--temperature", "default 0.8", "default 40", "default 0.95", "default 0.05", "--repeat-penalty",
                 "--no-chat-template", "--stop"):
        assert text in out
    args = cli.build_parser().parse_args(["bench", "kernels", "--shapes", "llama-3.2-1b", "--no-gemm"])
    assert args.func is cli._bench and args.what == "kernels" and args.no_gemm
    args = cli.build_parser().parse_args(["bench", "--shape", "llama-3.2-1b", "-p", "64", "-n", "8", "--json"])
    assert args.func is cli._bench and args.what is None and (args.shape, args.p, args.n, args.json) == \
           ("llama-3.2-1b", 64, 8, True) and args.group_size == 32
