"""Start-up, measured: what a command spends before its first token (`generate --verbose`,
`llmgpu bench`). Model.load(startup=...) times its three steps: the quantized checkpoint (from
the cache when warm), the device, the upload; then the first prefill, which also compiles the
pipelines its step needs (the Device counts them and the time spent)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Startup:
    t0: float = field(default_factory=time.perf_counter)  # when the command started
    load_s: float = 0.0  # checkpoint from disk (the quantized cache, or quantizing it)
    device_s: float = 0.0  # adapter and device
    upload_s: float = 0.0  # weights, KV cache and scratch buffers onto the device
    pipelines: int = 0  # pipelines compiled before the first token
    compile_s: float = 0.0  # of which wall time in shader-module and pipeline creation
    first_token_s: float = 0.0  # the first prefill and sample (compilation included)
    to_first_token_s: float = 0.0  # from t0 to the first token

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "t0"}

    def line(self) -> str:
        return (f"llmgpu: start-up: load {self.load_s:.2f} s, device {self.device_s:.2f} s, upload "
                f"{self.upload_s:.2f} s, {self.pipelines} pipelines compiled in {self.compile_s:.2f} s, first "
                f"token {self.first_token_s:.2f} s after that ({self.to_first_token_s:.2f} s since start)")


def first_token(st: Startup, dev, seconds: float, started: float) -> None:
    """Record the first token: `seconds` of prefill and sampling that began at perf_counter()
    `started`, and the pipelines the device has compiled so far (a Device made for this model:
    the ones its first step needed, and any a benchmark compiled before)."""
    st.first_token_s = seconds
    st.pipelines = dev.pipelines_compiled
    st.compile_s = dev.compile_seconds
    st.to_first_token_s = started + seconds - st.t0
