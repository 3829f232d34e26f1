import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmgpu import loader
from llmgpu.loader import (Checkpoint, load_cached_or_quantize, load_checkpoint, quantize_checkpoint,
                           save_q4_checkpoint)
from llmgpu.quant import Q4Tensor, Q8Tensor, dequantize

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world! 12345 apples, 678 pears.",
          "Ünïcödé text: café, naïve, 你好, 🙂", "def f(x):\n    return x * 2\n"] * 20


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return t


def make_hf_dir(path: Path, tok, cls_name="LlamaConfig", dtype=torch.float32, shard=None, *, rng, **kw) -> dict:
    """A tiny random transformers checkpoint with tokenizer files; returns its float32 state dict."""
    torch.manual_seed(int(rng.integers(2**31)))
    cfg = getattr(transformers, cls_name)(**{
        "vocab_size": tok.get_vocab_size(), "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "bos_token_id": 1, "eos_token_id": 2, **kw})
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():  # norms start at 1 and biases at 0: make every tensor distinct
            p.normal_()
    model = model.to(dtype)
    model.save_pretrained(path, max_shard_size=shard) if shard else model.save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHAT, "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
         "add_bos_token": True}))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


def assert_matches_state_dict(ckpt: Checkpoint, sd: dict, tied: bool):
    expect = {k for k in sd if not (tied and k == "lm_head.weight")}
    assert set(ckpt.tensors) == expect
    for k in expect:
        assert ckpt.tensors[k].dtype == np.float32
        np.testing.assert_array_equal(ckpt.tensors[k], sd[k], err_msg=k)


@pytest.mark.parametrize("cls_name,kw", [
    ("LlamaConfig", {"tie_word_embeddings": True}),
    ("LlamaConfig", {"attention_bias": True}),
    ("MistralConfig", {"sliding_window": 64}),
    ("Qwen2Config", {}),
    ("Qwen3Config", {"tie_word_embeddings": True}),
])
def test_hf_dir_matches_state_dict(tmp_path, rng, tok, cls_name, kw):
    sd = make_hf_dir(tmp_path, tok, cls_name, **kw, rng=rng)
    ckpt = load_checkpoint(tmp_path)
    assert_matches_state_dict(ckpt, sd, tied=kw.get("tie_word_embeddings", False))
    cfg = ckpt.config
    assert cfg.model_type == cls_name[:-6].lower() and cfg.head_dim == 16
    assert ckpt.chat_template == CHAT and ckpt.bos_token == "<|im_start|>" and ckpt.eos_token == "<|im_end|>"
    assert ckpt.eos_token_ids == (2, 0) and ckpt.add_bos and ckpt.bos_token_id == 1
    assert ckpt.source == str(tmp_path.resolve()) and ckpt.group_size is None
    assert ckpt.tokenizer.encode("Hello world").ids == tok.encode("Hello world").ids
    if cls_name == "Qwen2Config":
        assert "model.layers.1.self_attn.v_proj.bias" in ckpt.tensors
    if cls_name == "Qwen3Config":
        assert ckpt.tensors["model.layers.0.self_attn.q_norm.weight"].shape == (16,)


def test_bf16_and_sharded(tmp_path, rng, tok):
    sd = make_hf_dir(tmp_path / "bf16", tok, dtype=torch.bfloat16, rng=rng)
    assert "BF16" in (tmp_path / "bf16" / "model.safetensors").read_bytes()[:4096].decode("latin1")
    ckpt = load_checkpoint(tmp_path / "bf16")
    assert_matches_state_dict(ckpt, sd, tied=False)  # bf16 -> f32 is exact
    half = load_checkpoint(tmp_path / "bf16", dtype=np.float16)
    assert half.tensors["model.norm.weight"].dtype == np.float16

    sd = make_hf_dir(tmp_path / "sharded", tok, shard="40KB", rng=rng)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert_matches_state_dict(load_checkpoint(tmp_path / "sharded"), sd, tied=False)


def test_read_safetensors_all_dtypes(tmp_path, rng):
    from safetensors.numpy import save_file
    arrs = {"f32": rng.standard_normal((3, 5)).astype(np.float32), "f16": rng.standard_normal(7).astype(np.float16),
            "i64": rng.integers(-9, 9, (2, 2)), "u8": rng.integers(0, 255, 4).astype(np.uint8)}
    save_file(arrs, str(tmp_path / "x.safetensors"))
    got = loader.read_safetensors(tmp_path / "x.safetensors")
    for k, v in arrs.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v)
    bits = rng.integers(0, 2**16, 1000).astype(np.uint16)
    ref = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(loader.bf16_to_f32(bits), ref)


