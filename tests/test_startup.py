"""Start-up, measured: `generate --verbose` and `llmgpu bench` report load, device, upload,
pipelines compiled and the first token; the Device counts what it compiles. No time is
asserted beyond being a number >= 0."""
import json
import re

from llmgpu import cli
from llmgpu.gpu import Device
from llmgpu.startup import Startup, first_token
from tests.fake_model import install


def test_device_counts_the_pipelines_it_compiles():
    dev = Device()
    n, s = dev.pipelines_compiled, dev.compile_seconds
    dev.pipeline("stream_read", consts={"WG": 32})
    dev.pipeline("stream_read", consts={"WG": 32})  # from the in-process cache: not compiled again
    assert dev.pipelines_compiled == n + 1 and dev.compile_seconds > s


def test_startup_line_names_every_phase():
    st = Startup(t0=0.0, load_s=1.5, device_s=0.25, upload_s=0.5)

    class Dev:
        pipelines_compiled, compile_seconds = 7, 0.75
    first_token(st, Dev(), 2.0, started=3.0)
    assert (st.pipelines, st.compile_s, st.first_token_s, st.to_first_token_s) == (7, 0.75, 2.0, 5.0)
    line = st.line()
    for text in ("load 1.50 s", "device 0.25 s", "upload 0.50 s", "7 pipelines compiled in 0.75 s",
                 "first token 2.00 s", "(5.00 s since start)"):
        assert text in line
    assert set(st.as_dict()) == {"load_s", "device_s", "upload_s", "pipelines", "compile_s", "first_token_s",
                                 "to_first_token_s"}


def test_generate_verbose_reports_startup(monkeypatch, capsys):
    install(monkeypatch, script="Paris.")
    assert cli.main(["generate", "--temperature", "0", "--verbose", "Hi"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("fake adapter | prompt")
    assert err[1].startswith("llmgpu: start-up: load ") and "3 pipelines compiled in 0.25 s" in err[1]
    assert re.search(r"first token \d+\.\d\d s after that \(\d+\.\d\d s since start\)", err[1])
    assert cli.main(["generate", "--temperature", "0", "Hi"]) == 0  # without --verbose: no start-up line
    assert "start-up" not in capsys.readouterr().err


def test_bench_reports_startup_and_profiles_prefill(capsys):
    rc = cli.main(["bench", "--shape", "tiny", "-p", "8", "-n", "2", "-r", "1", "--json", "--profile",
                   "--stream-bytes", str(8 << 20)])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0
    st = res["startup"]
    assert st["pipelines"] > 0 and st["first_token_s"] > 0 and st["to_first_token_s"] >= st["first_token_s"]
    assert all(st[k] >= 0 for k in ("load_s", "device_s", "upload_s", "compile_s"))
    pp = {r["kernel"]: r for r in res["profile_pp"]}  # the prefill step's kernels, not the decode step's
    # the GEMM is q4gsw_gemm:main (route f32, lavapipe's default) or q4gsw_gemm_i8:main (i8, a GPU's)
    gemm = [k for k in pp if k.startswith("q4gsw_gemm")]
    assert len(gemm) == 1 and "attention_prefill:main" in pp and gemm[0] not in \
        {r["kernel"] for r in res["profile"]}
    assert pp[gemm[0]]["count"] == 2 * 4 and all(r["us"] >= 0 for r in res["profile_pp"])
