"""`llmgpu export --to compressed-tensors` (what vLLM loads): the directory loaded by transformers, whose
compressed-tensors integration (the `compressed-tensors` library) decompresses every packed weight, equals
llmgpu's dequantized weights exactly, computes the same logits, and its tokenizer and config load with
transformers' Auto classes. Tiny random checkpoints, no GPU."""
import dataclasses
import json
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from llmgpu import cli  # noqa: E402
from llmgpu.export import OffsetsError, RequantizedWarning, export_compressed_tensors  # noqa: E402
from llmgpu.loader import save_q4_checkpoint  # noqa: E402
from llmgpu.quant import Q4Tensor, Q8Tensor, dequantize, quantize  # noqa: E402
from llmgpu.tokenizer import render_chat  # noqa: E402

from .test_export import TEXTS, tiny  # noqa: E402
from .test_model import ARCHS, BASE, make_checkpoint, reference_logits  # noqa: E402


def ours(t) -> np.ndarray:
    return dequantize(t) if isinstance(t, (Q4Tensor, Q8Tensor)) else np.asarray(t, np.float32)


def load_decompressed(path):
    """The export as transformers loads it (f32; each module compressed with the scheme its config group
    gives it), then every packed weight decompressed by the compressed-tensors library's ModelCompressor.
    Returns the model and its weights, without the quantization parameters that stay beside them."""
    m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    m.hf_quantizer.compressor.decompress_model(m)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    assert not any(k.endswith("weight_packed") for k in sd)  # all decompressed
    return m, {k: v for k, v in sd.items() if not k.endswith(("weight_scale", "weight_shape"))}


def quantization_config(path) -> dict:
    return json.loads((path / "config.json").read_text())["quantization_config"]


