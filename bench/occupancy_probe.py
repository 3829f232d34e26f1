"""How many workgroups of the decode kernel stay resident, and what limits it: the kernel's own
discovery (DecodeKernel.resident_workgroups) on a named shape, for the kernel as built and with its
workgroup-memory arrays shrunk (sizes only: discovery returns before any phase runs, so the
numbers are about occupancy, not results).
  python3 bench/occupancy_probe.py [shape ...]"""
import sys

from llmgpu.bench import random_checkpoint
from llmgpu.gpu import Device
from llmgpu.model import Model

VARIANTS = {
    "as built": {},
    "no int8 activations array (XS4, XD tiny)": {"XS4": 16, "XD": 2},
    "also no f32 head array (XF4 tiny)": {"XS4": 16, "XD": 2, "XF4": 1},
    "also 128-thread workgroups": {"XS4": 16, "XD": 2, "XF4": 1, "WG": 128},
}

dev = Device()
print("adapter:", dev.name, "| max workgroup storage", dev.max_workgroup_storage)
for shape in sys.argv[1:] or ["smollm2-135m", "llama-3.2-1b"]:
    m = Model(random_checkpoint(shape), dev=dev, max_seq=160, decode="phased")
    k = m.kernel
    for name, cfg in VARIANTS.items():
        k.config = dict(cfg)
        print(f"{shape:<14} {name:<45} resident workgroups: {k.resident_workgroups()}", flush=True)
