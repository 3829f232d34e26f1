"""The decode kernel (shaders/decode.wgsl, llmgpu/decode.py) on lavapipe: the phased schedule runs
the very phase code the persistent one runs on a GPU, so it is checked here against transformers on
every architecture, against the per-op decode path, at contexts that span several attention
blocks, with per-group offsets and both lm_head formats; and the persistent schedule's fallback
(lavapipe has no co-resident workgroups, so its grid barrier must give up) is forced."""
import numpy as np
import pytest

from llmgpu.bench import random_checkpoint
from llmgpu.decode import DecodeKernel, phases
from llmgpu.model import Model
from llmgpu.quant import Q4Tensor, random_q4

from .conftest import get_device
from .test_model import ARCHS, BASE, make_checkpoint, reference_logits, rel


# Between two int8 decode paths: each quantizes activations to int8 after reductions summed in a
# different order, so a value within float rounding of a .5 boundary may land one int8 step apart
# and move later logits by up to ~1 % (seen: 5.7e-3 with per-group offsets). A wrong term in
# either path (an offset, a bias, a norm) moves them by 10 % or more.
INT8_PATHS = 2e-2


def decode_run(m, ids, n_prefill):
    return np.stack([m.prefill(ids[:n_prefill])] + [m.decode(t) for t in ids[n_prefill:]])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_phased_kernel_matches_transformers_and_the_ops_path(tmp_path, rng, arch):
    ckpt, hf_cfg = make_checkpoint(tmp_path, arch, rng)
    ids = [int(i) for i in rng.integers(0, BASE["vocab_size"], 23)]
    ref = reference_logits(ckpt, hf_cfg, ids, q8_from=13)[12:]  # int8-rounded linear inputs, as decoded
    dev = get_device()
    got = decode_run(Model(ckpt, dev=dev, max_seq=64, chunk=8, decode="phased"), ids, 13)
    ops = decode_run(Model(ckpt, dev=dev, max_seq=64, chunk=8, decode="ops"), ids, 13)
    assert rel(got, ref) < 0.1, f"phased decode vs transformers: {rel(got, ref):.2e}"  # test_model's int8 bound
    assert rel(got, ops) < INT8_PATHS, f"phased decode vs the per-op path: {rel(got, ops):.2e}"


def test_long_context_spans_attention_blocks(tmp_path, rng):
    """300 positions: decode steps at 290-299 combine three blocks of 128 positions."""
    ckpt, hf_cfg = make_checkpoint(tmp_path, "qwen3", rng, max_position_embeddings=512)
    ids = [int(i) for i in rng.integers(0, BASE["vocab_size"], 300)]
    ref = reference_logits(ckpt, hf_cfg, ids, q8_from=290)[289:]
    m = Model(ckpt, dev=get_device(), max_seq=320, chunk=128, decode="phased")
    assert m.kernel.block == 128
    got = decode_run(m, ids, 290)
    assert rel(got, ref) < 0.1
    ops = decode_run(Model(ckpt, dev=get_device(), max_seq=320, chunk=128, decode="ops"), ids, 290)
    assert rel(got, ops) < INT8_PATHS


def offsets_checkpoint(rng):
    """The tiny shape with asymmetric (Q4_1-style) weights everywhere: per-group offsets."""
    ckpt = random_checkpoint("tiny", rng=rng)
    for name, t in list(ckpt.tensors.items()):
        if isinstance(t, Q4Tensor):
            ckpt.tensors[name] = random_q4(*t.shape, t.group_size, rng, offsets=True)
    return ckpt


@pytest.mark.parametrize("fast", [True, False], ids=["f16-subgroups", "f32-shared-memory"])
def test_offsets_and_a_q4_lm_head_on_both_device_paths(rng, fast):
    ckpt = offsets_checkpoint(rng)
    assert isinstance(ckpt.tensors["lm_head.weight"], Q4Tensor)
    dev = get_device(f16=None if fast else False, subgroups=None if fast else False)
    ids = [int(i) for i in rng.integers(0, 2048, 9)]
    got = decode_run(Model(ckpt, dev=dev, max_seq=32, decode="phased"), ids, 4)
    ops = decode_run(Model(ckpt, dev=dev, max_seq=32, decode="ops"), ids, 4)
    assert m_ok(got) and rel(got, ops) < INT8_PATHS, f"{rel(got, ops):.2e}"


@pytest.mark.parametrize("config", [
    dict(UNROLL=8, TPR_qkv=1, TPR_o=2, TPR_gu=4, TPR_dn=8, TPR_hd=2),
    dict(UNROLL=8, TPR=2, NORM_REG=False), dict(TPR=4, WG=128)],
    ids=["unroll8-per-weight", "unroll8-tpr2-norm2pass", "tpr4-wg128"])