def test_weights_tokenizer_and_config_round_trip_exactly(tmp_path, rng):
    ck = tiny(rng, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no offsets: nothing is re-quantized, nothing to warn about
        out = export_compressed_tensors(ck, tmp_path / "ct", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ct"]  # no temporary left beside it
    qc = quantization_config(out)
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert qc["quantization_status"] == "compressed" and qc["ignore"] == ["lm_head"]
    (scheme,) = qc["config_groups"].values()
    assert scheme["targets"] == ["Linear"] and scheme["weights"] == {**scheme["weights"], "num_bits": 4,
                                                                     "type": "int", "symmetric": True,
                                                                     "strategy": "group", "group_size": 32}
    from compressed_tensors.quantization import QuantizationConfig
    QuantizationConfig.model_validate(qc)  # the library's own schema

    model, sd = load_decompressed(out)
    assert set(sd) == set(ck.tensors)  # lm_head is its own tensor: llmgpu's int8 one, not the embedding
    for name, t in ck.tensors.items():
        np.testing.assert_array_equal(sd[name], ours(t), err_msg=name)

    from safetensors import safe_open
    with safe_open(out / "model.safetensors", "np") as f:
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight_packed")
        assert q.dtype == np.int32 and q.shape == (128, 128 // 8)  # 8 nibbles per int32
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight_shape").tolist() == [128, 128]
        assert f.get_tensor("model.embed_tokens.weight").dtype == np.float16  # f16 where exact

    cfg = transformers.AutoConfig.from_pretrained(out)
    assert type(cfg).__name__ == "LlamaConfig" and cfg.tie_word_embeddings is False
    assert (cfg.num_key_value_heads, cfg.rope_theta if hasattr(cfg, "rope_theta") else
            cfg.rope_parameters["rope_theta"]) == (2, 50000.0)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert tok(text, add_special_tokens=True)["input_ids"] == ck.tokenizer.encode(text).ids
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world!"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        render_chat(ck.chat_template, msgs)
    assert tok.eos_token == ck.eos_token and tok.convert_tokens_to_ids(tok.eos_token) == ck.eos_token_ids[0]
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == ck.eos_token_ids[0] and gen["bos_token_id"] == ck.bos_token_id


@pytest.mark.parametrize("arch", ["llama-tied", "llama3-rope", "qwen2", "qwen3"])
def test_transformers_runs_the_export_as_llmgpus_model(tmp_path, rng, arch):
    """Biases, q/k norms, llama3 rope scaling, tied embeddings: the export's config.json describes the model
    llmgpu runs (transformers' logits on the decompressed export == on llmgpu's dequantized weights)."""
    ckpt, hf_cfg = make_checkpoint(tmp_path / "src", arch, rng)
    out = export_compressed_tensors(ckpt, tmp_path / "ct", progress=False)
    model, sd = load_decompressed(out)
    for name, t in ckpt.tensors.items():
        np.testing.assert_array_equal(sd[name], ours(t), err_msg=name)
    ids = [int(i) for i in rng.integers(0, BASE["vocab_size"], 17)]
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0].double().numpy()
    np.testing.assert_allclose(got, reference_logits(ckpt, hf_cfg, ids), rtol=0, atol=1e-5)
    assert ARCHS[arch][0] == type(model.config).__name__


def test_mixed_group_sizes_get_one_scheme_each(tmp_path, rng):
    ck = tiny(rng, 32)
    down = [n for n in ck.tensors if n.endswith("down_proj.weight")]
    for n in down:  # K = 256: group 128 there, 32 elsewhere (as --group-size 128 gives when K = 576 elsewhere)
        ck.tensors[n] = quantize(dequantize(ck.tensors[n]), 128)[0]
    ck = dataclasses.replace(ck, group_size=None)
    out = export_compressed_tensors(ck, tmp_path / "ct", progress=False)
    groups = {g["weights"]["group_size"]: g["targets"] for g in quantization_config(out)["config_groups"].values()}
    assert groups[128] == sorted(n.removesuffix(".weight") for n in down)
    assert len(groups[32]) == 2 * 6 and not set(groups[32]) & set(groups[128])
    _, sd = load_decompressed(out)
    for name, t in ck.tensors.items():
        np.testing.assert_array_equal(sd[name], ours(t), err_msg=name)


def test_offsets_are_refused_or_requantized_within_the_stated_error(tmp_path, rng):
    ck = tiny(rng, 32, offsets=True)  # model.layers.1.mlp.up_proj.weight as a Q4_1 GGUF imports it
    name = "model.layers.1.mlp.up_proj.weight"
    with pytest.raises(OffsetsError, match=rf"1 of 14 4-bit weights have per-group offsets .*{name}.*--requantize"):
        export_compressed_tensors(ck, tmp_path / "ct", progress=False)
    assert os.listdir(tmp_path) == []  # refused before anything was written
    with pytest.warns(RequantizedWarning) as rec:
        out = export_compressed_tensors(ck, tmp_path / "ct", progress=False, requantize=True)
    (w,) = rec
    msg = str(w.message)
    assert msg.startswith("1 of 14 4-bit weights have per-group offsets") and name in msg and "--to gguf" in msg
    _, sd = load_decompressed(out)
    for n, t in ck.tensors.items():
        if n != name:
            np.testing.assert_array_equal(sd[n], ours(t), err_msg=n)
    orig = ours(ck.tensors[name])
    got = sd[name]
    rel_err = np.linalg.norm(got - orig) / np.linalg.norm(orig)
    assert f"relative error {rel_err:.3g} mean, {rel_err:.3g} max" in msg  # the numbers said are the real ones
    assert f"largest change of one weight {np.abs(got - orig).max():.3g}" in msg
    # "never more than one step of its new scale" (f16 rounding of the scale aside), and not a wild re-fit
    with safe_open_np(out) as f:
        step = np.abs(f.get_tensor(name.removesuffix(".weight") + ".weight_scale"))
    assert np.all(np.abs(got - orig).reshape(256, -1, 32) <= step[:, :, None] * (1 + 2**-8))
    assert rel_err < 0.1


def safe_open_np(out):
    from safetensors import safe_open
    return safe_open(out / "model.safetensors", "np")


def test_targets_refused_unless_ours_and_forced_and_failures_leave_nothing(tmp_path, rng, monkeypatch):
    ck = tiny(rng)
    out = tmp_path / "ct"
    export_compressed_tensors(ck, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="earlier compressed-tensors export; pass --force"):
        export_compressed_tensors(ck, out, progress=False)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a compressed-tensors export"):
        export_compressed_tensors(ck, other, force=True, progress=False)  # --force never deletes other files
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        export_compressed_tensors(ck, tmp_path / "file", force=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        export_compressed_tensors(ck, tmp_path / "absent" / "ct", progress=False)

    import llmgpu.export as ex

    def broken(*a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("safetensors.numpy.save_file", broken)
    with pytest.raises(OSError, match="No space"):
        export_compressed_tensors(ck, out, force=True, progress=False)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier export, untouched
    floats = dataclasses.replace(ck, tensors={n: ours(t) for n, t in ck.tensors.items()})
    with pytest.raises(ValueError, match="no 4-bit weights"):
        export_compressed_tensors(floats, tmp_path / "empty", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ct", "file", "mine"]  # no temporary directory left anywhere
    assert ex.CT_FILES == set(before)
    export_compressed_tensors(ck, out, force=True, progress=False)  # an earlier export is replaced with --force


def test_cli_export_compressed_tensors(tmp_path, rng, capsys):
    ck = tiny(rng, 64, offsets=False)
    ck.tensors["model.layers.0.mlp.gate_proj.weight"] = quantize(dequantize(ck.tensors[
        "model.layers.0.mlp.gate_proj.weight"]), 64, asymmetric=True)[0]  # llmgpu quantize --asymmetric
    src = save_q4_checkpoint(ck, tmp_path / "q4")
    out = tmp_path / "ct"
    assert cli.main(["export", str(src), "--to", "compressed-tensors", "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.layers.0.mlp.gate_proj.weight" in err and "--requantize" in err
    assert sorted(os.listdir(tmp_path)) == ["q4"]
    assert cli.main(["export", str(src), "--to", "compressed-tensors", "-o", str(out), "-q", "--requantize"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("llmgpu: warning: 1 of 14 4-bit weights have per-group offsets")
    assert err[1].startswith(f"wrote {out} (compressed-tensors") and len(err) == 2
    assert quantization_config(out)["config_groups"]["group_0"]["weights"]["group_size"] == 64
    for argv, what in (([], "earlier compressed-tensors export; pass --force"),
                       (["-o", str(src)], "would overwrite the source")):
        args = ["export", str(src), "--to", "compressed-tensors", "-o", str(out), "-q", "--requantize", *argv]
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("llmgpu: error: ") and what in err
    assert cli.main(["export", str(tmp_path / "nothing"), "--to", "compressed-tensors", "-o",
                     str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert cli.main(["export", str(src), "--to", "compressed-tensors", "-o", str(out), "-q", "--force",
                     "--requantize"]) == 0
