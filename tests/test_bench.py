"""`llmgpu bench` and `llmgpu bench kernels` on lavapipe (CI): the commands run, their output
parses and carries its fields, errors are one clear line. No speed is asserted here."""
import json
import re
import subprocess
import sys

import pytest

from llmgpu import cli
from llmgpu.bench import random_checkpoint
from llmgpu.shapes import get_shape


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_bench_json_fields(capsys):
    rc, out, _ = run(capsys, "bench", "--shape", "tiny", "-p", "16", "-n", "4", "-r", "2", "--json",
                     "--stream-bytes", str(8 << 20))
    assert rc == 0
    res = json.loads(out)
    assert res["model"] == "tiny" and res["stream_read_gbs"] > 0 and res["repetitions"] == 2
    pp, tg = res["rows"]
    assert pp["test"] == "pp16" and pp["tps"] > 0 and pp["sd"] >= 0
    assert tg["test"] == "tg4" and tg["tps"] > 0
    for k in ("bytes_per_token", "gbs", "roofline_pct", "encode_ms", "dispatches"):
        assert tg[k] > 0, k
    assert tg["dispatches"] == 1 + 2 * 7 + 2  # embed, 7 per layer, final norm + lm_head


def test_bench_table_csv_and_profile(capsys):
    rc, out, _ = run(capsys, "bench", "--shape", "tiny", "-p", "8", "-n", "2", "-r", "1", "--profile",
                     "--stream-bytes", str(8 << 20))
    assert rc == 0
    lines = out.splitlines()
    assert any(re.search(r"\|\s+pp8 \|", ln) for ln in lines) and any(re.search(r"\|\s+tg2 \|", ln) for ln in lines)
    assert "GPU time of one decode step by kernel" in out and "q4gsw_gemv:main" in out
    rc, out, _ = run(capsys, "bench", "--shape", "tiny", "-p", "8", "-n", "2", "-r", "1", "--csv",
                     "--stream-bytes", str(8 << 20))
    rows = out.strip().splitlines()
    assert rc == 0 and rows[0].startswith("model,adapter,test,tps") and len(rows) == 3


def test_profile_png(capsys, tmp_path):
    png = tmp_path / "profile.png"
    rc, out, err = run(capsys, "bench", "--shape", "tiny", "-p", "0", "-n", "2", "-r", "1", "--profile",
                       "--profile-png", str(png), "--stream-bytes", str(8 << 20))
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in err


def test_bench_kernels_json(capsys):
    rc, out, _ = run(capsys, "bench", "kernels", "--shapes", "tiny", "-m", "8", "--repeat", "4", "--json",
                     "--stream-bytes", str(8 << 20), "--cache-bytes", str(1 << 20))
    assert rc == 0
    res = json.loads(out)
    s = get_shape("tiny")
    shapes = {(r["N"], r["K"]) for r in res["rows"]}
    assert (s["vocab_size"], s["hidden_size"]) in shapes and (s["hidden_size"], s["intermediate_size"]) in shapes
    for r in res["rows"]:
        assert r["gemv_us"] > 0 and r["gemv_gbs"] > 0 and r["roofline_pct"] > 0
        assert r["gemm_tflops"] > 0 if r["proj"] != "gu+silu" else "gemm_ms" not in r
    silu = [r for r in res["rows"] if r["proj"] == "gu+silu"]  # decode's fused gate/up + SiLU GEMV
    assert len(silu) == 1 and (silu[0]["N"], silu[0]["K"]) == (2 * s["intermediate_size"], s["hidden_size"])


