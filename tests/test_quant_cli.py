"""Issue 13 on the command line: quantize --asymmetric / --calibrate / --group-size fallback, and
perplexity's report (tokens, windows) and --compare, in-process (the fake model for perplexity)."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmgpu import loader
from llmgpu.loader import load_checkpoint
from tests.fake_model import FakeModel, install, make_tokenizer
from tests.test_cli import run, tiny_hf_dir

ROOT = Path(__file__).parents[1]


def test_quantize_asymmetric_calibrated_records_how(capsys, tmp_path, rng):
    tiny_hf_dir(tmp_path / "src", rng)
    (tmp_path / "cal.txt").write_text("The quick brown fox jumps over the lazy dog. Hello world! " * 20)
    rc, _, err = run(capsys, "quantize", str(tmp_path / "src"), "-o", str(tmp_path / "q"), "--asymmetric",
                     "--calibrate", str(tmp_path / "cal.txt"), "-q")
    assert rc == 0, err
    assert "asymmetric" in err and "calibrated on" in err and "output error" in err
    meta = json.loads((tmp_path / "q" / "llmgpu.json").read_text())
    assert meta["quantization"]["asymmetric"] is True and meta["quantization"]["method"] == "calibrated"
    assert meta["quantization"]["calibration"]["text"] == "cal.txt"
    assert meta["quantization"]["calibration"]["refit_damp"] is None  # the scale refit is symmetric only
    ck = load_checkpoint(tmp_path / "q")
    assert ck.tensors["model.layers.0.mlp.down_proj.weight"].offsets is not None


def test_quantize_with_the_default_calibration_text(capsys, tmp_path, rng):
    """--calibrate alone: the shipped text (package data) is found and recorded."""
    tiny_hf_dir(tmp_path / "src", rng)
    rc, _, err = run(capsys, "quantize", str(tmp_path / "src"), "-o", str(tmp_path / "q"), "--calibrate", "-q")
    assert rc == 0, err
    cal = json.loads((tmp_path / "q" / "llmgpu.json").read_text())["quantization"]["calibration"]
    assert cal["text"].startswith("llmgpu default") and cal["tokens"] > 500


@pytest.mark.parametrize("cal,match", [("/no/such/cal.txt", "no such file"), ("bad.txt", "not UTF-8")])
def test_quantize_bad_calibration_file_is_one_line_and_writes_nothing(capsys, tmp_path, rng, cal, match):
    tiny_hf_dir(tmp_path / "src", rng)
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 " * 40)
    rc, _, err = run(capsys, "quantize", str(tmp_path / "src"), "-o", str(tmp_path / "q"),
                     "--calibrate", str(tmp_path / cal) if cal == "bad.txt" else cal, "-q")
    assert rc == 2 and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q.*"))


def test_quantize_refuses_calibration_of_4bit_layers(capsys, tmp_path, rng):
    tiny_hf_dir(tmp_path / "src", rng)
    assert run(capsys, "quantize", str(tmp_path / "src"), "-o", str(tmp_path / "q"), "-q")[0] == 0
    rc, _, err = run(capsys, "quantize", str(tmp_path / "q"), "-o", str(tmp_path / "q2"), "--calibrate", "-q")
    assert rc == 2 and "--requantize" in err and err.count("\n") == 1 and not (tmp_path / "q2").exists()


def test_group_size_fallback_is_said_once(capsys, tmp_path, rng):
    """tiny_hf_dir: hidden 64, intermediate 128, so 128 divides only down_proj's K."""
    tiny_hf_dir(tmp_path / "src", rng)
    rc, _, err = run(capsys, "quantize", str(tmp_path / "src"), "-o", str(tmp_path / "q"), "--group-size", "128",
                     "-q")
    assert rc == 0 and err.count("llmgpu: note: group size 128") == 1 and "K=64" in err
    assert "group size 64/128" in err


def test_default_cache_key_is_unchanged(tmp_path):
    """Caches written before issue 13 stay valid: the default recipe hashes as before; asymmetric
    gets its own entry."""
    import hashlib
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    p = tmp_path / "m"
    stats = [("config.json", (p / "config.json").stat().st_size, (p / "config.json").stat().st_mtime_ns)]
    old = hashlib.sha256(json.dumps(["org/m", str(p), stats, 32, loader.FORMAT_VERSION]).encode()).hexdigest()[:16]
    assert loader._cache_key("org/m", p, 32) == f"m-{old}"
    assert loader._cache_key("org/m", p, 32, {"asymmetric": True}) != f"m-{old}"