def test_kernel_shapes_for_sweeps_give_the_same_logits(rng, config):
    """The shapes a GPU runs or `bench/decode_sweep.py` sweeps there: 8 loads in flight (the tiny
    shape's K = 256 / 512 has 8 / 16 chunks a row: 1 thread a row runs the 8-load loop, 2 the
    8-load loop on K = 512 and the 4-load one on 256, 4 the 4-load loop, 8 single chunks) with
    threads a row chosen per weight (each phase's rows split its own way), the two-pass norm,
    smaller workgroups."""
    ckpt = offsets_checkpoint(rng)
    ids = [int(i) for i in rng.integers(0, 2048, 7)]
    m = Model(ckpt, dev=get_device(), max_seq=32, decode="phased")
    m.kernel.config = dict(config)
    got = decode_run(m, ids, 3)
    ops = decode_run(Model(ckpt, dev=get_device(), max_seq=32, decode="ops"), ids, 3)
    assert m_ok(got) and rel(got, ops) < INT8_PATHS, f"{rel(got, ops):.2e}"


def test_norms_fused_into_the_residual_gemvs(tmp_path, rng):
    """Model.fuse_norms: the same logits as separate norm dispatches, two fewer dispatches a layer."""
    ckpt, _ = make_checkpoint(tmp_path, "qwen2", rng)
    ids = [int(i) for i in rng.integers(0, BASE["vocab_size"], 9)]
    plain = Model(ckpt, dev=get_device(), max_seq=32, decode="ops")
    fused = Model(ckpt, dev=get_device(), max_seq=32, decode="ops")
    fused.fuse_norms = True
    a, b = decode_run(plain, ids, 4), decode_run(fused, ids, 4)
    assert rel(a, b) < INT8_PATHS, f"{rel(a, b):.2e}"
    L = len(plain.layers)
    assert len(plain.step_ops(1)) - len(fused.step_ops(1)) == 2 * L - 1


def m_ok(x):
    return np.isfinite(x).all() and np.abs(x).max() > 0


def test_persistent_schedule_falls_back_when_its_barrier_gives_up(tmp_path, rng, capfd):
    """A grid barrier that gives up (forced: no spin at all, and lavapipe never has 8 workgroups
    running at once) must not hang; the model must see it and redo the step on the phased
    schedule, once, and say so. (The model refuses the persistent schedule on CPU adapters, where
    spins were seen to end early: here it is switched on behind its back.)"""
    ckpt, _ = make_checkpoint(tmp_path, "llama-tied", rng)
    dev = get_device()
    assert dev.has_coherent, "lavapipe offers memory-decoration-coherent"
    ids = [int(i) for i in rng.integers(0, BASE["vocab_size"], 8)]
    if dev.is_cpu:
        with pytest.raises(ValueError, match="CPU adapter"):
            Model(ckpt, dev=dev, max_seq=32, decode="persistent")
    m = Model(ckpt, dev=dev, max_seq=32, decode="phased")
    # no spin at all: every barrier that is not met at the first look gives up (on a GPU too,
    # with more workgroups than one wave)
    m.decode_schedule, m.kernel.workgroups, m.kernel.spin = "persistent", 8 if dev.is_cpu else 4096, 0
    got = decode_run(m, ids, 3)
    assert m.decode_schedule == "phased"
    err = capfd.readouterr().err
    assert err.count("grid barrier timed out") == 1 and "phased schedule" in err
    ops = decode_run(Model(ckpt, dev=dev, max_seq=32, decode="ops"), ids, 3)
    assert rel(got, ops) < INT8_PATHS
    assert m.pos == len(ids) and m.cached_ids == ids


def test_schedules_are_chosen_and_refused_clearly(tmp_path, rng):
    ckpt, _ = make_checkpoint(tmp_path, "llama-tied", rng)
    dev = get_device()
    assert Model(ckpt, dev=dev, max_seq=32).decode_schedule == "ops"  # auto on a CPU adapter
    m = Model(ckpt, dev=dev, max_seq=32, decode="phased")
    assert len(m.step_ops(1)) == phases(BASE["num_hidden_layers"]) == 11
    with pytest.raises(ValueError, match="int8 activations"):
        Model(ckpt, dev=dev, max_seq=32, q8=False, decode="phased")
    assert Model(ckpt, dev=dev, max_seq=32, q8=False).decode_schedule == "ops"
    with pytest.raises(ValueError, match="not one of"):
        Model(ckpt, dev=dev, max_seq=32, decode="fast")
    no_coherent = get_device(f16=False, subgroups=False, coherent=False)
    with pytest.raises(ValueError, match="memory-decoration-coherent"):
        Model(ckpt, dev=no_coherent, max_seq=32, decode="persistent")
    assert DecodeKernel.unsupported(m) is None


