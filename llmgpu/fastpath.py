"""Recording dispatches straight into wgpu-native, through wgpu-py's own cffi handles.

A decode step is hundreds of dispatches; through wgpu-py's classes each costs three Python
method calls with argument checks (about 3 µs on this project's machines), through the C API
about a quarter of that. This leans on private names of wgpu-py (`_internal`, the `_ffi`
module), so the wgpu version is pinned in pyproject.toml, `tests/test_fastpath.py` checks both
routes give the same results, and anything missing falls back to the public API
(`AVAILABLE = False`, which a test forces).
"""
from __future__ import annotations

try:  # wgpu-py 0.32's private layout
    from wgpu.backends.wgpu_native._ffi import ffi, lib

    _set_pipeline = lib.wgpuComputePassEncoderSetPipeline
    _set_bind_group = lib.wgpuComputePassEncoderSetBindGroup
    _dispatch = lib.wgpuComputePassEncoderDispatchWorkgroups
    _NULL = ffi.NULL
    AVAILABLE = True
except (ImportError, AttributeError):  # pragma: no cover - another wgpu-py
    AVAILABLE = False


def compile_ops(ops) -> list | None:
    """The raw handles of each op: (pipeline, bind group, x, y, z), or None where the C route is
    off. The ops keep the objects alive."""
    if not AVAILABLE:
        return None
    return [(op.pipe.pipeline._internal, op.bind_group._internal, *op.grid) for op in ops]


def record(cpass, ops, raw: list | None = None) -> None:
    """Record `ops` into a compute pass (raw: compile_ops(ops), to skip that step)."""
    if not AVAILABLE:  # wgpu-py's public classes (tests force this route too)
        for op in ops:
            op.record(cpass)
        return
    p = cpass._internal
    last = None
    for pl, bg, x, y, z in raw if raw is not None else compile_ops(ops):
        if pl != last:
            _set_pipeline(p, pl)
            last = pl
        _set_bind_group(p, 0, bg, 0, _NULL)
        _dispatch(p, x, y, z)
