"""Checkpoints in, one in-memory form out: config + HF-named tensors + tokenizer + chat metadata.

Sources (:func:`load_checkpoint`):

* a Hugging Face model directory: config.json, model.safetensors (or a sharded index), tokenizer.json,
  tokenizer_config.json, generation_config.json; f32, f16 and bf16 weights (bf16 without torch);
* a hub id ``org/name``: fetched with ``huggingface_hub.snapshot_download`` (honours HF_HUB_OFFLINE
  and HF_HUB_CACHE);
* a ``.gguf`` file (llama, qwen2, qwen3): Q4_0/Q4_1 linears convert exactly to q4gsw, other types are
  dequantized; llama.cpp's Q/K row permutation is undone;
* a q4gsw directory written by :func:`save_q4_checkpoint` (``llmgpu.json`` marks it).

Tensor names are always Hugging Face's (``model.layers.{i}.self_attn.q_proj.weight`` ...). Linear
weights are (out_features, in_features), either float arrays or :class:`~llmgpu.quant.Q4Tensor`.
``lm_head.weight`` is absent for tied embeddings, except that quantizing (or a GGUF whose tied
embedding is Q4) adds a q4gsw ``lm_head.weight``: the runtime should use ``lm_head.weight`` when
present and the embedding otherwise. llama with ``attention_bias`` also has ``o_proj.bias``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .config import ModelConfig, gguf_value
from .quant import (DEFAULT_GROUP_SIZE, GROUP_SIZES, Q4Tensor, Q8Tensor, dequantize, from_gguf_q4_0, from_gguf_q4_1,
                    group_size_for, quantize, quantize_q8)
from .tokenizer import tokenizer_from_gguf

FORMAT, FORMAT_VERSION = "q4gsw", 2  # 2: int8 lm_head (<name>.q8weight/.scales)
LINEAR_SUFFIXES = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                   "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                   "mlp.down_proj.weight")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "model*.safetensors", "model.safetensors.index.json", "llmgpu.json"]


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict[str, np.ndarray | Q4Tensor]  # HF names; linears (out_features, in_features)
    tokenizer: Tokenizer
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    eos_token_ids: tuple[int, ...] = ()  # any of these ends generation
    add_bos: bool = False  # prompts start with BOS (see tokenizer.encode_prompt)
    source: str = ""
    group_size: int | None = None  # shared by all Q4Tensors (None: no Q4, or mixed; each carries its own)
    quant_errors: dict[str, float] = field(default_factory=dict)  # relative Frobenius error per tensor
    quantization: dict = field(default_factory=dict)  # how llmgpu quantized it (llmgpu.json "quantization")

    @property
    def bos_token_id(self) -> int | None:
        if self.bos_token is not None and (i := self.tokenizer.token_to_id(self.bos_token)) is not None:
            return i
        return self.config.bos_token_id


def common_group_size(tensors: dict) -> int | None:
    sizes = {t.group_size for t in tensors.values() if isinstance(t, Q4Tensor)}
    return sizes.pop() if len(sizes) == 1 else None


def is_linear(name: str) -> bool:
    return name == "lm_head.weight" or name.endswith(LINEAR_SUFFIXES)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for a model with this config (lm_head only when untied)."""
    D, F, V, hd = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (cfg.q_dim, D), p + "self_attn.k_proj.weight": (cfg.kv_dim, D),
                       p + "self_attn.v_proj.weight": (cfg.kv_dim, D), p + "self_attn.o_proj.weight": (D, cfg.q_dim),
                       p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                       p + "mlp.down_proj.weight": (D, F),
                       p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,)})
        if cfg.attention_bias:
            shapes.update({p + "self_attn.q_proj.bias": (cfg.q_dim,), p + "self_attn.k_proj.bias": (cfg.kv_dim,),
                           p + "self_attn.v_proj.bias": (cfg.kv_dim,)})
            if cfg.model_type == "llama":  # LlamaAttention puts attention_bias on o_proj too
                shapes[p + "self_attn.o_proj.bias"] = (D,)
        if cfg.qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)})
    return shapes


def load_checkpoint(source: str | os.PathLike, *, dtype=np.float32) -> Checkpoint:
    """Load a checkpoint from a directory, a .gguf file or a hub id; float tensors become ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    path, label = _resolve(source)
    if path.is_file():
        return _load_gguf(path, dtype, label)
    return _load_dir(path, dtype, label)


def _resolve(source) -> tuple[Path, str]:
    src = os.fspath(source)
    p = Path(src).expanduser()
    if p.is_file():
        if p.suffix != ".gguf":
            raise ValueError(f"{p} is a file but not .gguf; pass a .gguf file, a model directory or a hub id")
        return p.resolve(), str(p.resolve())
    if p.is_dir():
        return p.resolve(), str(p.resolve())
    if _HUB_ID.fullmatch(src) and not src.startswith((".", "~")):
        return Path(_download(src)), src
    raise FileNotFoundError(f"{src}: no such file or directory, and not a Hugging Face hub id (org/name)")


def _download(repo_id: str) -> str:
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(repo_id, allow_patterns=_HUB_FILES)
    except Exception as e:  # offline, unknown repo, gated, network: all end the same way for the user
        raise FileNotFoundError(
            f"could not fetch '{repo_id}' from the Hugging Face hub and it is not in the local cache "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the id, the network "
            "and HF_TOKEN, or pass a local directory or .gguf file") from e


# ==== safetensors (bf16 without torch) =========================================================

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U32": np.uint32,
              "BOOL": np.bool_}


def bf16_to_f32(u: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: bf16 is the top half of an f32."""
    return (u.astype(np.uint32) << 16).view(np.float32)


