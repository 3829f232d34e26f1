"""``llmgpu export``: write a q4gsw checkpoint with the same weights as a GGUF file (llama.cpp) or as a
compressed-tensors directory (vLLM, transformers).

GGUF, tensor by tensor:

* q4gsw without offsets -> Q4_0, exactly: a Q4_0 block is 32 weights ``(nibble - 8) * d`` with an f16
  ``d``, which is q4gsw with group 32 after re-ordering the nibbles; a group of 64 or 128 repeats its
  scale over its 2 or 4 blocks.
* q4gsw with offsets (imported Q4_1) -> Q4_1 (``w = d * nibble + m`` with ``m = offset - 8 d``), exact
  whenever ``m`` is an f16 (always for weights that came from a Q4_1 GGUF); otherwise ``m`` is rounded to
  f16 and a warning says by how much.
* the int8 lm_head -> Q8_0, exactly (an f16 scale per 32 int8 values, as llmgpu stores it).
* other tensors: 1-D (norms, biases) as F32, 2-D (the embedding) as F16 when that is exact, else F32.

llama-family q/k projections get llama.cpp's row permutation (the inverse of what the loader undoes).
Metadata: the architecture's hyper-parameters, the tokenizer (byte-level BPE: ``gpt2`` with the
pre-tokenizer named as llama.cpp names it), the special token ids and the chat template. SentencePiece
tokenizers are refused (their scores are not kept in a q4gsw checkpoint).

compressed-tensors (:func:`export_compressed_tensors`), a Hugging Face directory that vLLM loads
(``quant_method: compressed-tensors``, format ``pack-quantized``, W4A16 with int4 groups):

* q4gsw without offsets -> ``weight_packed`` (int32, 8 nibbles a word, element ``8j + i`` in bits
  ``4i..4i+3`` as ``q + 8``: llmgpu's own ``qweight`` bit for bit), ``weight_scale`` (llmgpu's f16
  scales, negative ones included) and ``weight_shape``; symmetric, ``strategy: group`` with the
  tensor's group size (one config group per group size, naming its layers, where they differ). Exact.
* q4gsw with offsets (``w = s q + o``, e.g. every linear of a Q4_1 GGUF): symmetric int4 has no float
  offset, so these are **refused** (:class:`OffsetsError`, nothing written) unless ``requantize``: then
  each is re-quantized (symmetric, same group size, llmgpu's own scale search on the dequantized
  weight) and a :class:`RequantizedWarning` gives the relative error and the largest change of one
  weight; no weight moves by more than one step of its new scale (and f16 rounding of that scale).
  Refused by default because the result is a different model: SmolLM2 from its Q4_1 GGUF, re-quantized
  so, has an 8 % weight error and a top-1 agreement with llmgpu of 0.66 over 200 teacher-forced tokens
  (``bench/export_check.sh ... -- --compressed-tensors``).
  For weights identical to llmgpu's, export GGUF (Q4_1 keeps offsets) or quantize the float model
  without ``--asymmetric``.
* the int8 lm_head: vLLM's compressed-tensors quantizes linear layers only (not the lm_head), so it is
  written as its dequantized values (f32 where f16 would round them) and listed in ``ignore``;
  ``tie_word_embeddings`` is false, as llmgpu's lm_head is its own (quantized) tensor.
* other tensors: f16 where that is exact, else f32.

Also written: config.json (the architecture, ``torch_dtype: float16``, ``quantization_config``),
generation_config.json, tokenizer.json and tokenizer_config.json (special tokens, chat template).

Both are written to a temporary name beside the target and renamed when complete; an existing
target is refused unless ``force`` (a directory is replaced only if it is an earlier compressed-tensors
export: llmgpu never deletes other files).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np

from .loader import (GGUF_TO_HF, Checkpoint, _replace_dir, _source_path, _temp_path, is_linear,
                     llama_cpp_unpermute_rows, sweep_temp_dirs)
from .quant import _EVEN_ODD, Q4Tensor, Q8Tensor, dequantize, quantize, unpack_nibbles
from .tokenizer import _LLAMA3_SPLIT, _QWEN2_SPLIT

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


# ==== tensors ==================================================================================

def q4_0_blocks(t: Q4Tensor) -> np.ndarray:
    """(N, K/32 * 18) uint8 GGUF Q4_0 rows of a q4gsw tensor without offsets (exact)."""
    N, K = t.shape
    nib = unpack_nibbles(t.qweight).reshape(N * K // 32, 32)
    qs = nib[:, :16] | (nib[:, 16:] << 4)  # GGUF: element j low nibble, element j + 16 high nibble
    d = np.repeat(t.scales.astype(np.float16), t.group_size // 32, axis=1).reshape(-1, 1)
    return np.concatenate([d.view(np.uint8), qs.astype(np.uint8)], axis=1).reshape(N, K // 32 * 18)


def q4_1_blocks(t: Q4Tensor, name: str = "") -> np.ndarray:
    """(N, K/32 * 20) uint8 GGUF Q4_1 rows of a q4gsw tensor with offsets: d = scale, m = offset - 8 d."""
    N, K = t.shape
    nib = unpack_nibbles(t.qweight).reshape(N * K // 32, 32)
    qs = nib[:, :16] | (nib[:, 16:] << 4)
    rep = t.group_size // 32
    d = np.repeat(t.scales.astype(np.float16), rep, axis=1)
    m32 = np.repeat(t.offsets.astype(np.float32), rep, axis=1) - 8.0 * d.astype(np.float32)
    m = m32.astype(np.float16)
    if (err := float(np.abs(m.astype(np.float32) - m32).max(initial=0.0))) > 0:
        warnings.warn(f"{name}: its offsets are not exact in Q4_1 (f16 minimums); rounded, max error {err:.3g}",
                      stacklevel=2)
    return np.concatenate([d.reshape(-1, 1).view(np.uint8), m.reshape(-1, 1).view(np.uint8),
                           qs.astype(np.uint8)], axis=1).reshape(N, K // 32 * 20)


def q8_0_blocks(t: Q8Tensor) -> np.ndarray:
    """(N, K/32 * 34) uint8 GGUF Q8_0 rows of llmgpu's int8 tensor (exact)."""
    N, K = t.shape
    q = t.qweight.view(np.int8).reshape(N, K // 8, 8)[:, :, np.argsort(_EVEN_ODD)].reshape(N * K // 32, 32)
    d = t.scales.astype(np.float16).reshape(-1, 1)
    return np.concatenate([d.view(np.uint8), q.view(np.uint8)], axis=1).reshape(N, K // 32 * 34)


def _hf_to_gguf_name(name: str) -> str:
    inverse = {hf: g for g, hf in GGUF_TO_HF.items()}
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    key = name if m is None else "model.layers.{i}." + m.group(2)
    if key not in inverse:
        raise ValueError(f"tensor {name} has no GGUF name; this model cannot be exported to GGUF")
    return inverse[key].replace("{i}", m.group(1)) if m else inverse[key]


def _permute(ckpt: Checkpoint, name: str, t):
    """llama.cpp's q/k row order for llama-family models (the inverse of the loader's un-permutation)."""
    cfg = ckpt.config
    if GGUF_ARCH[cfg.model_type] != "llama" or ".self_attn." not in name:
        return t
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}.get(name.split(".")[-2])
    if heads is None:
        return t
    idx = np.argsort(llama_cpp_unpermute_rows(cfg.head_dim * heads, heads))
    if isinstance(t, Q4Tensor):
        return Q4Tensor(t.qweight[idx], t.scales[idx], t.group_size, None if t.offsets is None else t.offsets[idx])
    return np.asarray(t)[idx]


def gguf_tensors(ckpt: Checkpoint):
    """Yield (GGUF name, array, GGMLQuantizationType or None for plain floats) in checkpoint order."""
    from gguf import GGMLQuantizationType as Q

    for name, t in ckpt.tensors.items():
        t = _permute(ckpt, name, t)
        gname = _hf_to_gguf_name(name)
        if isinstance(t, Q8Tensor):
            yield gname, q8_0_blocks(t), Q.Q8_0
        elif isinstance(t, Q4Tensor) and t.offsets is None:
            yield gname, q4_0_blocks(t), Q.Q4_0
        elif isinstance(t, Q4Tensor):
            yield gname, q4_1_blocks(t, name), Q.Q4_1
        else:
            a = np.asarray(t, np.float32)
            h = a.astype(np.float16)
            exact = a.ndim == 2 and np.array_equal(h.astype(np.float32), a)
            yield gname, (h if exact else a), None


# ==== metadata =================================================================================

def _pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer (tokenizer.json's ``pre_tokenizer``)."""
    s = json.dumps(pre or {})
    if '"Digits"' in s and '"individual_digits": true' in s:
        return "smollm"
    if json.dumps(_LLAMA3_SPLIT) in s:
        return "llama-bpe"
    if json.dumps(_QWEN2_SPLIT) in s:
        return "qwen2"
    if (pre or {}).get("type") == "ByteLevel":
        return "gpt2"
    raise ValueError("the tokenizer's pre-tokenizer has no llama.cpp name that llmgpu knows (gpt2, smollm, "
                     "llama-bpe, qwen2); this model cannot be exported to GGUF")


def _tokenizer_fields(ckpt: Checkpoint, vocab_size: int) -> dict:
    tj = json.loads(ckpt.tokenizer.to_str())
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(tj.get("decoder")):
        raise ValueError("only byte-level BPE tokenizers (GPT-2 style: SmolLM, Llama 3, Qwen) can be exported "
                         "to GGUF; this checkpoint's tokenizer is not one")
    added = {a["id"]: a for a in tj.get("added_tokens") or []}
    tokens, types = [], []
    for i in range(vocab_size):
        tok = ckpt.tokenizer.id_to_token(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED
        else:
            tokens.append(tok)
            types.append((3 if added[i].get("special") else 4) if i in added else 1)  # CONTROL / USER / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": _pre_tokenizer_name(tj.get("pre_tokenizer"))}


def _write_metadata(w, ckpt: Checkpoint, name: str) -> None:
    import gguf

    cfg = ckpt.config
    if cfg.sliding_window is not None:
        raise ValueError("a sliding-window model cannot be exported as GGUF llama")
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_vocab_size(cfg.vocab_size)
    if cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
    tf = _tokenizer_fields(ckpt, cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tf["pre"])
    w.add_token_list(tf["tokens"])
    w.add_token_types(tf["types"])
    w.add_token_merges(tf["merges"])
    if ckpt.bos_token_id is not None:
        w.add_bos_token_id(ckpt.bos_token_id)
    eos = list(ckpt.eos_token_ids) or list(cfg.eos_token_id)
    if eos:
        w.add_eos_token_id(eos[0])
    if len(eos) > 1:
        w.add_eot_token_id(eos[1])
    w.add_add_bos_token(bool(ckpt.add_bos))
    if ckpt.chat_template:
        w.add_chat_template(ckpt.chat_template)


def _rope_freqs(cfg) -> np.ndarray | None:
    """Llama 3 rope scaling as llama.cpp stores it: per-frequency divisors (rope_freqs.weight)."""
    from .config import rope_inv_freq
    if not cfg.rope_scaling or cfg.rope_scaling["rope_type"] != "llama3":
        return None
    base = 1.0 / cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim)
    return (base / rope_inv_freq(cfg)).astype(np.float32)


# ==== writing ==================================================================================

def _target(out, force: bool) -> Path:
    out = Path(out).expanduser().resolve()
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another -o or pass --force to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such directory")
    return out


def export_gguf(ckpt: Checkpoint, out, *, force: bool = False, progress: bool = True) -> Path:
    """Write ``ckpt`` (q4gsw, see the module doc) as one GGUF file at ``out``, atomically."""
    import gguf
    from tqdm import tqdm

    out = _target(out, force)
    arch = GGUF_ARCH.get(ckpt.config.model_type)
    if arch is None:
        raise ValueError(f"model type {ckpt.config.model_type!r} cannot be exported to GGUF")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        w = gguf.GGUFWriter(tmp, arch)
        _write_metadata(w, ckpt, Path(str(ckpt.source)).stem or "model")
        if (freqs := _rope_freqs(ckpt.config)) is not None:
            w.add_tensor("rope_freqs.weight", freqs)
        for gname, arr, qtype in tqdm(gguf_tensors(ckpt), total=len(ckpt.tensors), desc="converting",
                                      unit="tensor", disable=not progress):
            w.add_tensor(gname, arr, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=progress)
        w.close()
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ==== compressed-tensors (vLLM) =================================================================

CT_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"}


class RequantizedWarning(UserWarning):
    """Weights with offsets were re-quantized to symmetric int4 (the message says by how much)."""


class OffsetsError(ValueError):
    """Weights with offsets, which symmetric int4 cannot hold, and no permission to re-quantize them."""


def symmetric(t: Q4Tensor) -> tuple[Q4Tensor, float, float]:
    """``t`` as symmetric q4gsw: itself (exact) or, when it has offsets, re-quantized from its dequantized
    values with the same group size. Returns (tensor, relative Frobenius error, largest absolute change)."""
    if t.offsets is None:
        return t, 0.0, 0.0
    w = dequantize(t)
    s, err = quantize(w, t.group_size)
    return s, err, float(np.abs(dequantize(s) - w).max(initial=0.0))


def _float(a) -> np.ndarray:
    """f16 where that holds the values exactly, else f32."""
    a = np.asarray(a, np.float32)
    with np.errstate(over="ignore"):
        h = a.astype(np.float16)
    return h if np.array_equal(h.astype(np.float32), a) else a


def _scheme(group_size: int, targets: list[str]) -> dict:
    return {"targets": targets, "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                                            "group_size": group_size, "dynamic": False, "actorder": None,
                                            "block_structure": None, "observer": "minmax", "observer_kwargs": {}},
            "input_activations": None, "output_activations": None, "format": "pack-quantized"}


def quantization_config(groups: dict[int, list[str]], ignore: list[str]) -> dict:
    """config.json's ``quantization_config``: one scheme per group size (``groups``: size -> module names);
    a single size targets every ``Linear``, except those in ``ignore``."""
    if len(groups) == 1:
        schemes = {"group_0": _scheme(next(iter(groups)), ["Linear"])}
    else:
        schemes = {f"group_{i}": _scheme(g, sorted(names)) for i, (g, names) in enumerate(sorted(groups.items()))}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": schemes, "ignore": sorted(ignore), "kv_cache_scheme": None,
            "global_compression_ratio": None, "sparsity_config": {}, "transform_config": {}}


