"""Model configuration: Hugging Face field names, built by filtering config.json or GGUF metadata.

Supported architectures are the decoder-only RMSNorm + RoPE + SwiGLU family:

* ``llama``   (also SmolLM/SmolLM2, TinyLlama, Llama 2/3.x): optional qkv bias (``attention_bias``).
* ``mistral`` same graph as llama; a ``sliding_window`` smaller than the context is recorded so the
  runtime can refuse longer contexts (it implements full attention only).
* ``qwen2``   llama + qkv biases (always).
* ``qwen3``   llama + per-head RMSNorm on q and k (``qk_norm``), no biases by default.

Refused with a message (rather than loaded and run wrong): other model types, activations other than
SiLU, llama ``mlp_bias``, partial rotary embeddings, per-layer sliding windows (qwen2/qwen3
``use_sliding_window`` or non-full ``layer_types``), and RoPE scaling types other than default,
``linear`` and ``llama3``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# HF's per-class defaults for fields that config.json may omit.
_DEFAULT_MAX_POS = {"llama": 2048, "mistral": 131072, "qwen2": 32768, "qwen3": 32768}
_DEFAULT_HEAD_DIM = {"qwen3": 128}  # Qwen3Config's default; others derive hidden_size // heads


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads (filled in __post_init__)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, hash=False)  # {"rope_type": "llama3"|"linear", ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry biases
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (qwen3)
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    sliding_window: int | None = None  # set only when smaller than max_position_embeddings

    def __post_init__(self):
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                                 f"{self.num_attention_heads}; the config needs an explicit head_dim")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        eos = self.eos_token_id
        eos = () if eos is None else (eos,) if isinstance(eos, (int, np.integer)) else eos
        object.__setattr__(self, "eos_token_id", tuple(int(e) for e in eos))
        if self.bos_token_id is not None:
            object.__setattr__(self, "bos_token_id", int(self.bos_token_id))
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} is odd; RoPE needs an even head_dim")

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    # ---- Hugging Face config.json ------------------------------------------------------------

    @classmethod
    def from_hf(cls, d: dict) -> ModelConfig:
        """Build from a config.json dict (transformers 4.x ``rope_scaling`` or 5.x ``rope_parameters``)."""
        check_hf_types(d)
        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {mt!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if d.get(k) is None]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}; is this a complete {mt} checkpoint?")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported (llmgpu implements SiLU-gated MLPs only)")
        if d.get("quantization_config"):
            q = d["quantization_config"].get("quant_method", "?")
            raise ValueError(f"pre-quantized Hugging Face checkpoints ({q}) are not supported; load the float "
                             "checkpoint (llmgpu quantizes it to q4gsw) or a Q4_0/Q4_1 GGUF")
        if d.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported (llmgpu's MLP has no biases)")

        theta, scaling = _rope_from_hf(d)
        max_pos = int(d.get("max_position_embeddings") or _DEFAULT_MAX_POS[mt])

        sliding = d.get("sliding_window")
        layer_types = d.get("layer_types") or []
        if any(t != "full_attention" for t in layer_types):
            raise ValueError(f"per-layer attention types {sorted(set(layer_types))} are not supported "
                             "(llmgpu implements full attention only)")
        if mt == "mistral":
            sliding = int(sliding) if sliding and sliding < max_pos else None
        else:
            if mt in ("qwen2", "qwen3") and d.get("use_sliding_window") and sliding and sliding < max_pos:
                raise ValueError("use_sliding_window=True is not supported (per-layer windows); "
                                 "set it to false in config.json only if the model was trained without it")
            sliding = None

        return cls(
            model_type=mt,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
            head_dim=d.get("head_dim") or _DEFAULT_HEAD_DIM.get(mt),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=True if mt == "qwen2" else (mt != "mistral" and bool(d.get("attention_bias", False))),
            qk_norm=mt == "qwen3",
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            sliding_window=sliding,
        )

    def to_hf(self) -> dict:
        """A config.json dict that transformers and :meth:`from_hf` both read back to this config."""
        d = asdict(self)
        d.pop("qk_norm")
        d["eos_token_id"] = list(self.eos_token_id) if len(self.eos_token_id) != 1 else self.eos_token_id[0]
        d["architectures"] = [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                               "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[self.model_type]]
        d["hidden_act"] = "silu"
        if self.model_type == "qwen2":
            d.pop("attention_bias")
        if self.model_type != "mistral":
            d.pop("sliding_window")
        return d

    # ---- GGUF metadata -----------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, reader) -> ModelConfig:
        """Build from a ``gguf.GGUFReader`` (llama, qwen2 and qwen3 architectures)."""
        arch = gguf_value(reader, "general.architecture")
        if not isinstance(arch, str) or arch not in ("llama", "qwen2", "qwen3"):
            raise ValueError(f"unsupported GGUF architecture {arch!r} (supported: llama, qwen2, qwen3)")

        def get(key, default=None):
            return _gguf_arch_value(reader, arch, key, default)

        missing = [k for k in ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")
                   if get(k) is None]
        if missing:
            raise ValueError(f"GGUF metadata lacks {', '.join(arch + '.' + k for k in missing)}; "
                             "the file is incomplete or not a language model")
        names = {t.name for t in reader.tensors}
        n_head = int(get("attention.head_count"))
        hidden = int(get("embedding_length"))
        head_dim = int(get("attention.key_length") or hidden // n_head)
        rot = get("rope.dimension_count")
        if rot is not None and int(rot) != head_dim:
            raise ValueError(f"partial rotary embeddings (rope.dimension_count {rot} != head_dim {head_dim}) "
                             "are not supported")
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = get("vocab_size") or (len(tokens.data) if tokens is not None else None)
        if not vocab:
            raise ValueError("GGUF has no vocabulary (no tokenizer.ggml.tokens); the file is incomplete")
        theta = _f32(get("rope.freq_base", 10000.0))
        max_pos = int(get("context_length", 2048))

        scaling = _gguf_rope_scaling(reader, get, theta, head_dim)

        eos = [gguf_value(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        if not all(e is None or _token_id(e) for e in eos + [gguf_value(reader, "tokenizer.ggml.bos_token_id")]):
            raise ValueError("GGUF tokenizer.ggml.*_token_id must be integers >= 0; the file is damaged")
        return cls(
            model_type=arch,
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_hidden_layers=int(get("block_count")),
            num_attention_heads=n_head,
            num_key_value_heads=int(get("attention.head_count_kv") or n_head),
            head_dim=head_dim,
            rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=max_pos,
            tie_word_embeddings="output.weight" not in names,
            attention_bias=arch == "qwen2" or "blk.0.attn_q.bias" in names,
            qk_norm=arch == "qwen3" or "blk.0.attn_q_norm.weight" in names,
            bos_token_id=gguf_value(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_id=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
        )


def _gguf_rope_scaling(reader, get, theta: float, head_dim: int) -> dict | None:
    """HF rope_scaling from GGUF metadata: linear from rope.scaling.*, llama3 from a rope_freqs tensor."""
    scaling = None
    stype = get("rope.scaling.type")
    if stype == "linear" and float(get("rope.scaling.factor", 1.0)) != 1.0:
        scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif stype not in (None, "none", "linear"):
        raise ValueError(f"GGUF rope scaling {stype!r} is not supported (supported: none, linear, "
                         "llama3 via rope_freqs)")
    t = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if t is not None:
        scaling = _llama3_from_freq_factors(np.asarray(t.data, np.float64), theta, head_dim)
    return scaling


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(v) -> bool:
    return _is_int(v) and v > 0


def _token_id(v) -> bool:
    return _is_int(v) and v >= 0


def _positive_number(v) -> bool:
    return _is_number(v) and v > 0


# config.json field -> (check, what it must be); None counts as absent. Checked before use, so that
# "64" or a list fails here with the field's name, not as an AttributeError or a wrong model later.
_HF_FIELDS = {
    **{k: (_positive_int, "an integer > 0") for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")},
    **{k: (_positive_number, "a number > 0") for k in ("rms_norm_eps", "rope_theta")},
    **{k: (lambda v: isinstance(v, bool), "true or false") for k in (
        "tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window")},
    **{k: (lambda v: isinstance(v, dict), "an object") for k in (
        "rope_scaling", "rope_parameters", "quantization_config")},
    **{k: (lambda v: isinstance(v, str), "a string") for k in ("model_type", "hidden_act")},
    "bos_token_id": (_token_id, "a token id (an integer >= 0)"),
    "eos_token_id": (lambda v: _token_id(v) or isinstance(v, list) and all(map(_token_id, v)),
                     "a token id or a list of them"),
    "layer_types": (lambda v: isinstance(v, list), "a list"),
}
_ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
                 "rope_theta")


# GGUF {arch}.* metadata, by the last part of the key.
_GGUF_FIELDS = {
    **{k: (_positive_int, "an integer > 0") for k in (
        "embedding_length", "block_count", "feed_forward_length", "head_count", "head_count_kv", "key_length",
        "dimension_count", "vocab_size", "context_length")},
    **{k: (_positive_number, "a number > 0") for k in ("freq_base", "layer_norm_rms_epsilon", "factor")},
    "type": (lambda v: isinstance(v, str), "a string"),
}


def check_hf_types(d) -> None:
    """Raise a ValueError naming the first config.json field whose type or range is wrong."""
    if not isinstance(d, dict):
        raise ValueError(f"config.json must hold a JSON object, got a {type(d).__name__}")
    fields = [(k, d.get(k), *_HF_FIELDS[k]) for k in _HF_FIELDS]
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(d.get(key), dict):
            fields += [(f"{key}.{k}", v, _positive_number, "a number > 0")
                       for k, v in d[key].items() if k in _ROPE_NUMBERS]
    for key, v, ok, what in fields:
        if v is not None and not ok(v):
            raise ValueError(f"config.json: {key} must be {what}, got {v!r}; fix config.json or re-download it")


def _gguf_arch_value(reader, arch: str, key: str, default=None):
    """GGUF ``{arch}.{key}``, checked against :data:`_GGUF_FIELDS` (one value, of the right type)."""
    v = gguf_value(reader, f"{arch}.{key}", default)
    if isinstance(v, list):
        raise ValueError(f"GGUF {arch}.{key} varies per layer; that is not supported")
    check, what = _GGUF_FIELDS.get(key.rsplit(".", 1)[-1], (None, ""))
    if v is not None and check is not None and not check(v):
        raise ValueError(f"GGUF metadata {arch}.{key} must be {what}, got {v!r}; the file is damaged "
                         "or was written by an unsupported converter")
    return v


def _rope_from_hf(d: dict) -> tuple[float, dict | None]:
    rp = d.get("rope_parameters")
    if rp and any(isinstance(v, dict) for v in rp.values()):
        raise ValueError("per-layer-type rope_parameters are not supported")
    if rp:
        theta = rp.get("rope_theta", d.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
    else:
        theta = d.get("rope_theta", 10000.0)
        scaling = dict(d.get("rope_scaling") or {})
    prf = scaling.pop("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    if prf not in (None, 1, 1.0):
        raise ValueError(f"partial_rotary_factor {prf} is not supported (RoPE over the full head only)")
    rtype = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if rtype not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope scaling type {rtype!r} is not supported (supported: "
                         f"{', '.join(SUPPORTED_ROPE_TYPES)}); this checkpoint needs a runtime that has it")
    if rtype == "default":
        return float(theta), None
    if rtype == "linear" and "factor" not in scaling:
        raise ValueError("linear rope scaling without a 'factor' in config.json")
    if rtype == "llama3":
        need = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in scaling]
        if need:
            raise ValueError(f"llama3 rope scaling lacks {', '.join(need)} in config.json")
    return float(theta), {"rope_type": rtype, **scaling}


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """(head_dim // 2,) float64 inverse frequencies, as transformers computes them (default/linear/llama3).

    Rotation angle of pair i at position p is ``p * inv_freq[i]`` (HF's rotate_half pairing: element i
    with element i + head_dim/2).
    """
    hd = cfg.head_dim
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    s = cfg.rope_scaling
    if s is None:
        return inv
    if s["rope_type"] == "linear":
        return inv / float(s["factor"])
    assert s["rope_type"] == "llama3", s
    factor, lo, hi = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_ctx = float(s.get("original_max_position_embeddings") or cfg.max_position_embeddings)
    wavelen = 2 * math.pi / inv
    # Long wavelengths (beyond old_ctx / lo) are slowed by `factor`, short ones (below old_ctx / hi)
    # are kept, and the band between blends the two linearly in old_ctx / wavelen.
    out = np.where(wavelen > old_ctx / lo, inv / factor, inv)
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    mid = (wavelen >= old_ctx / hi) & (wavelen <= old_ctx / lo)
    return np.where(mid, (1 - smooth) * inv / factor + smooth * inv, out)


def _llama3_from_freq_factors(factors: np.ndarray, theta: float, head_dim: int) -> dict:
    """llama.cpp stores Llama 3.x rope scaling as per-frequency divisors; recover HF's parameters."""
    scaling = {"rope_type": "llama3", "factor": float(factors.max()), "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    probe = ModelConfig("llama", 1, head_dim, 1, 1, 1, 1, head_dim=head_dim, rope_theta=theta,
                        rope_scaling=scaling)
    base = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if factors.shape != base.shape or not np.allclose(base / rope_inv_freq(probe), factors, rtol=1e-4):
        raise ValueError("GGUF rope_freqs do not match Llama 3 scaling with the standard parameters; "
                         "load the Hugging Face checkpoint instead")
    return scaling


def _f32(v) -> float:
    """GGUF stores floats as f32; return the shortest decimal that rounds to it (1e-05, not 9.99e-06)."""
    return float(str(np.float32(v)))


def gguf_value(reader, key: str, default=None):
    """A GGUF metadata value as a Python value (str, int, float, bool, list), or ``default``."""
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v.item() if isinstance(v, np.generic) else v