@pytest.mark.parametrize("arch", ["llama-bias", "qwen3"])
def test_persistent_equals_phased_on_a_gpu(tmp_path, rng, arch):
    """On a GPU the persistent schedule gives the phased schedule's logits (same phase code, a grid
    barrier instead of a dispatch boundary). On a CPU adapter (CI) it is refused instead."""
    ckpt, _ = make_checkpoint(tmp_path, arch, rng, max_position_embeddings=512)
    dev = get_device()
    if dev.is_cpu:
        with pytest.raises(ValueError, match="CPU adapter"):
            Model(ckpt, dev=dev, max_seq=320, decode="persistent")
        return
    ids = [int(i) for i in rng.integers(0, BASE["vocab_size"], 300)]
    for workgroups in (None, 7, 200):
        m = Model(ckpt, dev=dev, max_seq=320, chunk=64, decode="persistent")
        if workgroups:
            m.kernel.workgroups = workgroups
        got = decode_run(m, ids, 280)
        assert m.decode_schedule == "persistent", "a grid barrier gave up"
        ph = decode_run(Model(ckpt, dev=dev, max_seq=320, chunk=64, decode="phased"), ids, 280)
        assert rel(got, ph) < 1e-5, f"{workgroups} workgroups: {rel(got, ph):.2e}"


def test_layers_read_the_kernels_stacked_weights(rng):
    """With the decode kernel, the per-layer linears (prefill, the per-op path) are views of its
    stacked buffers where the adapter can bind a layer's rows at their offset, and the lm_head is
    one buffer for both: the weights are on the GPU once. Prefill through the views gives the very
    logits of a model with its own per-layer copies (a wrong offset or size would not)."""
    ckpt = offsets_checkpoint(rng)  # per-group offsets: three views per weight
    ids = [int(i) for i in rng.integers(0, 2048, 11)]
    dev = get_device()
    m = Model(ckpt, dev=dev, max_seq=32, chunk=4, decode="phased")
    k, layers = m.kernel, m.layers
    assert k.shared_layers >= 4 * len(layers) - 2  # all, or all but where an offset is unaligned
    for kind, attr in (("qkv", "qkv"), ("o", "o"), ("gu", "gate_up"), ("dn", "down")):
        sl = getattr(layers[-1], attr).slices[0]
        if isinstance(sl.qweight, tuple):
            assert sl.qweight[0] is k.w[f"w_{kind}"] and sl.scales[0] is k.w[f"s_{kind}"]
            assert sl.offsets[0] is k.w[f"o_{kind}"] and sl.qweight[1] > 0
    assert k.w["w_hd"] is m.lm_head.slices[0].qweight
    own = Model(ckpt, dev=dev, max_seq=32, chunk=4, decode="ops")
    assert own.kernel is None and not isinstance(own.layers[-1].qkv.slices[0].qweight, tuple)
    np.testing.assert_array_equal(m.logits(ids), own.logits(ids))
    got = decode_run(m, ids, 6)
    assert m_ok(got) and rel(got, decode_run(own, ids, 6)) < INT8_PATHS


def test_rows_are_split_per_weight_for_the_fewest_round_trips():
    """decode.row_split on the 1B's weights at 132 workgroups (8-load batches), cost = passes ×
    load batches: qkv (3072 rows × 64 chunks) 8 threads a row, 1 pass of 1 batch (4 threads: 1
    pass of 2 batches; 16: 2 passes of 1); down (2048 × 256) 16, 1 pass of 2 batches (8: 1 pass of
    4); gate/up (16384 × 64) 8, 4 passes of 1 batch, tied with 4 threads (2 passes of 2 batches):
    ties go to more threads. Bounds hold: at most max_tpr, at least min_tpr."""
    from llmgpu.decode import row_split
    assert row_split(16384, 64, 132, 16, 8, 4) == 8
    assert row_split(2048, 256, 132, 16, 8) == 16
    assert row_split(3072, 64, 132, 16, 8) == 8
    assert row_split(16384, 64, 132, 2, 8) == 2  # max_tpr (a subgroup of 2, say)
    assert row_split(64, 8, 4, 16, 4, 16) == 16  # min_tpr