_MAX_HEADER = 100_000_000  # the safetensors library's own cap on the JSON header


def _corrupt(path, why: str) -> ValueError:
    return ValueError(f"{path} is not a valid safetensors file: {why}; the file is damaged or truncated, "
                      "re-download or re-create it")


def safetensors_header(path: Path) -> tuple[dict, int]:
    """The validated header (tensor name -> dtype, shape, data_offsets) of a .safetensors file, and
    the byte where its data starts.

    Everything numpy would trip over later is checked here, so a damaged or hostile file fails with
    its name: the header length (inside the file and under safetensors' 100 MB cap, never allocated
    from an untrusted length), a JSON object of tensors, known dtypes, shapes of non-negative ints,
    offsets inside the file whose span equals shape x dtype size, and no two tensors overlapping.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _corrupt(path, f"{len(head)} bytes long, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise _corrupt(path, f"header length {n} does not fit in the file ({size} bytes)" if n > size - 8
                           else f"header length {n} is over safetensors' limit of {_MAX_HEADER}")
        raw = f.read(n)
    try:
        header = json.loads(raw)  # (bytes: json detects UTF-8; invalid UTF-8 is a ValueError too)
    except ValueError as e:
        raise _corrupt(path, f"the header is not JSON ({e})") from None
    if not isinstance(header, dict) or not isinstance(header.pop("__metadata__", {}), dict):
        raise _corrupt(path, "the header is not a JSON object of tensors")
    spans = sorted(_tensor_span(path, name, info, size - 8 - n) + (name,) for name, info in header.items())
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise _corrupt(path, f"tensors {a!r} and {b!r} overlap")
    return header, 8 + n


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tensor_span(path, name: str, info, data_len: int) -> tuple[int, int]:
    """(start, end) of one header entry's data, after checking the entry."""
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        raise _corrupt(path, f"tensor {name!r} has no dtype")
    if info["dtype"] not in _ST_DTYPES:  # a real format llmgpu lacks (e.g. F8_E4M3), not damage
        raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which llmgpu cannot read "
                         f"(supported: {', '.join(_ST_DTYPES)})")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _corrupt(path, f"tensor {name!r} has shape {shape!r}, not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise _corrupt(path, f"tensor {name!r} has data_offsets {offsets!r}, not [start, end]")
    a, b = offsets
    if not 0 <= a <= b <= data_len:
        raise _corrupt(path, f"tensor {name!r} needs data bytes [{a}, {b}) but the file holds {data_len}")
    nbytes = math.prod(shape) * np.dtype(_ST_DTYPES[info["dtype"]]).itemsize
    if b - a != nbytes:
        raise _corrupt(path, f"tensor {name!r} ({info['dtype']} {shape}) needs {nbytes} bytes, "
                             f"its data_offsets span {b - a}")
    return a, b


def read_safetensors(path: Path, dtype=None) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file; floats cast to ``dtype`` if given (bf16 always converted)."""
    header, start = safetensors_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start) if os.path.getsize(path) > start else b""
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            arr = bf16_to_f32(arr)
        if dtype is not None and arr.dtype.kind == "f":
            out[name] = np.array(arr, dtype=dtype)
        else:
            out[name] = np.array(arr)
    return out


# ==== directories: Hugging Face and q4gsw ======================================================

def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # (UnicodeDecodeError included)
        raise ValueError(f"{path} is not valid JSON ({e}); fix or re-download it") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a JSON {type(d).__name__}, not an object; fix or re-download it")
    return d


def _token_str(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def _q4_meta(d: Path) -> dict:
    """A q4gsw directory's llmgpu.json, after checking its format and its files against the manifest
    (first: a damaged directory says so, rather than failing on whichever file is damaged); {} for a
    Hugging Face directory."""
    meta = _read_json(d / "llmgpu.json")
    if not meta:
        return meta
    version = meta.get("version", 0)
    if meta.get("format") != FORMAT or not _is_int(version) or version > FORMAT_VERSION:
        raise ValueError(f"{d}/llmgpu.json: format {meta.get('format')!r} version {version!r} is not "
                         f"readable by this llmgpu ({FORMAT} v{FORMAT_VERSION}); upgrade llmgpu or re-quantize")
    if "files" in meta and (problem := verify_q4_dir(d, meta)):
        raise DamagedCheckpointError(d, problem)
    if not isinstance(meta.get("source", ""), str) or not isinstance(meta.get("quant_errors") or {}, dict):
        raise ValueError(f"{d}/llmgpu.json: 'source' must be a string and 'quant_errors' an object; "
                         "re-create this directory with llmgpu quantize")
    return meta


def _load_dir(d: Path, dtype, label: str) -> Checkpoint:
    meta = _q4_meta(d)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} has no config.json; expected a Hugging Face model directory "
                                "(config.json, *.safetensors, tokenizer.json) or a q4gsw checkpoint")
    if not (d / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{d} has no tokenizer.json (llmgpu reads only fast tokenizers); create it with "
                                "transformers: AutoTokenizer.from_pretrained(src).save_pretrained(dir)")
    cfg = ModelConfig.from_hf(_read_json(d / "config.json"))
    tensors = _read_weights(d, dtype, q4=bool(meta))
    if cfg.tie_word_embeddings and isinstance(tensors.get("lm_head.weight"), np.ndarray):
        del tensors["lm_head.weight"]  # a saved copy of the tied embedding
    if not cfg.tie_word_embeddings and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
        cfg = dataclasses.replace(cfg, tie_word_embeddings=True)  # weights say tied; HF would warn and tie
    tensors = _check_names(cfg, tensors, str(d))

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tc = _read_json(d / "tokenizer_config.json")
    template = tc.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default", next(iter(named.values()), None))
    if template is None and (d / "chat_template.jinja").is_file():
        template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    bos, eos = _token_str(tc.get("bos_token")), _token_str(tc.get("eos_token"))
    eos_ids = _read_json(d / "generation_config.json").get("eos_token_id", cfg.eos_token_id)
    eos_ids = tuple([eos_ids] if isinstance(eos_ids, int) else eos_ids or ())
    if not eos_ids and eos is not None and tok.token_to_id(eos) is not None:
        eos_ids = (tok.token_to_id(eos),)
    add_bos = tc["add_bos_token"] if "add_bos_token" in tc else _post_processor_adds_bos(tok, bos)
    return Checkpoint(cfg, tensors, tok, template, bos, eos, tuple(int(i) for i in eos_ids), bool(add_bos),
                      source=meta.get("source", label) if meta else label,
                      group_size=common_group_size(tensors),
                      quant_errors=dict(meta.get("quant_errors") or {}) if meta else {},
                      quantization=meta.get("quantization") if isinstance(meta.get("quantization"), dict) else {})


def _read_weights(d: Path, dtype, q4: bool) -> dict[str, np.ndarray | Q4Tensor]:
    """All tensors of a directory's safetensors files; with ``q4``, ``<name>.qweight/.scales/.offsets``
    are reassembled into Q4Tensors (group size from the shapes)."""
    if (d / "model.safetensors.index.json").is_file():
        files = _shard_files(d / "model.safetensors.index.json")
    elif (d / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        files = sorted(p.name for p in d.glob("*.safetensors"))
    if not files:
        hint = " (found PyTorch .bin weights; re-save with safe_serialization=True)" if any(d.glob("*.bin")) else ""
        raise FileNotFoundError(f"{d} has no .safetensors weights{hint}")
    raw: dict[str, np.ndarray] = {}
    for f in files:
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d}/{f} is listed in model.safetensors.index.json but missing; re-download")
        raw.update(read_safetensors(d / f))
    tensors: dict[str, np.ndarray | Q4Tensor] = {}
    for name, arr in raw.items():
        base, _, part = name.rpartition(".")
        if q4 and part in ("qweight", "q8weight"):
            tensors[base] = _quantized(d, base, part, raw)
        elif not (q4 and part in ("scales", "offsets")):
            tensors[name] = arr.astype(dtype, copy=False) if arr.dtype.kind == "f" else arr
    return tensors


def _shard_files(index: Path) -> list[str]:
    """The shard file names of a model.safetensors.index.json (plain names in its directory)."""
    wm = _read_json(index).get("weight_map", {})
    if not isinstance(wm, dict) or not all(isinstance(f, str) and f and Path(f).name == f for f in wm.values()):
        raise ValueError(f"{index}: weight_map must map tensor names to file names in the same directory; "
                         "fix or re-download it")
    return sorted(set(wm.values()))


def _quantized(d: Path, base: str, part: str, raw: dict) -> Q4Tensor | Q8Tensor:
    """A q4gsw directory's ``<base>.qweight`` (or ``.q8weight``) + ``.scales`` (+ ``.offsets``) as one
    tensor, after checking the shapes agree (a damaged file must not reach the GPU as garbage)."""
    q, sc, off = raw[f"{base}.{part}"], raw.get(base + ".scales"), raw.get(base + ".offsets")
    ok = sc is not None and q.dtype == np.uint32 and q.ndim == sc.ndim == 2 and q.shape[0] == sc.shape[0] \
        and sc.shape[1] > 0 and (off is None or off.shape == sc.shape)
    K = q.shape[1] * (8 if part == "qweight" else 4)  # 4-bit: 8 per u32 word; int8: 4
    group = K // sc.shape[1] if ok else 0
    if group not in (GROUP_SIZES if part == "qweight" else (32,)) or sc.shape[1] * group != K:
        ok = False
    if not ok:
        raise ValueError(f"{d}: the quantized tensor {base} is inconsistent ({part} {q.dtype} {q.shape}, "
                         f"scales {None if sc is None else sc.shape}); re-create this directory "
                         "with llmgpu quantize")
    if part == "q8weight":
        return Q8Tensor(q, sc.astype(np.float16))
    return Q4Tensor(q, sc.astype(np.float16), group, off)


def _post_processor_adds_bos(tok: Tokenizer, bos: str | None) -> bool:
    """True if tokenizer.json's post-processor prepends BOS (Llama 3 style) to single sequences."""
    if bos is None:
        return False
    pp = json.loads(tok.to_str()).get("post_processor") or {}
    procs = pp.get("processors", [pp]) if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        if p.get("type") == "TemplateProcessing" and p.get("single"):
            first = p["single"][0]
            if first.get("SpecialToken", {}).get("id") == bos:
                return True
    return False


def _check_names(cfg: ModelConfig, tensors: dict, where: str) -> dict:
    """Exactly the tensors ``cfg`` needs, with the right shapes, in a fixed order; else one clear error."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    expected = expected_shapes(cfg)
    if cfg.tie_word_embeddings and isinstance(tensors.get("lm_head.weight"), (Q4Tensor, Q8Tensor)):
        expected["lm_head.weight"] = expected["model.embed_tokens.weight"]
    missing = [n for n in expected if n not in tensors]
    extra = sorted(set(tensors) - set(expected))
    wrong = [f"{n} {tuple(tensors[n].shape)} != {s}" for n, s in expected.items()
             if n in tensors and tuple(tensors[n].shape) != s]
    problems = ([f"missing {len(missing)} tensors (e.g. {missing[:3]})"] if missing else []) + \
               ([f"unexpected {len(extra)} tensors (e.g. {extra[:3]})"] if extra else []) + \
               ([f"{len(wrong)} tensors with wrong shapes (e.g. {wrong[:2]})"] if wrong else [])
    if problems:
        raise ValueError(f"{where}: weights do not match a {cfg.model_type} model with this config: "
                         f"{'; '.join(problems)}. The checkpoint is incomplete, its config.json does not "
                         "belong to it, or it uses features llmgpu does not support")
    return {n: tensors[n] for n in expected}


# ==== GGUF =====================================================================================

# llama.cpp tensor names -> HF names, one map; {i} is the block index.
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.bias": "model.layers.{i}.self_attn.o_proj.bias",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_GGUF_IGNORED = ("rope_freqs.weight",)  # folded into ModelConfig.rope_scaling


def gguf_name_to_hf(name: str) -> str | None:
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m is None:
        return GGUF_TO_HF.get(name)
    hf = GGUF_TO_HF.get("blk.{i}." + m.group(2))
    return hf.replace("{i}", m.group(1)) if hf else None


def llama_cpp_unpermute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row index ``idx`` with ``hf_rows = gguf_rows[idx]``.

    llama.cpp's converter reorders each head's q/k rows from HF's rotate-half layout (first half, second
    half) to interleaved pairs: ``w.reshape(n_head, 2, hd // 2, K).swapaxes(1, 2)``. HF row
    ``(h, j, r)`` (half j, index r) sits at gguf row ``(h, r, j)``.
    """
    hd = n_rows // n_head
    return np.arange(n_rows).reshape(n_head, hd // 2, 2).swapaxes(1, 2).reshape(-1)


def _take_rows(t, idx):
    if isinstance(t, Q4Tensor):
        return Q4Tensor(t.qweight[idx], t.scales[idx], t.group_size,
                        None if t.offsets is None else t.offsets[idx])
    return t[idx]


def _load_gguf(path: Path, dtype, label: str) -> Checkpoint:
    import gguf
    from gguf import GGMLQuantizationType as Q

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:
        raise ValueError(f"{path} is not a readable GGUF file ({e}); re-download it") from e
    cfg = ModelConfig.from_gguf(reader)
    ckpt = _gguf_tokenizer(reader, cfg, path)  # first: checking metadata is cheap, converting tensors is not
    tensors: dict[str, np.ndarray | Q4Tensor] = {}
    for t in reader.tensors:
        if t.name in _GGUF_IGNORED:
            continue
        name = gguf_name_to_hf(t.name)
        if name is None:
            raise ValueError(f"{path}: unexpected GGUF tensor {t.name!r}; this architecture variant is not "
                             "supported")
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF lists ne[0] (row length) first
        q4 = {Q.Q4_0: from_gguf_q4_0, Q.Q4_1: from_gguf_q4_1}.get(t.tensor_type)
        if q4 is not None and len(shape) == 2 and is_linear(name):
            tensors[name] = q4(t.data, *shape)
        elif q4 is not None and name == "model.embed_tokens.weight" and cfg.tie_word_embeddings:
            tensors["lm_head.weight"] = q4(t.data, *shape)  # exact q4 lm_head; lookup uses floats
            tensors[name] = dequantize(tensors["lm_head.weight"], dtype)
        else:
            tensors[name] = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype).reshape(shape)
    if cfg.model_type == "llama":
        for proj, heads in (("q_proj", cfg.num_attention_heads), ("k_proj", cfg.num_key_value_heads)):
            for i in range(cfg.num_hidden_layers):
                for kind in ("weight", "bias"):
                    n = f"model.layers.{i}.self_attn.{proj}.{kind}"
                    if n in tensors:
                        tensors[n] = _take_rows(tensors[n], llama_cpp_unpermute_rows(cfg.head_dim * heads, heads))
    tensors = _check_names(cfg, tensors, str(path))
    return dataclasses.replace(ckpt, tensors=tensors, source=label, group_size=common_group_size(tensors))


def _gguf_tokenizer(reader, cfg: ModelConfig, path: Path) -> Checkpoint:
    """A Checkpoint without tensors: the tokenizer and chat metadata of a GGUF file."""
    fields = {k: gguf_value(reader, k) for k in reader.fields if k.startswith("tokenizer.")}
    tok = tokenizer_from_gguf(fields)
    tokens = fields["tokenizer.ggml.tokens"]
    bos_id, eos_id = fields.get("tokenizer.ggml.bos_token_id"), fields.get("tokenizer.ggml.eos_token_id")
    if any(i is not None and i >= len(tokens) for i in (bos_id, eos_id, *cfg.eos_token_id)):
        raise ValueError(f"{path}: a BOS/EOS token id in the GGUF metadata is outside the {len(tokens)} tokens; "
                         "the file is damaged")
    add_bos = fields.get("tokenizer.ggml.add_bos_token", fields.get("tokenizer.ggml.model") == "llama")
    return Checkpoint(cfg, {}, tok, fields.get("tokenizer.chat_template"),
                      tokens[bos_id] if bos_id is not None else None,
                      tokens[eos_id] if eos_id is not None else None,
                      cfg.eos_token_id, bool(add_bos))


# ==== quantize, save, cache ====================================================================

def quantize_checkpoint(ckpt: Checkpoint, group_size: int = DEFAULT_GROUP_SIZE, progress: bool = True,
                        lm_head: str = "q8", *, asymmetric: bool = False, calibrate: str | bool | None = None,
                        requantize: bool = False, note=None) -> Checkpoint:
    """Every float linear -> q4gsw; a float lm_head (a tied one: a copy of the embedding) -> int8
    per 32 (``lm_head="q8"``, the default) or q4gsw (``"q4"``).

    Why int8 for lm_head: with a 4-bit lm_head made from SmolLM2-135M's Q8_0 embedding, greedy
    answers changed ("The capital of France is Paris." became French gibberish, and transformers
    with the same 4-bit head agreed); llama.cpp also keeps its output matrix above 4 bits. An
    lm_head that arrives in 4 bits (GGUF Q4_0/Q4_1) is kept exactly. Tensors that are already
    quantized stay as they are, unless ``requantize``: then 4-bit ones are dequantized and quantized
    again (a second rounding; for measurements). Errors go to ``quant_errors``.

    ``group_size`` is per tensor where it does not divide K (quant.group_size_for; ``note`` is told
    once, default: a line on stderr). ``asymmetric``: per-group offsets. ``calibrate``: a text file
    (True: the shipped default) for the activation-aware search of llmgpu/calibrate.py. How it was
    made goes to ``quantization`` (llmgpu.json).
    """
    if lm_head not in ("q8", "q4"):
        raise ValueError(f"lm_head quantization must be 'q8' or 'q4', got {lm_head!r}")
    if group_size not in GROUP_SIZES:  # before any work
        raise ValueError(f"q4gsw group size must be one of {GROUP_SIZES}, got {group_size}")
    from tqdm import tqdm

    tensors = _requantizable(ckpt) if requantize else dict(ckpt.tensors)
    recipe = {"method": "calibrated" if calibrate else "search", "asymmetric": bool(asymmetric),
              "group_size": group_size, "requantized": bool(requantize)}
    todo = [n for n, t in tensors.items() if is_linear(n) and not isinstance(t, (Q4Tensor, Q8Tensor))]
    if kept := sum(isinstance(t, Q4Tensor) for t in tensors.values()):
        recipe["kept_4bit"] = kept  # arrived in 4 bits and left as they were (the options did not apply)
    if "lm_head.weight" not in tensors:
        todo.append("lm_head.weight")
    q4 = [n for n in todo if not (n == "lm_head.weight" and lm_head == "q8")]  # (int8 groups are always 32)
    group_of = _group_sizes(tensors, q4, group_size, recipe, note)
    errors = dict(ckpt.quant_errors)
    if calibrate:
        tensors, recipe["calibration"] = _calibrated(ckpt, tensors, calibrate, group_of, asymmetric, errors,
                                                     progress)
        todo = [n for n in todo if not isinstance(tensors.get(n), (Q4Tensor, Q8Tensor))]
    for name in tqdm(todo, desc="quantizing", unit="tensor", disable=not progress):
        w = tensors.get(name, tensors["model.embed_tokens.weight"])
        try:
            if name == "lm_head.weight" and lm_head == "q8":
                tensors[name], errors[name] = quantize_q8(w)
            else:
                tensors[name], errors[name] = quantize(w, group_of(w.shape[-1]), asymmetric=asymmetric)
        except ValueError as e:
            raise ValueError(f"cannot quantize {name} {tuple(w.shape)}: {e}") from None
    return dataclasses.replace(ckpt, tensors=tensors, group_size=common_group_size(tensors), quant_errors=errors,
                               quantization=recipe)


def _requantizable(ckpt: Checkpoint) -> dict:
    """The tensors with every 4-bit linear dequantized to f32 (a tied 4-bit lm_head dropped: the
    embedding holds its dequantized values, and quantizing makes a new head from it)."""
    tensors = {}
    for n, t in ckpt.tensors.items():
        if isinstance(t, Q4Tensor) and n == "lm_head.weight" and ckpt.config.tie_word_embeddings:
            continue
        tensors[n] = dequantize(t) if isinstance(t, Q4Tensor) else t
    return tensors


def _group_sizes(tensors: dict, todo: list[str], group_size: int, recipe: dict, note):
    """K -> group size for the tensors to quantize; where ``group_size`` does not divide K, says so
    once and records it in ``recipe["group_sizes"]`` (as {K: size})."""
    def k_of(n):
        return (tensors.get(n, tensors.get("model.embed_tokens.weight"))).shape[-1]

    sizes, names = {}, {}
    for n in todo:
        K = k_of(n)
        try:
            sizes[K] = group_size_for(K, group_size)
        except ValueError as e:
            raise ValueError(f"cannot quantize {n} (K={K}): {e}") from None
        names.setdefault(K, []).append(n)
    other = {K: g for K, g in sizes.items() if g != group_size}
    if other:
        recipe["group_sizes"] = {str(K): g for K, g in sorted(other.items())}
        said = "; ".join(f"{len(names[K])} tensors with K={K} (e.g. {names[K][0]}) use {g}" for K, g in other.items())
        (note or _note)(f"group size {group_size} does not divide every tensor's in_features: {said} "
                        "(the largest supported size that divides K)")
    return lambda K: sizes.get(K) or group_size_for(K, group_size)


def _note(msg: str) -> None:
    print(f"llmgpu: note: {msg}", file=sys.stderr, flush=True)


def _calibrated(ckpt: Checkpoint, tensors: dict, calibrate, group_of, asymmetric: bool, errors: dict,
                progress: bool) -> tuple[dict, dict]:
    """The layers' linears quantized against calibration text (llmgpu/calibrate.py); the layers
    must be float (pass requantize for a checkpoint that arrives in 4 bits)."""
    from . import calibrate as cal

    held = [n for n, t in tensors.items() if n.startswith("model.layers.") and isinstance(t, (Q4Tensor, Q8Tensor))]
    if held:
        raise ValueError(f"calibration needs float layer weights, but {held[0]} (and {len(held) - 1} more) "
                         "arrived quantized; pass --requantize (requantize=True) to dequantize them first")
    seqs, label, sha = cal.sequences(ckpt, None if calibrate is True else str(calibrate))
    tensors, layers = cal.calibrate_and_quantize(tensors, ckpt.config, seqs, group_of, asymmetric, errors, progress)
    return tensors, {"text": label, "sha256": sha, "tokens": sum(map(len, seqs)), "sequences": len(seqs),
                     "sequential": cal.SEQUENTIAL, "clip": cal.quant.CLIP, "gptq_damp": cal.GPTQ_DAMP,
                     "gptq_max_group": cal.GPTQ_MAX_GROUP, "refit_damp": cal.refit_damp(asymmetric),
                     "cd_sweeps": cal.cd_sweeps(asymmetric), "cd_damp": cal.CD_DAMP,
                     "output_error_mean": round(float(np.mean([g["output_error"] for v in layers.values()
                                                               for g in v.values()])), 6),
                     "layers": {str(i): v for i, v in layers.items()}}


def save_q4_checkpoint(ckpt: Checkpoint, out_dir: str | os.PathLike, *, float_dtype=np.float16,
                       force: bool = False) -> Path:
    """Write ``ckpt`` as a q4gsw directory, atomically (a temp dir beside ``out_dir``, then renamed).

    ``model.safetensors`` holds Q4 tensors as ``<name>.qweight`` (u32), ``<name>.scales`` (f16) and
    ``<name>.offsets`` (f32, if any); float tensors as ``float_dtype`` (f32 where f16 would overflow).
    ``llmgpu.json`` records each other file's size and sha256, checked on load.

    An existing ``out_dir`` is replaced only if it is an earlier llmgpu output and ``force`` is set;
    see :func:`check_output_path` for what is refused. Temp dirs that a killed writer left beside
    ``out_dir`` are removed first (:func:`sweep_temp_dirs`).
    """
    out = Path(out_dir).expanduser().resolve()
    check_output_path(out, _source_path(ckpt), force)
    sweep_temp_dirs(out.parent, out.name)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(out, "tmp")
        tmp.mkdir()  # (not mkdtemp: its 0700 would ignore the umask)
    except OSError as e:
        raise OSError(f"cannot write {out}: {e.strerror or e}; choose a directory you can write to") from None
    try:
        _write_q4_files(ckpt, tmp, float_dtype)
        _replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"could not write {out} ({e.strerror or e}); nothing was changed there") from e
    except BaseException:  # Ctrl-C, SIGTERM (the CLI turns it into SystemExit): leave nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_q4_files(ckpt: Checkpoint, tmp: Path, float_dtype) -> None:
    from safetensors.numpy import save_file

    flat: dict[str, np.ndarray] = {}
    for name, t in ckpt.tensors.items():
        if isinstance(t, Q8Tensor):
            flat[name + ".q8weight"] = np.ascontiguousarray(t.qweight, np.uint32)
            flat[name + ".scales"] = np.ascontiguousarray(t.scales, np.float16)
        elif isinstance(t, Q4Tensor):
            flat[name + ".qweight"] = np.ascontiguousarray(t.qweight, np.uint32)
            flat[name + ".scales"] = np.ascontiguousarray(t.scales, np.float16)
            if t.offsets is not None:
                flat[name + ".offsets"] = np.ascontiguousarray(t.offsets, np.float32)
        else:
            with np.errstate(over="ignore"):
                a = np.asarray(t, float_dtype)
            flat[name] = np.ascontiguousarray(a if np.isfinite(a).all() else np.asarray(t, np.float32))
    save_file(flat, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    os.chmod(tmp / "model.safetensors", tmp.stat().st_mode & 0o666)  # umask, like the json files
    files = {
        "config.json": ckpt.config.to_hf(),
        "tokenizer_config.json": {"chat_template": ckpt.chat_template, "bos_token": ckpt.bos_token,
                                  "eos_token": ckpt.eos_token, "add_bos_token": ckpt.add_bos},
        "generation_config.json": {"bos_token_id": ckpt.bos_token_id, "eos_token_id": list(ckpt.eos_token_ids)},
    }
    for fname, obj in files.items():
        (tmp / fname).write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    ckpt.tokenizer.save(str(tmp / "tokenizer.json"))
    errs = ckpt.quant_errors
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "group_size": ckpt.group_size, "source": ckpt.source,
            "quant_error_mean": float(np.mean(list(errs.values()))) if errs else None, "quant_errors": errs,
            "quantization": ckpt.quantization, "files": _manifest(tmp)}  # written last: a directory with llmgpu.json is complete
    (tmp / "llmgpu.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")