def compressed_tensors_state(ckpt: Checkpoint, progress: bool = False):
    """(safetensors dict, quantization_config, re-quantized {name: (rel. error, max change)}) for ``ckpt``."""
    from tqdm import tqdm

    flat, groups, ignore, redone = {}, {}, [], {}
    for name, t in tqdm(ckpt.tensors.items(), total=len(ckpt.tensors), desc="converting", unit="tensor",
                        disable=not progress):
        module = name.removesuffix(".weight")
        if isinstance(t, Q4Tensor):
            if not name.endswith(".weight"):
                raise ValueError(f"tensor {name}: a 4-bit tensor that is not a layer's weight cannot be exported")
            if t.offsets is not None:
                t, err, dmax = symmetric(t)
                redone[name] = (err, dmax)
            N, K = t.shape
            flat[module + ".weight_packed"] = np.ascontiguousarray(t.qweight).view(np.int32)
            flat[module + ".weight_scale"] = t.scales.astype(np.float16)
            flat[module + ".weight_shape"] = np.array([N, K], np.int64)
            groups.setdefault(t.group_size, []).append(module)
        else:
            if is_linear(name):  # the int8 lm_head (dequantized) or a linear llmgpu keeps in floats
                ignore.append(module)
            flat[name] = _float(dequantize(t) if isinstance(t, Q8Tensor) else t)
    if not groups:
        raise ValueError("this checkpoint has no 4-bit weights; there is nothing to write as compressed-tensors")
    return flat, quantization_config(groups, ignore), redone


