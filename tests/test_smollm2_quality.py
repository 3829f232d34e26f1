"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) on the GPU against transformers on
the CPU running the GGUF's dequantized weights unchanged (float lm_head = the Q8_0 embedding):
teacher-forced top-1 agreement and perplexity of both on a text sample, through llmgpu's prefill
path (logits) and its int8 decode path (one token at a time). Printed with -s; bounds asserted."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmgpu.defaults import default_model_path  # noqa: E402
from llmgpu.loader import load_cached_or_quantize, load_checkpoint  # noqa: E402
from llmgpu.model import Model  # noqa: E402
from llmgpu.quant import Q4Tensor, Q8Tensor, dequantize  # noqa: E402

from .conftest import get_device  # noqa: E402

TEXT = """The lighthouse keeper kept a notebook on the table by the window. Every evening he wrote down
the direction of the wind, the colour of the sea, and the names of the ships that passed before
dark. Most nights the list was short: a fishing boat from the harbour, a ferry on its way to the
islands, sometimes a cargo ship riding low in the water. In winter the storms came from the west,
and the waves climbed the rocks until the spray reached the glass of the lamp room. On those nights
he did not sleep. He climbed the stairs every hour to wipe the lens and check the oil, and he listened
to the wind pushing against the door. When the weather cleared, he walked along the shore and
collected what the sea had left behind: pieces of rope, a wooden crate, once a letter in a bottle
that nobody could read any more. He kept these things in a box under the stairs, and when children
from the village visited in summer, he told them a story about each one."""


def perplexity(logits, ids):
    z = logits[:-1].astype(np.float64)
    z = z - z.max(1, keepdims=True)
    logp = z[np.arange(len(z)), ids[1:]] - np.log(np.exp(z).sum(1))
    return float(np.exp(-logp.mean()))


@pytest.fixture(scope="module")
def setup():
    src = default_model_path()
    raw = load_checkpoint(src)
    cfg = raw.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True)).eval()
    sd = {k: torch.from_numpy(dequantize(t) if isinstance(t, (Q4Tensor, Q8Tensor)) else np.asarray(t, np.float32))
          for k, t in raw.tensors.items() if k != "lm_head.weight"}  # tied: the head is the embedding
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m or m == "lm_head.weight" for m in missing)
    ids = raw.tokenizer.encode(TEXT).ids
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    model = Model(load_cached_or_quantize(src, 32, progress=False), dev=get_device(), max_seq=512)
    return model, ids, ref


def test_prefill_path_agrees_with_the_float_weights(setup):
    model, ids, ref = setup
    got = model.logits(ids)
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    p_ref, p_got = perplexity(ref, ids), perplexity(got, ids)
    print(f"\nSmolLM2 prefill path, {len(ids)} tokens: top-1 agreement {agree:.1%}, "
          f"perplexity llmgpu {p_got:.3f} vs transformers {p_ref:.3f}")
    assert agree >= 0.97 and abs(p_got / p_ref - 1) < 0.01


def test_int8_decode_path_agrees_with_the_float_weights(setup):
    model, ids, ref = setup
    n = 120
    model.reset()
    got = [model.prefill(ids[:1])] + [model.decode(t) for t in ids[1:n]]
    got = np.stack(got)
    agree = float((got.argmax(1) == ref[:n].argmax(1)).mean())
    p_ref, p_got = perplexity(ref[:n], ids[:n]), perplexity(got, ids[:n])
    print(f"\nSmolLM2 int8 decode path, {n} tokens: top-1 agreement {agree:.1%}, "
          f"perplexity llmgpu {p_got:.3f} vs transformers {p_ref:.3f}")
    assert agree >= 0.9 and abs(p_got / p_ref - 1) < 0.05
