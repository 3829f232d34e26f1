"""Kernel ops: one Python function per WGSL entry point, each beside a NumPy reference in
tests/reference.py and tested against it (tests/test_ops.py, tests/test_kernels.py).

An op takes named GPU buffers and the shape they hold, checks the buffers, and returns a
recorded `Op` (or one per weight slice for the linears); the model strings ops together and
records them into command buffers. Bindings are matched by the names the shaders declare.

    layer.py    rmsnorm, embed, rope_kv, attention_decode, attention_prefill, silu_mul, quantize_q8
    linear.py   Q4Linear (a q4gsw weight on the GPU), gemv (decode), gemm (prefill: f32, i8, f16 routes)
    sample.py   sample (logits -> token id on the GPU), GpuSampler (its host wrapper)
    codegen.py  the only generated WGSL: the GEMV's, GEMM's and flash attention's unrolled inner loops
    core.py     Op, encode, submit, buffer checks
"""
from .core import Op, encode, submit
from .layer import (EmbeddingTable, Heads, Q8Act, attention_decode, attention_prefill, embed, flash_config,
                    flash_storage, q8_act, quantize_q8, rmsnorm, rope_kv, silu_mul)
from .linear import (GEMM_ROUTE, GEMM_ROUTES, Q4Linear, gemm, gemm_config, gemm_route, gemm_routes, gemv,
                     gemv_config, linear, run_linear, silu_gemv_config)
from .sample import GpuSampler, check_out, sample, sample_config

__all__ = ["Op", "encode", "submit", "EmbeddingTable", "Heads", "Q8Act", "attention_decode", "attention_prefill",
           "embed", "flash_config", "flash_storage", "q8_act", "quantize_q8", "rmsnorm", "rope_kv", "silu_mul",
           "GEMM_ROUTE", "GEMM_ROUTES", "Q4Linear", "gemm", "gemm_config", "gemm_route", "gemm_routes", "gemv",
           "gemv_config", "linear", "run_linear", "silu_gemv_config", "GpuSampler", "check_out", "sample",
           "sample_config"]