def _requantized_message(redone: dict, total: int) -> str:
    name, (worst, _) = max(redone.items(), key=lambda kv: kv[1][0])
    mean = float(np.mean([e for e, _ in redone.values()]))
    dmax = max(d for _, d in redone.values())
    return (f"{len(redone)} of {total} 4-bit weights have per-group offsets (w = s*q + o, e.g. from a Q4_1 GGUF), "
            f"which symmetric int4 cannot hold: re-quantized to symmetric int4 (same group size), so the export "
            f"differs from llmgpu's weights: relative error {mean:.3g} mean, {worst:.3g} max ({name}), largest "
            f"change of one weight {dmax:.3g} (never more than one step of its new scale); for exact weights "
            "export --to gguf, or quantize the float model without --asymmetric")


def _hf_files(ckpt: Checkpoint, qconfig: dict) -> dict:
    cfg = ckpt.config.to_hf()
    # llmgpu's lm_head is its own (int8) tensor even where the source tied it to the embedding
    cfg.update(tie_word_embeddings="lm_head.weight" not in ckpt.tensors, torch_dtype="float16",
               quantization_config=qconfig)
    if ckpt.bos_token_id is not None:
        cfg["bos_token_id"] = ckpt.bos_token_id
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": bool(ckpt.add_bos), "add_eos_token": False,
          "bos_token": ckpt.bos_token, "eos_token": ckpt.eos_token, "clean_up_tokenization_spaces": False,
          "model_max_length": ckpt.config.max_position_embeddings}
    if ckpt.chat_template:
        tc["chat_template"] = ckpt.chat_template
    eos = list(ckpt.eos_token_ids) or list(ckpt.config.eos_token_id)
    gen = {"bos_token_id": ckpt.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos}
    return {"config.json": cfg, "tokenizer_config.json": tc, "generation_config.json": gen}


