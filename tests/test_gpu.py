"""The device layer: adapter choice, limits and features, the pipeline cache, the preprocessor."""
import subprocess
import sys

import numpy as np
import pytest

from llmgpu.gpu import Device, GpuError, choose_adapter, preprocess


def test_adapter_by_name_or_backend_and_a_clear_error(monkeypatch):
    a = choose_adapter("vulkan")
    assert a.info["backend_type"] == "Vulkan"
    with pytest.raises(GpuError, match="no adapter matches 'no-such-gpu'; available: .*Vulkan"):
        choose_adapter("no-such-gpu")
    monkeypatch.setenv("LLMGPU_ADAPTER", "no-such-gpu")
    with pytest.raises(GpuError, match="no-such-gpu"):
        Device()


def test_cli_adapter_flag_error_is_one_line():
    r = subprocess.run([sys.executable, "-m", "llmgpu.cli", "--adapter", "no-such-gpu", "bench", "kernels",
                        "--shapes", "tiny"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "no adapter matches" in r.stderr


def test_limits_and_features_come_from_the_adapter(capsys):
    dev = Device(verbose=True)
    assert dev.max_binding == dev.adapter.limits["max-storage-buffer-binding-size"]
    assert dev.max_buffer == dev.adapter.limits["max-buffer-size"]
    assert dev.has_f16 == ("shader-f16" in dev.adapter.features)
    assert "adapter" in capsys.readouterr().err  # which adapter was chosen is printed
    fallback = Device(f16=False, subgroups=False, timestamps=False)
    assert not (fallback.has_f16 or fallback.has_subgroups or fallback.has_timestamps)
    assert fallback.act_dtype == np.float32


def test_pipelines_compiled_once_per_key():
    dev = Device()
    a = dev.pipeline("stream_read", consts={"WG": 64})
    assert dev.pipeline("stream_read", consts={"WG": 64}) is a
    assert dev.pipeline("stream_read", consts={"WG": 128}) is not a


def test_preprocess():
    src = "a\n//#if X\nb\n//#else\nc\n//#endif\n//#if !X\nd\n//#endif\ne"
    assert preprocess(src, {"X": True}) == ("a\nb\ne", {"X"})
    assert preprocess(src, {"X": False}) == ("a\nc\nd\ne", {"X"})
    with pytest.raises(ValueError, match="unbalanced"):
        preprocess("//#if X\n", {"X": True})
    with pytest.raises(GpuError, match="flag Y"):
        preprocess("//#if Y\n//#endif\n", {"X": True})


def test_workgroup_size_checked_against_the_limit():
    dev = Device()
    with pytest.raises(GpuError, match="exceeds this adapter's limit"):
        dev.pipeline("stream_read", consts={"WG": dev.max_invocations * 2})