def reference(models, ids, ctx, stride):
    """Token by token: each token t >= 1 in the first window that holds it; NLL per model, argmax."""
    nll, top = [0.0] * len(models), [[] for _ in models]
    for t in range(1, len(ids)):
        start = 0
        while start + ctx <= t:
            start += stride
        for j, m in enumerate(models):
            x = m.logits(ids[start:t])[-1].astype(np.float64)
            nll[j] += np.log(np.exp(x - x.max()).sum()) + x.max() - x[ids[t]]
            top[j].append(int(x.argmax()))
    agree = sum(a == b for a, b in zip(*top)) if len(models) == 2 else None
    return [math.exp(n / (len(ids) - 1)) for n in nll], agree


@pytest.mark.parametrize("ctx,stride", [(16, 5), (12, None)])
def test_perplexity_compare(monkeypatch, capsys, tmp_path, rng, ctx, stride):
    """Two models on the same windows: both perplexities, the top-1 agreement, tokens and windows.
    Catches: the second model scored on other rows, agreement counted over context rows, a wrong
    window count."""
    install(monkeypatch)
    words = ["Hello", " world", " the", " quick", " fox", "!", " café", "\n"]
    text = "".join(rng.choice(words, int(rng.integers(25, 50))))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    rc, out, err = run(capsys, "perplexity", "--ctx", str(ctx), *(["--stride", str(stride)] if stride else []),
                       "--compare", "fake-flat", "-q", str(tmp_path / "t.txt"))
    assert rc == 0, err
    ids = make_tokenizer().encode(text).ids
    flat = FakeModel(max_seq=ctx, flat=True)
    (p1, p2), agree = reference([FakeModel(max_seq=ctx), flat], ids, ctx, stride or ctx // 2)
    lines = out.splitlines()
    n, s = len(ids) - 1, stride or ctx // 2
    windows = 1 + math.ceil(max(0, len(ids) - ctx) / s)
    assert len(lines) == 3
    assert float(lines[0].split()[1]) == pytest.approx(p1, rel=1e-4)
    assert float(lines[1].split()[1]) == pytest.approx(p2, rel=1e-4)
    assert f"over {n} tokens in {windows} windows" in lines[0] and lines[1].endswith("vs the first)")
    assert lines[2].startswith(f"top-1 agreement {agree / n:.1%} ({agree} of {n} tokens)")


def test_perplexity_says_what_it_measured(monkeypatch, capsys, tmp_path):
    install(monkeypatch)
    (tmp_path / "t.txt").write_text("The quick brown fox jumps over the lazy dog. " * 5)
    rc, out, _ = run(capsys, "perplexity", "--model", "fake", "--ctx", "1000", "-q", str(tmp_path / "t.txt"))
    n = len(make_tokenizer().encode("The quick brown fox jumps over the lazy dog. " * 5).ids) - 1
    assert rc == 0 and f"over {n} tokens in 1 window (ctx 1000, stride 500) of t.txt" in out


def test_cache_keeps_asymmetric_apart(tmp_path, rng, monkeypatch):
    """load_cached_or_quantize(asymmetric=True) caches its own entry, with offsets, and the default
    call still gets the symmetric one. Catches the option left out of the key (one entry for both)."""
    monkeypatch.setenv("LLMGPU_CACHE", str(tmp_path / "cache"))
    tiny_hf_dir(tmp_path / "src", rng)
    a = loader.load_cached_or_quantize(tmp_path / "src", 32, progress=False, asymmetric=True)
    p = loader.load_cached_or_quantize(tmp_path / "src", 32, progress=False)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert a.tensors[name].offsets is not None and p.tensors[name].offsets is None
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert loader.load_cached_or_quantize(tmp_path / "src", 32, progress=False, asymmetric=True).quantization["asymmetric"]


def test_cache_keys_calibration_by_its_text(tmp_path, rng, monkeypatch):
    """load_cached_or_quantize(calibrate=FILE) is calibrated, keyed by the text's contents (an edited
    file makes a new entry, the same text reuses it); a q4gsw directory asked for with a recipe it
    was not made with is refused. Catches calibrate dropped (a plain 'search' entry), a key by file
    name only (a stale calibration after an edit), options silently ignored on a q4gsw directory."""
    monkeypatch.setenv("LLMGPU_CACHE", str(tmp_path / "cache"))
    tiny_hf_dir(tmp_path / "src", rng)
    cal = tmp_path / "cal.txt"
    cal.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    a = loader.load_cached_or_quantize(tmp_path / "src", 32, progress=False, calibrate=str(cal))
    assert a.quantization["method"] == "calibrated" and a.quantization["calibration"]["text"] == "cal.txt"
    loader.load_cached_or_quantize(tmp_path / "src", 32, progress=False, calibrate=str(cal))
    assert len(list((tmp_path / "cache").iterdir())) == 1
    cal.write_text("Hello world! " * 40)
    b = loader.load_cached_or_quantize(tmp_path / "src", 32, progress=False, calibrate=str(cal))
    assert b.quantization["calibration"]["sha256"] != a.quantization["calibration"]["sha256"]
    assert len(list((tmp_path / "cache").iterdir())) == 2
    entry = next(p for p in (tmp_path / "cache").iterdir())
    assert loader.load_cached_or_quantize(entry, calibrate=str(cal)).quantization["method"] == "calibrated"
    with pytest.raises(ValueError, match="not made asymmetric"):
        loader.load_cached_or_quantize(entry, asymmetric=True)
    # another calibration algorithm (here: GPTQ rounding off) is another entry, not a stale reuse
    from llmgpu import calibrate
    assert a.quantization["calibration"]["gptq_damp"] == calibrate.GPTQ_DAMP is not None
    monkeypatch.setattr(calibrate, "GPTQ_DAMP", None)
    c = loader.load_cached_or_quantize(tmp_path / "src", 32, progress=False, calibrate=str(cal))
    assert c.quantization["calibration"]["gptq_damp"] is None
    assert len(list((tmp_path / "cache").iterdir())) == 3
    assert c.quantization["calibration"]["refit_damp"] == calibrate.REFIT_DAMP is not None  # so is the scale refit
    monkeypatch.setattr(calibrate, "REFIT_DAMP", None)
    d = loader.load_cached_or_quantize(tmp_path / "src", 32, progress=False, calibrate=str(cal))
    assert d.quantization["calibration"]["refit_damp"] is None
    assert len(list((tmp_path / "cache").iterdir())) == 4
    monkeypatch.setattr(calibrate, "REFIT_DAMP", c.quantization["calibration"]["refit_damp"])
    assert c.quantization["calibration"]["cd_sweeps"] == calibrate.CD_SWEEPS > 0  # and the coordinate descent
    monkeypatch.setattr(calibrate, "CD_SWEEPS", 0)
    e = loader.load_cached_or_quantize(tmp_path / "src", 32, progress=False, calibrate=str(cal))
    assert e.quantization["calibration"]["cd_sweeps"] == 0
    assert len(list((tmp_path / "cache").iterdir())) == 5


WORDS = ["Hello", " world", " the", " quick", " fox", "!", " café", "\n"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_perplexity_ends_on_a_signal_within_a_window(tmp_path, rng, sig):
    """SIGTERM or Ctrl-C during `llmgpu perplexity` (a real process on a tiny random model, thousands of
    windows): it ends within seconds, status 128 + signal, one line that says so, no result on stdout,
    no temp dir left in the cache. Catches: the signal's default action (killed, status -15, nothing
    said), a handler whose exception is lost (the run goes on to print a result), a slow exit."""
    tiny_hf_dir(tmp_path / "src", rng)
    (tmp_path / "t.txt").write_text("".join(rng.choice(WORDS, 60000)), encoding="utf-8")
    p = subprocess.Popen([sys.executable, "-m", "llmgpu", "perplexity", "--model", str(tmp_path / "src"),
                          "--ctx", "16", str(tmp_path / "t.txt")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=ROOT, env={**os.environ, "LLMGPU_CACHE": str(tmp_path / "cache")},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (a background shell ignores it)
    try:
        err, deadline = b"", time.monotonic() + 120
        while b"tokens, perplexity" not in err:  # the first window is scored: mid-run
            assert p.poll() is None and time.monotonic() < deadline, err.decode()
            err += os.read(p.stderr.fileno(), 4096)
        p.send_signal(sig)
        t0 = time.monotonic()
        out, rest = p.communicate(timeout=60)
    finally:
        p.kill()
    elapsed, err = time.monotonic() - t0, (err + rest).decode()
    assert p.returncode == 128 + sig, err
    said = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("llmgpu:")]
    what = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted (Ctrl-C)"
    assert said == [f"llmgpu: {what}; no result (a perplexity needs every window)"], err
    assert out == b"" and elapsed < 10, (out, elapsed)
    assert all((e / "llmgpu.json").is_file() for e in (tmp_path / "cache").iterdir())


def test_perplexity_signal_lost_by_its_handler_still_ends_the_run(monkeypatch, capsys, tmp_path):
    """A signal whose exception Python dropped (raised inside a finalizer, say) is still acted on at the
    end of the window. Catches perplexity running on to print a result after a SIGTERM."""
    from llmgpu import cli
    cls = install(monkeypatch)
    logits = cls.logits

    def first_window_then_signal(self, ids):
        cli._SIGNALS.append(signal.SIGTERM)  # as the handler records it, its exception gone astray
        return logits(self, ids)
    monkeypatch.setattr(cls, "logits", first_window_then_signal)
    (tmp_path / "t.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    rc, out, err = run(capsys, "perplexity", "--model", "fake", "--ctx", "16", "-q", str(tmp_path / "t.txt"))
    assert rc == 143 and out == "" and err.strip() == "llmgpu: terminated (SIGTERM); no result (a perplexity needs every window)"