def check_ct_target(out, source=None, force: bool = False) -> Path:
    """The resolved output directory, or an error if writing it would destroy what it should not: the
    source (or a directory inside or around it), a file, a directory that is not an earlier
    compressed-tensors export, or an earlier export without ``force``. An empty directory is used."""
    out = Path(out).expanduser().resolve()
    if source is not None:
        src = Path(source).resolve()
        if out == src or src in out.parents or out in src.parents:
            raise ValueError(f"the output {out} would overwrite the source {src}; choose an output path outside it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such directory")
    if not os.path.lexists(out):
        return out
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose a new output path (compressed-tensors "
                              "is a directory)")
    names = {p.name for p in out.iterdir()}
    if not names:
        return out
    try:
        ours = names <= CT_FILES and json.loads((out / "config.json").read_text("utf-8"))[
            "quantization_config"]["quant_method"] == "compressed-tensors"
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    from .loader import check_replace
    check_replace(out, names, ours, "compressed-tensors export", force)
    return out


def export_compressed_tensors(ckpt: Checkpoint, out, *, force: bool = False, progress: bool = True,
                              requantize: bool = False) -> Path:
    """Write ``ckpt`` as a compressed-tensors directory at ``out`` (see the module doc), atomically.
    Weights with offsets raise :class:`OffsetsError`, or with ``requantize`` are re-quantized with a
    :class:`RequantizedWarning`."""
    from safetensors.numpy import save_file

    q4 = [n for n, t in ckpt.tensors.items() if isinstance(t, Q4Tensor)]
    offsets = [n for n in q4 if ckpt.tensors[n].offsets is not None]
    if offsets and not requantize:
        raise OffsetsError(
            f"{len(offsets)} of {len(q4)} 4-bit weights have per-group offsets (w = s*q + o, e.g. {offsets[0]}: "
            "from a Q4_1 GGUF or llmgpu quantize --asymmetric), which the symmetric int4 of compressed-tensors "
            "cannot hold; pass --requantize (requantize=True) to re-quantize them, which changes the model (the "
            "warning then says by how much), or export --to gguf (exact), or quantize the float model without "
            "--asymmetric")
    out = check_ct_target(out, _source_path(ckpt), force)
    sweep_temp_dirs(out.parent, out.name)
    tmp = _temp_path(out, "tmp")
    tmp.mkdir()
    try:
        flat, qconfig, redone = compressed_tensors_state(ckpt, progress)
        if redone:
            warnings.warn(_requantized_message(redone, len(q4)), RequantizedWarning, stacklevel=2)
        save_file(flat, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del flat
        for fname, obj in _hf_files(ckpt, qconfig).items():
            (tmp / fname).write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
        ckpt.tokenizer.save(str(tmp / "tokenizer.json"))
        for p in tmp.iterdir():
            os.chmod(p, 0o666 & ~_umask())
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