def test_errors_say_what_to_do(tmp_path, rng, tok):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.gguf"):
        load_checkpoint(tmp_path / "w.bin")
    d = tmp_path / "m"
    make_hf_dir(d, tok, rng=rng)
    os.remove(d / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_checkpoint(d)
    make_hf_dir(d, tok, rng=rng)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="missing 9 tensors"):
        load_checkpoint(d)
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 64}))
    with pytest.raises(ValueError, match="wrong shapes"):
        load_checkpoint(d)
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "phi3"}))
    with pytest.raises(ValueError, match="unsupported model_type 'phi3'"):
        load_checkpoint(d)


def test_hub_id_from_offline_cache(tmp_path, rng, tok):
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("ab" * 20)
    snap.mkdir(parents=True)
    sd = make_hf_dir(snap, tok, rng=rng)
    np.save(tmp_path / "embed.npy", sd["model.embed_tokens.weight"])
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("ab" * 20)
    code = f"""
import numpy as np
from llmgpu.loader import load_checkpoint
c = load_checkpoint("org/tiny")
assert c.source == "org/tiny", c.source
np.testing.assert_array_equal(c.tensors["model.embed_tokens.weight"], np.load({str(tmp_path / 'embed.npy')!r}))
try:
    load_checkpoint("org/missing")
except FileNotFoundError as e:
    print("MISSING:", e)
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr
    assert "MISSING: could not fetch 'org/missing'" in r.stdout and "local cache" in r.stdout


# ---- GGUF ----------------------------------------------------------------------------------------

Q = gguf.GGMLQuantizationType
# Written independently of loader.GGUF_TO_HF on purpose.
HF_TO_GGUF_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                    "post_attention_layernorm": "ffn_norm", "self_attn.q_norm": "attn_q_norm",
                    "self_attn.k_norm": "attn_k_norm"}


def llama_cpp_permute(w, n_head):
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows of llama models."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, arch, sd, cfg, tok, qtypes):
    """sd (HF names, float32) -> GGUF file; qtypes: HF name -> GGML type (default F32)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t.startswith("<|") else 1 for t, _ in vocab])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT)
    for name, a in sd.items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            a = llama_cpp_permute(a, cfg.num_attention_heads if ".q_proj" in name else cfg.num_key_value_heads)
        parts = name.split(".")
        if name.startswith("model.layers."):
            gname = f"blk.{parts[2]}.{HF_TO_GGUF_LAYER['.'.join(parts[3:-1])]}.{parts[-1]}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        qt = qtypes.get(name, Q.F32)
        if qt == Q.F32:
            w.add_tensor(gname, a.astype(np.float32))
        elif qt == Q.F16:
            w.add_tensor(gname, a.astype(np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(a.astype(np.float32), qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def unpermute_reference(w, n_head):
    """Inverse of llama_cpp_permute, found by permuting row numbers."""
    idx = llama_cpp_permute(np.arange(w.shape[0]), n_head)
    return w[np.argsort(idx)]


@pytest.mark.parametrize("arch,cls_name,kw", [("llama", "LlamaConfig", {}),
                                              ("llama", "LlamaConfig", {"tie_word_embeddings": True}),
                                              ("llama", "LlamaConfig", {"attention_bias": True}),  # q/k biases permuted too
                                              ("qwen2", "Qwen2Config", {}),
                                              ("qwen3", "Qwen3Config", {"tie_word_embeddings": True})])
def test_gguf_round_trip_undoes_llama_cpp_permutation(tmp_path, rng, tok, arch, cls_name, kw):
    hf_dir = tmp_path / "hf"
    sd = make_hf_dir(hf_dir, tok, cls_name, **kw, rng=rng)
    cfg = transformers.AutoConfig.from_pretrained(hf_dir)
    tied = cfg.tie_word_embeddings
    # layer 0 q/k stay F32 (exact check); layer 1 q/k/o and the MLP are q4 or other GGML types
    qtypes = {"model.layers.1.self_attn.q_proj.weight": Q.Q4_0, "model.layers.1.self_attn.k_proj.weight": Q.Q4_1,
              "model.layers.1.self_attn.v_proj.weight": Q.Q8_0, "model.layers.1.self_attn.o_proj.weight": Q.F16,
              "model.layers.0.mlp.down_proj.weight": Q.Q4_1, "model.layers.0.mlp.up_proj.weight": Q.Q4_0,
              "model.embed_tokens.weight": Q.Q4_0 if tied else Q.Q8_0}
    path = tmp_path / "m.gguf"
    write_gguf(path, arch, sd, cfg, tok, qtypes)
    ckpt = load_checkpoint(path)
    assert ckpt.config.model_type == arch and ckpt.config.tie_word_embeddings == tied
    assert ckpt.config.attention_bias == (arch == "qwen2" or kw.get("attention_bias", False))
    assert ckpt.config.qk_norm == (arch == "qwen3")
    reader = gguf.GGUFReader(path)
    raw = {t.name: t for t in reader.tensors}
    for name, ref in sd.items():
        got = ckpt.tensors.get(name)
        if name == "lm_head.weight" and tied:
            assert isinstance(got, Q4Tensor)  # the Q4_0 embedding, kept exact as lm_head
            ref = dequantize(got)
            np.testing.assert_array_equal(ckpt.tensors["model.embed_tokens.weight"], ref)
            continue
        qt = qtypes.get(name, Q.F32)
        if qt == Q.F32:
            np.testing.assert_array_equal(got, ref, err_msg=name)
            continue
        gname = next(t for t in raw if loader.gguf_name_to_hf(t) == name)
        deq = gguf.quants.dequantize(raw[gname].data, qt).reshape(ref.shape)
        if arch == "llama" and (".q_proj" in name or ".k_proj" in name):
            deq = unpermute_reference(deq, cfg.num_attention_heads if ".q_proj" in name else cfg.num_key_value_heads)
        if qt in (Q.Q4_0, Q.Q4_1) and name != "model.embed_tokens.weight":
            assert isinstance(got, Q4Tensor) and (got.offsets is not None) == (qt == Q.Q4_1)
            got = dequantize(got)
        np.testing.assert_array_equal(got, deq, err_msg=name)
        rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert rel < 0.15, (name, rel)  # and it is the original weight, not a shuffled one
    assert ckpt.chat_template == CHAT and ckpt.eos_token == "<|im_end|>" and ckpt.eos_token_ids == (2,)
    assert not ckpt.add_bos and ckpt.group_size == 32
    prng = random.Random(int(rng.integers(2**63)))
    for _ in range(10):
        s = "".join(prng.choice(CORPUS[prng.randrange(4)]) for _ in range(40))
        assert ckpt.tokenizer.encode(s).ids == tok.encode(s).ids


@pytest.fixture(scope="module")
def smol():
    from llmgpu.defaults import default_model_path
    return load_checkpoint(default_model_path())


def test_smollm2_gguf(smol):
    from llmgpu.tokenizer import render_chat
    c = smol.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (576, 30, 9, 3)
    assert c.vocab_size == 49152 and c.tie_word_embeddings and "lm_head.weight" not in smol.tensors
    assert smol.tensors["model.embed_tokens.weight"].shape == (49152, 576)
    assert all(isinstance(smol.tensors[f"model.layers.{i}.{s}"], Q4Tensor)
               for i in range(30) for s in loader.LINEAR_SUFFIXES)
    text = "Hello world, café 🙂 2024!"
    assert smol.tokenizer.decode(smol.tokenizer.encode(text).ids) == text
    assert smol.tokenizer.encode("Hello world").ids == [19556, 905]
    prompt = render_chat(smol.chat_template, [{"role": "user", "content": "Hi"}],
                         bos_token=smol.bos_token, eos_token=smol.eos_token)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert smol.eos_token_ids == (2,) and smol.eos_token == "<|im_end|>" and not smol.add_bos
    # the real file's q rows, un-permuted by the reference inverse
    t = next(t for t in gguf.GGUFReader(smol.source).tensors if t.name == "blk.7.attn_q.weight")
    deq = unpermute_reference(gguf.quants.dequantize(t.data, t.tensor_type), 9)
    np.testing.assert_array_equal(dequantize(smol.tensors["model.layers.7.self_attn.q_proj.weight"]), deq)


# ---- quantize, save, cache -----------------------------------------------------------------------

def test_quantize_save_load_round_trip(tmp_path, rng, tok):
    make_hf_dir(tmp_path / "hf", tok, tie_word_embeddings=True, rng=rng)
    ckpt = load_checkpoint(tmp_path / "hf")
    q = quantize_checkpoint(ckpt, group_size=32, progress=False)
    assert q.group_size == 32 and "lm_head.weight" not in ckpt.tensors  # input untouched
    assert isinstance(q.tensors["lm_head.weight"], Q8Tensor)  # int8 lm_head by default
    assert isinstance(q.tensors["model.embed_tokens.weight"], np.ndarray)
    n_linear = 1 + 7 * 2
    assert len(q.quant_errors) == n_linear and all(0 < e < 0.15 for e in q.quant_errors.values())
    assert q.quant_errors["lm_head.weight"] < 0.01
    np.testing.assert_allclose(dequantize(q.tensors["lm_head.weight"]), ckpt.tensors["model.embed_tokens.weight"],
                               atol=0.05)
    q4 = quantize_checkpoint(ckpt, group_size=32, progress=False, lm_head="q4")
    assert isinstance(q4.tensors["lm_head.weight"], Q4Tensor)
    again = quantize_checkpoint(q, group_size=64, progress=False)
    assert all(again.tensors[n] is q.tensors[n] for n in q.tensors if isinstance(q.tensors[n], Q4Tensor))
    assert again.group_size == 32  # nothing left to quantize at 64
    name = "model.layers.0.self_attn.q_proj.weight"
    mixed = quantize_checkpoint(Checkpoint(**{**q.__dict__, "tensors": {**q.tensors, name: ckpt.tensors[name]}}),
                                group_size=64, progress=False)
    assert mixed.tensors[name].group_size == 64 and mixed.group_size is None

    out = save_q4_checkpoint(q, tmp_path / "q4")
    meta = json.loads((out / "llmgpu.json").read_text())
    assert meta["format"] == "q4gsw" and meta["group_size"] == 32 and meta["source"] == ckpt.source
    assert abs(meta["quant_error_mean"] - np.mean(list(q.quant_errors.values()))) < 1e-12
    back = load_checkpoint(out)
    assert back.config == q.config and back.source == ckpt.source and back.group_size == 32
    assert (back.chat_template, back.bos_token, back.eos_token, back.eos_token_ids, back.add_bos) == \
           (q.chat_template, q.bos_token, q.eos_token, q.eos_token_ids, q.add_bos)
    assert back.tokenizer.encode("Hello 🙂").ids == tok.encode("Hello 🙂").ids
    assert set(back.tensors) == set(q.tensors)
    for n, t in q.tensors.items():
        if isinstance(t, (Q4Tensor, Q8Tensor)):
            b = back.tensors[n]
            assert type(b) is type(t) and b.group_size == t.group_size
            np.testing.assert_array_equal(b.qweight, t.qweight)
            np.testing.assert_array_equal(b.scales, t.scales)
        else:
            np.testing.assert_allclose(back.tensors[n], t, rtol=1e-3, atol=1e-6)


def test_gguf_q4_1_offsets_survive_save(tmp_path, smol):
    out = save_q4_checkpoint(smol, tmp_path / "smol")
    back = load_checkpoint(out, dtype=np.float16)
    a, b = smol.tensors["model.layers.0.mlp.up_proj.weight"], back.tensors["model.layers.0.mlp.up_proj.weight"]
    assert b.offsets is not None and b.offsets.dtype == np.float32
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert back.config == smol.config and back.eos_token_ids == (2,)


def test_save_is_atomic(tmp_path, rng, tok, monkeypatch):
    make_hf_dir(tmp_path / "hf", tok, rng=rng)
    q = quantize_checkpoint(load_checkpoint(tmp_path / "hf"), progress=False)
    import safetensors.numpy

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_q4_checkpoint(q, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no target, no temp dir left
    monkeypatch.undo()
    save_q4_checkpoint(q, tmp_path / "out")
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    monkeypatch.setattr(safetensors.numpy, "save_file", broken_save)
    with pytest.raises(OSError):
        save_q4_checkpoint(q, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before  # old version intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]


def test_load_cached_or_quantize(tmp_path, rng, tok, monkeypatch):
    monkeypatch.setenv("LLMGPU_CACHE", str(tmp_path / "cache"))
    assert loader.cache_dir() == tmp_path / "cache"
    src = tmp_path / "hf"
    make_hf_dir(src, tok, intermediate_size=128, rng=rng)
    first = load_cached_or_quantize(src, 32, progress=False)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and (entries[0] / "llmgpu.json").is_file()
    assert first.source == str(src.resolve()) and isinstance(first.tensors["lm_head.weight"], Q8Tensor)

    def no_quantizing(*a, **k):
        raise AssertionError("should have come from the cache")
    monkeypatch.setattr(loader, "quantize_checkpoint", no_quantizing)
    second = load_cached_or_quantize(src, 32, progress=False)
    np.testing.assert_array_equal(second.tensors["lm_head.weight"].qweight, first.tensors["lm_head.weight"].qweight)
    monkeypatch.undo()
    monkeypatch.setenv("LLMGPU_CACHE", str(tmp_path / "cache"))
    load_cached_or_quantize(src, 64, progress=False)  # other group size: other entry
    q = load_cached_or_quantize(src, 128, progress=False)  # K = 64: 64, the largest size that divides it
    assert q.tensors["model.layers.0.self_attn.q_proj.weight"].group_size == 64
    assert q.tensors["model.layers.0.mlp.down_proj.weight"].group_size == 128
    cfg = src / "config.json"
    os.utime(cfg, ns=(cfg.stat().st_atime_ns, cfg.stat().st_mtime_ns + 10**9))  # source changed
    load_cached_or_quantize(src, 32, progress=False)
    assert len(list((tmp_path / "cache").iterdir())) == 4
    shutil.rmtree(tmp_path / "cache")