# ---- integrity: a manifest of sizes and hashes -------------------------------------------------

def _sha256(p: Path) -> str:
    with open(p, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _manifest(d: Path) -> dict:
    return {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(d.iterdir()) if p.is_file() and p.name != "llmgpu.json"}


def verify_q4_dir(d: Path, meta: dict) -> str | None:
    """What is wrong with a q4gsw directory's files against the manifest in its ``llmgpu.json``, or
    None if nothing is.

    Every byte is hashed, not a sample: bytes overwritten in place (same size) are the case to catch,
    and sha256 with the SHA extensions of current x86 and ARM CPUs reads ~1.5 GB/s (0.06 s for
    SmolLM2-135M's 95 MB), which also warms the page cache the load reads next. Sizes are compared
    first, so a truncated file fails without hashing anything.
    """
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return "it has no checksums (an older llmgpu wrote it)"
    for name, want in files.items():
        p = d / str(name)
        if Path(str(name)).name != name or not p.is_file():
            return f"{name} is missing"
        if not isinstance(want, dict) or p.stat().st_size != want.get("size"):
            return f"{name} is {p.stat().st_size} bytes, not the {want.get('size')} written"
    for name, want in files.items():
        if _sha256(d / name) != want.get("sha256"):
            return f"{name} does not match the checksum recorded when it was written"
    return None


class DamagedCheckpointError(ValueError):
    """A q4gsw directory whose files differ from what was written (``problem`` says how)."""

    def __init__(self, d: Path, problem: str):
        super().__init__(f"{d} is damaged: {problem}; re-create it with llmgpu quantize")
        self.problem = problem


# ---- outputs: never destroy what is not ours, never leave temp dirs ------------------------------

_Q4_FILES = {"llmgpu.json", "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
             "generation_config.json"}
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")
STALE_AFTER_S = 300  # a temp dir untouched this long, whose writer's pid is gone, is abandoned


def _temp_path(out: Path, kind: str) -> Path:
    """A hidden sibling of ``out`` whose name carries our pid, so a sweep can tell if we are gone."""
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _source_path(ckpt: Checkpoint) -> Path | None:
    p = Path(ckpt.source) if ckpt.source else None
    return p if p is not None and p.is_absolute() and p.exists() else None


def check_output_path(out: Path, source: Path | None = None, force: bool = False) -> None:
    """Raise unless writing a q4gsw directory at ``out`` destroys nothing it should not.

    Refused: ``out`` equal to the source, inside it or containing it; a file; a directory that is not
    an earlier llmgpu output (anything but the files llmgpu writes); an earlier output without
    ``force``. An empty directory is fine.
    """
    out = Path(out).expanduser().resolve()
    if source is not None:
        src = Path(source).resolve()
        if out == src or src in out.parents or out in src.parents:
            raise ValueError(f"the output {out} would overwrite the source {src} (it is the source, inside it "
                             "or contains it); choose an output path outside it")
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; llmgpu does not replace files, "
                              "choose a new output path")
    names = {p.name for p in out.iterdir()}
    if not names:
        return
    check_replace(out, names, "llmgpu.json" in names and names <= _Q4_FILES, "llmgpu output", force, "an")


