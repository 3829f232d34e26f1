"""End to end on the real default model (SmolLM2-135M-Instruct) and GPU: the CLI as a subprocess, the API,
and the KV-cache behaviour that chat reuse depends on. Slow on a software adapter (about a minute)."""
import re
import subprocess
import sys

import numpy as np
import pytest

import llmgpu
from llmgpu.model import Model

STATS = re.compile(r".+ \| prompt \d+ tokens( \(\d+ cached\))?, [\d.]+ t/s \| generated \d+ tokens, [\d.]+ t/s")
TEXT = ("The sun rose slowly over the quiet village. Children ran to school, carrying their books and lunches, "
        "while their parents walked to work. In the market, farmers sold fresh vegetables, fruit and bread. "
        "By noon the streets were busy with people talking, laughing and buying food for the evening meal.\n")


def cli(*argv, stdin=None):
    return subprocess.run([sys.executable, "-m", "llmgpu.cli", *argv], input=stdin, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def llm():
    return llmgpu.LLM(Model.load(max_seq=512, progress=False))


def test_cli_generate_streams_text_and_one_stats_line(llm):
    p = cli("generate", "--temperature", "0", "-n", "24", "--ctx", "512", "What is the capital of France?")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()
    assert STATS.fullmatch(p.stderr.strip().splitlines()[-1]), p.stderr
    # the same greedy text as the API (same checkpoint, same prompt wrapping)
    assert p.stdout == llm.generate("What is the capital of France?", temperature=0, max_tokens=24) + "\n"


def test_default_model_answers_a_simple_question(llm):
    """Golden answer: transformers gives "The capital of France is Paris." on the same GGUF weights."""
    assert "Paris" in llm.generate("What is the capital of France?", temperature=0, max_tokens=24)


def test_cli_chat_two_turns(llm):
    p = cli("chat", "--temperature", "0", "-n", "16", "--ctx", "512", "--stats",
            stdin="Hello! Who are you?\nName one color.\n")
    assert p.returncode == 0, p.stderr
    stats = [line for line in p.stderr.splitlines() if STATS.fullmatch(line)]
    assert len(stats) == 2 and "cached" in stats[1]  # the second turn reused the first one's cache
    assert p.stdout.count("\n") >= 2


def test_cli_perplexity(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    p = cli("perplexity", "--ctx", "64", "-q", str(tmp_path / "t.txt"))
    assert p.returncode == 0, p.stderr
    m = re.match(r"perplexity ([\d.]+) over (\d+) tokens", p.stdout)
    assert m and 1 < float(m.group(1)) < 40 and int(m.group(2)) > 50


def test_api_reproducible_and_stop(llm):
    a = llm.generate("Tell me a story about a cat.", max_tokens=20, seed=1234)
    assert a == llm.generate("Tell me a story about a cat.", max_tokens=20, seed=1234)
    st = llm.last_stats
    assert st.new_tokens <= 20 and st.prompt_tokens > 10 and st.decode_tps > 0
    words = a.split()
    if len(words) > 3:
        assert llm.generate("Tell me a story about a cat.", max_tokens=20, seed=1234, stop=words[2]) == \
               a[:a.find(words[2])]


def test_logits_shape(llm):
    ids = llm.encode("Hello world", chat_template=False)
    x = llm.logits(ids)
    assert x.shape == (len(ids), llm.model.config.vocab_size) and np.isfinite(x).all()


def test_truncate_then_prefill_matches_a_fresh_prefill(llm):
    """What chat reuse relies on: keeping k cached tokens and prefilling the rest gives the logits that
    prefilling everything from an empty cache gives."""
    m = llm.model
    a = llm.encode("Hello! Who are you?")
    b = llm.encode([{"role": "user", "content": "Hello! Who are you?"},
                    {"role": "assistant", "content": "I am a model."},
                    {"role": "user", "content": "Name one color."}])
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))  # a is a prefix of b here
    m.reset()
    m.prefill(a)
    for t in (5, 6, 7):
        m.decode(t)
    m.truncate(k)
    reused = m.prefill(b[k:])
    m.reset()
    fresh = m.prefill(b)
    assert np.abs(reused - fresh).max() <= 2e-2 * np.abs(fresh).max()
