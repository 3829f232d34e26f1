import numpy as np
import pytest

from llmgpu.config import ModelConfig, rope_inv_freq

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def hf_dict(cls_name, **kw):
    """config.json as transformers 5 writes it (rope_parameters, not rope_theta/rope_scaling)."""
    return getattr(transformers, cls_name)(**{**TINY, **kw}).to_dict()


@pytest.mark.parametrize("cls_name,mt", [("LlamaConfig", "llama"), ("MistralConfig", "mistral"),
                                         ("Qwen2Config", "qwen2"), ("Qwen3Config", "qwen3")])
def test_from_hf_model_types(cls_name, mt):
    cfg = ModelConfig.from_hf(hf_dict(cls_name, rope_theta=12345.0, tie_word_embeddings=True))
    assert cfg.model_type == mt
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (128, 64, 96, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    expect_hd = 128 if mt == "qwen3" else 16  # Qwen3Config's default head_dim is 128
    assert cfg.head_dim == expect_hd and cfg.q_dim == 4 * expect_hd and cfg.kv_dim == 2 * expect_hd
    assert cfg.rope_theta == 12345.0 and cfg.rope_scaling is None
    assert cfg.tie_word_embeddings
    assert cfg.attention_bias == (mt == "qwen2")
    assert cfg.qk_norm == (mt == "qwen3")
    assert cfg.sliding_window is None
    hash(cfg)  # frozen and hashable even with a rope_scaling dict field


def test_from_hf_v4_style_and_derived_head_dim():
    d = {"model_type": "llama", **TINY, "rope_theta": 500000.0, "attention_bias": True,
         "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64},
         "eos_token_id": [5, 7], "bos_token_id": 3, "torch_dtype": "bfloat16", "unknown_field": 1}
    cfg = ModelConfig.from_hf(d)
    assert cfg.head_dim == 16 and cfg.attention_bias and cfg.rope_theta == 500000.0
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_scaling["factor"] == 8.0
    assert cfg.eos_token_id == (5, 7) and cfg.bos_token_id == 3
    assert ModelConfig.from_hf({**d, "eos_token_id": 9}).eos_token_id == (9,)
    assert ModelConfig.from_hf({**d, "eos_token_id": None}).eos_token_id == ()
    assert not ModelConfig.from_hf({**d, "tie_word_embeddings": None}).tie_word_embeddings


def test_mistral_sliding_window_recorded_only_when_smaller():
    assert ModelConfig.from_hf(hf_dict("MistralConfig", sliding_window=32)).sliding_window == 32
    assert ModelConfig.from_hf(hf_dict("MistralConfig", sliding_window=4096)).sliding_window is None
    assert ModelConfig.from_hf(hf_dict("MistralConfig", sliding_window=None)).sliding_window is None


@pytest.mark.parametrize("patch,words", [
    ({"model_type": "gemma"}, ["gemma", "supported", "llama"]),
    ({"mlp_bias": True}, ["mlp_bias"]),
    ({"hidden_act": "gelu"}, ["gelu"]),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None}, ["yarn", "supported"]),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, ["dynamic"]),
    ({"partial_rotary_factor": 0.5}, ["partial_rotary_factor"]),
    ({"vocab_size": None}, ["vocab_size"]),
    ({"quantization_config": {"quant_method": "awq"}}, ["awq", "GGUF"]),
])
def test_from_hf_refuses_clearly(patch, words):
    d = {**hf_dict("LlamaConfig"), **patch}
    with pytest.raises(ValueError) as e:
        ModelConfig.from_hf(d)
    for w in words:
        assert w in str(e.value)


def test_qwen2_sliding_window_refused():
    d = {**hf_dict("Qwen2Config"), "use_sliding_window": True, "sliding_window": 64}
    with pytest.raises(ValueError, match="sliding"):
        ModelConfig.from_hf(d)


def _hf_inv_freq(cfg_obj):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    return LlamaRotaryEmbedding(cfg_obj).inv_freq.double().numpy()


@pytest.mark.parametrize("trial", range(4))
def test_rope_inv_freq_llama3_matches_transformers(rng, trial):
    head_dim = int(rng.choice([32, 64, 128]))
    scaling = {"rope_type": "llama3", "factor": float(rng.uniform(2, 32)),
               "low_freq_factor": float(rng.uniform(0.5, 2)), "high_freq_factor": float(rng.uniform(3, 8)),
               "original_max_position_embeddings": int(rng.choice([512, 2048, 8192]))}
    theta = float(rng.uniform(1e4, 1e6))
    hf = transformers.LlamaConfig(**{**TINY, "hidden_size": 4 * head_dim, "head_dim": head_dim,
                                     "max_position_embeddings": 32768, "rope_theta": theta,
                                     "rope_scaling": scaling})
    cfg = ModelConfig.from_hf(hf.to_dict())
    ours = rope_inv_freq(cfg)
    ref = _hf_inv_freq(hf)
    assert ours.shape == (head_dim // 2,) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=2e-6)  # HF computes in float32
    base = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    assert (ours < base * 0.999).any() and np.isclose(ours[0], base[0])  # scaling did something


@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 3.0}])
def test_rope_inv_freq_default_and_linear(rope):
    hf = transformers.LlamaConfig(**TINY, rope_theta=10000.0, rope_scaling=rope)
    np.testing.assert_allclose(rope_inv_freq(ModelConfig.from_hf(hf.to_dict())), _hf_inv_freq(hf), rtol=2e-6)


@pytest.mark.parametrize("cls_name", ["LlamaConfig", "MistralConfig", "Qwen2Config", "Qwen3Config"])
def test_to_hf_round_trips_through_transformers(cls_name):
    kw = {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 64}} if cls_name == "LlamaConfig" else {}
    if cls_name == "MistralConfig":
        kw["sliding_window"] = 32
    cfg = ModelConfig.from_hf(hf_dict(cls_name, eos_token_id=[3, 4], bos_token_id=1, **kw))
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg
    again = transformers.AutoConfig.for_model(**cfg.to_hf())
    assert ModelConfig.from_hf(again.to_dict()) == cfg


def test_from_gguf_smollm2():
    import gguf

    from llmgpu.defaults import default_model_path
    cfg = ModelConfig.from_gguf(gguf.GGUFReader(default_model_path()))
    assert cfg.model_type == "llama"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (576, 30, 9, 3)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.head_dim) == (49152, 1536, 64)
    assert cfg.tie_word_embeddings and not cfg.attention_bias and not cfg.qk_norm
    assert cfg.rms_norm_eps == 1e-5 and cfg.rope_theta == 100000.0 and cfg.rope_scaling is None
    assert cfg.max_position_embeddings == 8192
    assert cfg.bos_token_id == 1 and cfg.eos_token_id == (2,)