def check_replace(out: Path, names: set, ours: bool, what: str, force: bool, article: str = "a") -> None:
    """An output directory `out` that holds `names`: refuse to replace it unless it is an earlier
    `what` (ours) and force is given, with a one-line error that says which."""
    if not ours:
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise FileExistsError(f"{out} exists and is not {article} {what} (it holds {shown}); llmgpu never "
                              "replaces other files: choose a new output path")
    if not force:
        raise FileExistsError(f"{out} holds an earlier {what}; pass --force (force=True) to replace "
                              "it, or choose a new output path")


def sweep_temp_dirs(parent: Path, name: str | None = None) -> None:
    """Remove the temp dirs that killed writers left in ``parent`` (only those for ``name`` if given).

    Ctrl-C and SIGTERM in the CLI clean up as they go; this covers SIGKILL, power loss and API users.
    A temp dir goes only if its writer's pid is gone *and* nothing in it changed for
    :data:`STALE_AFTER_S` (a pid from another container sharing the cache can look gone).
    """
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for e in entries:
        m = _TEMP_NAME.fullmatch(e.name)
        if m and (name is None or m["name"] == name) and e.is_dir(follow_symlinks=False) \
                and not _pid_alive(int(m["pid"])) and time.time() - _newest_mtime(Path(e.path)) > STALE_AFTER_S:
            shutil.rmtree(e.path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix" or pid == os.getpid():
        return True  # (os.kill(pid, 0) would terminate the process on Windows)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _newest_mtime(d: Path) -> float:
    times = [d.lstat().st_mtime]
    for root, dirs, files in os.walk(d):
        times += [os.lstat(os.path.join(root, f)).st_mtime for f in dirs + files]
    return max(times)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after.

    Whatever interrupts it (an OSError, Ctrl-C, SIGTERM) puts the previous version back."""
    old = None
    try:
        if os.path.lexists(out):
            old = _temp_path(out, "old")
            old.mkdir()
            os.replace(out, old / "d")
        os.replace(tmp, out)
    except BaseException:
        if old is not None and os.path.lexists(old / "d") and not os.path.lexists(out):
            os.replace(old / "d", out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def cache_dir() -> Path:
    """Where quantized checkpoints are cached: $LLMGPU_CACHE, else ~/.cache/llmgpu."""
    return Path(os.environ.get("LLMGPU_CACHE") or "~/.cache/llmgpu").expanduser()


def _cache_key(label: str, path: Path, group_size: int, options: dict | None = None) -> str:
    """Same source files (names, sizes, mtimes), group size and options: same key. ``options`` (e.g.
    asymmetric) join the key only when given, so the default recipe keeps its earlier keys."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    blob = json.dumps([label, str(path), stats, group_size, FORMAT_VERSION] + ([options] if options else [])).encode()
    slug = re.sub(r"[^\w.-]+", "-", label.rstrip("/").replace("/", "--").split("--")[-1])[:48]
    return f"{slug}-{hashlib.sha256(blob).hexdigest()[:16]}"


def load_cached_or_quantize(source: str | os.PathLike, group_size: int = DEFAULT_GROUP_SIZE, *,
                            progress: bool = True, asymmetric: bool = False, calibrate: str | bool | None = None,
                            requantize: bool = False) -> Checkpoint:
    """Load ``source`` quantized to q4gsw, from the cache if this source (same files, sizes, mtimes) was
    quantized with this group size and these options before; otherwise quantize it and cache the result.

    ``asymmetric``, ``calibrate`` (a text file, or True for the shipped default) and ``requantize`` are
    :func:`quantize_checkpoint`'s; a calibration text joins the cache key by its SHA-256, so an edited
    file makes a new entry. A q4gsw directory is loaded as it is: options that ask for another recipe
    than its own are refused (quantize the float source instead)."""
    path, label = _resolve(source)
    options = {}
    if asymmetric:
        options["asymmetric"] = True
    if calibrate:
        from . import calibrate as cal
        options["calibrate"] = cal.read_text(None if calibrate is True else str(calibrate))[2]  # before any work
        options["gptq"] = [cal.GPTQ_DAMP, cal.GPTQ_MAX_GROUP]  # (entries made before GPTQ rounding are not reused)
        if (damp := cal.refit_damp(asymmetric)) is not None:
            options["refit"] = damp  # (nor those made before the scale refit, which is symmetric only)
        if sweeps := cal.cd_sweeps(asymmetric):  # (nor those made before the coordinate descent)
            options["cd"] = [sweeps, cal.CD_DAMP]
    if requantize:
        options["requantize"] = True
    if path.is_dir() and (path / "llmgpu.json").is_file():
        ckpt = load_checkpoint(path)  # already q4gsw
        _check_recipe(ckpt, label, asymmetric, calibrate)
        return ckpt
    sweep_temp_dirs(cache_dir())
    target = cache_dir() / _cache_key(label, path, group_size, options or None)
    if (target / "llmgpu.json").is_file():
        try:
            return _load_cache_entry(target)
        except Exception as e:  # our own files: rebuild them, rather than fail the same way on every run
            why = e.problem if isinstance(e, DamagedCheckpointError) else str(e)
            print(f"llmgpu: the cached quantized model {target} is unusable ({why}); rebuilding it from "
                  f"{label}", file=sys.stderr, flush=True)
    ckpt = load_checkpoint(path)
    ckpt = quantize_checkpoint(dataclasses.replace(ckpt, source=label), group_size, progress, asymmetric=asymmetric,
                               calibrate=calibrate or None, requantize=requantize)
    save_q4_checkpoint(ckpt, target, force=True)
    return load_checkpoint(target)


def _check_recipe(ckpt: Checkpoint, label: str, asymmetric: bool, calibrate) -> None:
    """A q4gsw directory asked for with options: they must describe how it was made."""
    r = ckpt.quantization or {}
    wrong = [w for w, asked, has in (("asymmetric", asymmetric, r.get("asymmetric")),
                                     ("calibrated", bool(calibrate), r.get("method") == "calibrated"))
             if asked and not has]
    if wrong:
        raise ValueError(f"{label} is already a q4gsw checkpoint, not made {' and '.join(wrong)}; load it without "
                         f"those options, or quantize the float model it came from with them")


def _load_cache_entry(target: Path) -> Checkpoint:
    if "files" not in _read_json(target / "llmgpu.json"):  # a user's old q4gsw dir still loads; ours must verify
        raise DamagedCheckpointError(target, "it has no checksums (an older llmgpu wrote it)")
    return load_checkpoint(target)
