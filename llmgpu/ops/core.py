"""What every op shares: `Op` (one recorded dispatch), encoding and submitting a list of ops,
and the checks that a buffer is large enough for the shape an op was given."""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import fastpath
from ..gpu import Device, Pipeline


@dataclass
class Op:
    """One dispatch: a pipeline, its bind group and a grid, built once and recorded into any
    number of compute passes."""

    pipe: Pipeline
    bind_group: object
    grid: tuple[int, int, int]
    keep: list = field(default_factory=list, repr=False)  # buffers only the bind group holds

    @property
    def name(self) -> str:
        return self.pipe.name

    def record(self, cpass) -> None:
        cpass.set_pipeline(self.pipe.pipeline)
        cpass.set_bind_group(0, self.bind_group)
        cpass.dispatch_workgroups(*self.grid)


def make_op(dev: Device, pipe: Pipeline, binds: dict, grid, params: list) -> Op:
    """An Op whose uniform `P` holds `params` (u32 for ints, f32 for floats)."""
    u = dev.uniform(params, label=f"{pipe.name}.P")
    return Op(pipe, dev.bind_group(pipe, {"P": u, **binds}), tuple(grid), keep=[u])


def encode(dev: Device, ops: list[Op], raw: list | None = None, after=None):
    """A command buffer with `ops` in one compute pass (raw: fastpath.compile_ops(ops), computed
    once for ops recorded often); after(encoder) may append copies behind the pass."""
    enc = dev.device.create_command_encoder()
    cpass = enc.begin_compute_pass()
    fastpath.record(cpass, ops, raw)
    cpass.end()
    if after is not None:
        after(enc)
    return enc.finish()


def submit(dev: Device, ops: list[Op], sync: bool = False, raw: list | None = None) -> None:
    """Record `ops` into one compute pass and submit (optionally wait for the GPU)."""
    dev.queue.submit([encode(dev, ops, raw)])
    if sync:
        dev.sync()


def nbytes(buf) -> int:
    """Bytes a binding sees: a buffer, or (buffer, byte offset, size)."""
    return buf[2] if isinstance(buf, tuple) else buf.size


def need(op: str, what: str, buf, size: int) -> None:
    """Refuse a buffer smaller than the shape the op was given (a wiring error, not user input)."""
    if nbytes(buf) < size:
        raise ValueError(f"{op}: {what} holds {nbytes(buf)} bytes but the shape needs {size}")


def esize(t: str) -> int:
    """Bytes of a WGSL scalar type name."""
    return {"f16": 2, "f32": 4, "u32": 4}[t]
