"""`llmgpu export --to gguf`: read back with the `gguf` package and its own dequantizer, and with llmgpu's
loader; on tiny random checkpoints (no GPU)."""
import dataclasses
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from llmgpu import cli  # noqa: E402
from llmgpu.config import ModelConfig  # noqa: E402
from llmgpu.export import export_gguf  # noqa: E402
from llmgpu.loader import (Checkpoint, expected_shapes, gguf_name_to_hf, llama_cpp_unpermute_rows,  # noqa: E402
                           load_checkpoint, quantize_checkpoint, save_q4_checkpoint)
from llmgpu.quant import Q4Tensor, Q8Tensor, dequantize, from_gguf_q4_1  # noqa: E402
from tests.fake_model import CHATML, make_tokenizer  # noqa: E402

Q = gguf.GGMLQuantizationType
TEXTS = ["Hello world! How are you today?", "def f(x):\n    return x * 2\n", "café naïve 日本 🙂 12345"]


def tiny(rng, group_size=32, model_type="llama", offsets=False) -> Checkpoint:
    tok = make_tokenizer()
    cfg = ModelConfig(model_type, vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, max_position_embeddings=512, rope_theta=50000.0,
                      rms_norm_eps=1e-5, qk_norm=model_type == "qwen3")
    tensors = {}
    for n, s in expected_shapes(cfg).items():
        w = 0.05 * rng.standard_normal(s) if len(s) == 2 else 1 + 0.1 * rng.standard_normal(s)
        tensors[n] = w.astype(np.float16).astype(np.float32)  # floats as the q4gsw cache keeps them (f16)
    ck = quantize_checkpoint(Checkpoint(cfg, tensors, tok, CHATML, "<|im_start|>", "<|im_end|>", (2,), False,
                                        source="tiny"), group_size, progress=False)
    if offsets:  # one weight as a Q4_1 GGUF would import it (f16 d and m)
        N, K = 256, 128
        d = rng.uniform(1e-3, 1e-2, (N * K // 32, 1)).astype(np.float16)
        m = rng.uniform(-0.05, 0.05, (N * K // 32, 1)).astype(np.float16)
        qs = rng.integers(0, 256, (N * K // 32, 16), dtype=np.uint8)
        raw = np.concatenate([d.view(np.uint8), m.view(np.uint8), qs], axis=1)
        ck.tensors["model.layers.1.mlp.up_proj.weight"] = from_gguf_q4_1(raw.reshape(-1), N, K)
    return ck


def ours(ck, name):
    t = ck.tensors[name]
    w = dequantize(t) if isinstance(t, (Q4Tensor, Q8Tensor)) else np.asarray(t, np.float32)
    cfg = ck.config
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}.get(name.split(".")[-2])
    if heads and cfg.model_type == "llama":  # llama.cpp's row order
        w = w[np.argsort(llama_cpp_unpermute_rows(w.shape[0], heads))]
    return w


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_gguf_dequantized_by_gguf_equals_llmgpus_weights(tmp_path, rng, group_size):
    ck = tiny(rng, group_size, offsets=group_size == 32)
    out = export_gguf(ck, tmp_path / "m.gguf", progress=False)
    r = gguf.GGUFReader(out)
    got = {}
    for t in r.tensors:
        name = gguf_name_to_hf(t.name)
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        got[name] = t.tensor_type
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
        if t.tensor_type == Q.Q4_1:  # d*n + m vs s*(n-8) + (m+8d): the same value, rounded differently
            np.testing.assert_allclose(w, ours(ck, name), rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(w, ours(ck, name), err_msg=name)
    assert set(got) == set(ck.tensors)
    assert got["lm_head.weight"] == Q.Q8_0 and got["model.embed_tokens.weight"] == Q.F16
    assert got["model.norm.weight"] == Q.F32 and got["model.layers.0.self_attn.q_proj.weight"] == Q.Q4_0
    assert got["model.layers.1.mlp.up_proj.weight"] == (Q.Q4_1 if group_size == 32 else Q.Q4_0)
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["llama.attention.head_count_kv"].contents() == 2
    assert r.fields["tokenizer.chat_template"].contents() == CHATML


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_llmgpus_loader_reads_the_export_back(tmp_path, rng, model_type):
    ck = tiny(rng, 64, model_type=model_type)
    back = load_checkpoint(export_gguf(ck, tmp_path / "m.gguf", progress=False))
    # an exported lm_head is its own tensor (output.weight), so the model reads back as untied
    assert back.config == dataclasses.replace(ck.config, tie_word_embeddings=False)
    for name, t in ck.tensors.items():
        b = back.tensors[name]
        want = dequantize(t) if isinstance(t, (Q4Tensor, Q8Tensor)) else t
        got = dequantize(b) if isinstance(b, (Q4Tensor, Q8Tensor)) else b
        np.testing.assert_array_equal(got, want, err_msg=name)  # the loader's un-permutation undoes ours
    for text in TEXTS:
        assert back.tokenizer.encode(text).ids == ck.tokenizer.encode(text).ids
    assert (back.chat_template, back.eos_token_ids, back.bos_token_id, back.add_bos) == \
        (ck.chat_template, ck.eos_token_ids, ck.bos_token_id, ck.add_bos)


def test_existing_target_refused_unless_forced_and_failures_leave_nothing(tmp_path, rng):
    ck = tiny(rng)
    target = tmp_path / "m.gguf"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--force"):
        export_gguf(ck, target, progress=False)
    assert target.read_bytes() == b"keep me"
    bad = dataclasses.replace(ck, tensors={**ck.tensors, "model.layers.0.mlp.extra.weight": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="no GGUF name"):
        export_gguf(bad, target, force=True, progress=False)
    assert target.read_bytes() == b"keep me" and os.listdir(tmp_path) == ["m.gguf"]  # no temporary left
    export_gguf(ck, target, force=True, progress=False)
    assert gguf.GGUFReader(target).fields["general.architecture"].contents() == "llama"


def test_cli_export(tmp_path, rng, capsys):
    ck = tiny(rng)
    src = save_q4_checkpoint(ck, tmp_path / "q4")
    out = tmp_path / "out.gguf"
    assert cli.main(["export", str(src), "--to", "gguf", "-o", str(out), "-q"]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    back = load_checkpoint(out)
    np.testing.assert_array_equal(back.tensors["lm_head.weight"],  # the loader dequantizes Q8_0
                                  dequantize(ck.tensors["lm_head.weight"]))
    assert cli.main(["export", str(src), "--to", "gguf", "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert cli.main(["export", str(src), "--to", "gguf", "-o", str(out), "-q", "--force"]) == 0
    assert cli.main(["export", str(tmp_path / "nothing"), "--to", "gguf", "-o", str(tmp_path / "x.gguf")]) == 2
    assert not (tmp_path / "x.gguf").exists()