def test_bench_kernels_offsets_both(capsys, monkeypatch):
    """--offsets both: each shape timed without, then with per-group offsets (the weights built with
    them, so the kernels' offset path runs), and the ratio per shape and route. Catches: the flag not
    reaching the weights (both runs symmetric), ratios paired across different shapes or inverted."""
    from llmgpu import bench_kernels
    made = []

    class Recording(bench_kernels.Q4Linear):
        def __init__(self, dev, t, *a, **k):
            made.append(t.offsets is not None)
            super().__init__(dev, t, *a, **k)
    monkeypatch.setattr(bench_kernels, "Q4Linear", Recording)
    rc, out, _ = run(capsys, "bench", "kernels", "--shapes", "tiny", "-m", "8", "--repeat", "4", "--json",
                     "--offsets", "both", "--no-lm-head", "--stream-bytes", str(8 << 20), "--cache-bytes", "0")
    assert rc == 0
    res = json.loads(out)
    rows, cost = res["rows"], res["offsets_cost"]
    assert True in made and False in made
    assert [r["offsets"] for r in rows] == [False, True] * (len(rows) // 2) and len(cost) == len(rows) // 2
    for (a, b), c in zip(zip(rows[::2], rows[1::2]), cost):
        assert (a["N"], a["K"], a["proj"]) == (b["N"], b["K"], b["proj"]) == (c["N"], c["K"], c["proj"])
        assert b["weight_bytes"] == a["weight_bytes"] + 4 * a["N"] * a["K"] // a["group_size"]
        assert c["gemv_ratio"] == pytest.approx(b["gemv_us"] / a["gemv_us"])
        for route in res["capabilities"]["gemm_routes"]:
            if a["proj"] != "gu+silu":
                assert c[f"gemm_{route}_ratio"] == pytest.approx(b[f"gemm_{route}_ms"] / a[f"gemm_{route}_ms"])
    rc, out, _ = run(capsys, "bench", "kernels", "--shapes", "tiny", "-m", "8", "--repeat", "2", "--no-gemm",
                     "--offsets", "both", "--max-k", "256", "--no-lm-head", "--stream-bytes", str(8 << 20), "--cache-bytes", "0")
    assert rc == 0 and " off" in out and "time with offsets / without" in out and "geometric mean: gemv" in out


def test_gemm_routes_in_both_benchmarks(capsys):
    """`bench --gemm a,b` runs pp once per route on one model; `bench kernels` times every route the
    adapter has and reports the cooperative-matrix probe (lavapipe lists no such feature)."""
    rc, out, _ = run(capsys, "bench", "--shape", "tiny", "-p", "16", "-n", "0", "-r", "1", "--json",
                     "--gemm", "f32,i8", "--stream-bytes", str(8 << 20))
    assert rc == 0
    rows = json.loads(out)["rows"]
    assert [(r["test"], r["gemm"]) for r in rows] == [("pp16 f32", "f32"), ("pp16 i8", "i8")]
    assert all(r["tps"] > 0 for r in rows)
    rc, out, _ = run(capsys, "bench", "kernels", "--shapes", "tiny", "-m", "8", "--repeat", "4", "--json",
                     "--no-gemv", "--no-lm-head", "--stream-bytes", str(8 << 20), "--cache-bytes", str(1 << 20))
    assert rc == 0
    res = json.loads(out)
    caps = res["capabilities"]
    assert caps["cooperative_matrix"] in ("not listed", "granted") or caps["cooperative_matrix"].startswith("refused")
    assert caps["gemm_route_auto"] in caps["gemm_routes"] and "i8" in caps["gemm_routes"]
    assert res["rows"] and all(r["proj"] != "lm_head" and "gemv_us" not in r for r in res["rows"])
    for r in res["rows"]:
        for route in caps["gemm_routes"]:
            assert r[f"gemm_{route}_tflops"] > 0 and r[f"gemm_{route}_config"]["BM"] > 0
        assert r["gemm_route"] in caps["gemm_routes"]


@pytest.mark.parametrize("argv,msg", [
    (["bench", "--shape", "no-such-shape"], "unknown shape 'no-such-shape'"),
    (["bench", "--shape", "tiny", "--model", "x"], "--model or --shape, not both"),
    (["bench", "kernels", "--shapes", "nope"], "unknown shape"),
    (["bench", "-p", "notanumber"], "invalid int value"),
])
def test_bench_errors_are_one_line(argv, msg):
    r = subprocess.run([sys.executable, "-m", "llmgpu.cli", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmgpu: error:") and msg in lines[0], r.stderr


def test_random_checkpoint_has_the_preset_dimensions():
    ck = random_checkpoint("tiny")
    s = get_shape("tiny")
    assert ck.config.hidden_size == s["hidden_size"] and ck.config.num_hidden_layers == s["num_hidden_layers"]
    assert ck.tensors["model.layers.1.mlp.down_proj.weight"].shape == (s["hidden_size"], s["intermediate_size"])
    assert all(t.offsets is None for t in ck.tensors.values() if hasattr(t, "offsets"))


def test_bench_with_offsets_runs_the_model_with_them(capsys, monkeypatch):
    """`bench --shape S --offsets yes`: every layer linear carries offsets (lm_head does not, as
    `quantize --asymmetric` leaves it), the model runs, and the report says so."""
    from llmgpu import bench
    made = []
    real = bench.random_checkpoint

    def spy(*a, **k):
        ck = real(*a, **k)
        made.append(ck)
        return ck
    monkeypatch.setattr(bench, "random_checkpoint", spy)
    rc, out, _ = run(capsys, "bench", "--shape", "tiny", "--offsets", "yes", "-p", "4", "-n", "2", "-r", "1", "--json",
                     "--stream-bytes", str(8 << 20))
    assert rc == 0 and json.loads(out)["model"] == "tiny (offsets)"
    (ck,) = made
    layers = [t for n, t in ck.tensors.items() if n.startswith("model.layers.") and hasattr(t, "offsets")]
    assert len(layers) == 7 * ck.config.num_hidden_layers and all(t.offsets is not None for t in layers)
    assert ck.tensors["lm_head.weight"].offsets is None


def test_bench_depth_and_decode_schedule(capsys):
    """-d N decodes after a prompt of N tokens; the row says how the step ran: the decode kernel's
    phased schedule is 5 phases a layer and the head, each its own dispatch."""
    rc, out, _ = run(capsys, "bench", "--shape", "tiny", "-p", "0", "-n", "2", "-d", "5", "-r", "1", "--json",
                     "--decode", "phased", "--stream-bytes", str(8 << 20))
    assert rc == 0
    (row,) = json.loads(out)["rows"]
    assert row["test"] == "tg2 @ d5" and row["schedule"] == "phased"
    assert row["phases"] == row["dispatches"] == 5 * 2 + 1 and row["barriers"] == 0


@pytest.mark.parametrize("argv,msg", [
    (["bench", "kernels", "--shapes", "tiny,nope"], "unknown shape 'nope'"),
    (["bench", "kernels", "--shapes", "tiny", "-m", "0"], "-m must be >= 1"),
    (["bench", "kernels", "--shapes", "tiny", "--repeat", "0"], "--repeat must be >= 1"),
    (["bench", "kernels", "--shapes", "tiny", "--stream-bytes", "0"], "--stream-bytes must be >= 16"),
    (["bench", "--shape", "nope"], "unknown shape 'nope'"),
    (["bench", "--shape", "tiny", "--model", "x"], "--model or --shape, not both"),
    (["bench", "--shape", "tiny", "-r", "0"], "-r must be >= 1"),
    (["bench", "--shape", "tiny", "-p", "-1"], "-p must be >= 0"),
    (["bench", "--shape", "tiny", "-p", "0", "-n", "0"], "nothing to measure"),
    (["bench", "--shape", "tiny", "-p", "64", "--ctx", "32"], "exceed the context 32"),
    (["bench", "--shape", "tiny", "--kernel-config", "WG"], "expected NAME=INTEGER"),
    (["bench", "--shape", "tiny", "--profile-png", "x.png"], "--profile-png needs --profile"),
    (["bench", "--model", "./no/such/model.gguf"], "no such file or directory"),
    (["bench", "--shape", "tiny", "--gemm", "f32,int4"], "--gemm 'int4': expected auto, f32, i8, f16"),
    (["bench", "kernels", "--shapes", "tiny", "--gemm", "i4"], "--gemm 'i4': expected auto, f32, i8, f16"),
    (["bench", "kernels", "--shapes", "tiny", "--no-gemm", "--no-gemv"], "leave nothing to measure"),
    (["bench", "--shape", "tiny", "--offsets", "both"], "run it once with and once without"),
    (["bench", "--offsets", "yes"], "a checkpoint's own weights decide"),
])
def test_bench_arguments_fail_before_the_device(monkeypatch, capsys, argv, msg):
    """Bad arguments are refused before the adapter is opened (let alone the bandwidth measured)."""
    from llmgpu import bench, bench_kernels

    def no_device(*a, **k):
        raise AssertionError("the device was opened before the arguments were checked")
    monkeypatch.setattr(bench, "Device", no_device)
    monkeypatch.setattr(bench_kernels, "Device", no_device)
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and msg in err, err
