"""Shared fixtures: fresh random seeds (printed on failure) and GPU devices on both code paths."""
import os
import secrets

import numpy as np
import pytest

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


@pytest.fixture
def rng(request):
    """A fresh generator every run; LLMGPU_SEED=<n> replays a failure."""
    seed = int(os.environ.get("LLMGPU_SEED") or secrets.randbits(32))
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for k, v in item.user_properties:
            if k == "seed":
                rep.sections.append(("random seed", f"LLMGPU_SEED={v} reproduces this run"))


_devices = {}


def get_device(f16=None, subgroups=None, coherent=None):
    from llmgpu.gpu import Device
    key = (f16, subgroups, coherent)
    if key not in _devices:
        _devices[key] = Device(f16=f16, subgroups=subgroups, coherent=coherent)
    return _devices[key]


@pytest.fixture(params=[("f16", "subgroups"), ("f32", "shared-memory")],
                ids=lambda p: "-".join(p))
def dev(request):
    """The adapter's fast path (f16 + subgroups where present) and the full fallback path."""
    fast = request.param[0] == "f16"
    return get_device(f16=None if fast else False, subgroups=None if fast else False)
