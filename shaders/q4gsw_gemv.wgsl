// q4gsw GEMV for decode: y(N) = x(K) · W(N, K)ᵀ, W in q4gsw (see llmgpu/quant.py).
//
// Types: act_t (activations in and out), scale_t (group scales): f16 | f32.
// Overrides (declared below): WG, TPR, R, GS, RESIDUAL.
// Flags (//#if: each changes which bindings exist or their types):
//   SUBGROUPS    reduce with subgroup operations (else workgroup memory only)
//   HAS_OFFSETS  add o_g · Σ_{k in g} x_k (imported asymmetric checkpoints; binding off)
//   HAS_BIAS     y += bias (binding bias)
//   SILU         the weight is a fused gate/up projection, rows interleaved in blocks of
//                32 (gate rows j..j+31, then up rows j..j+31): each workgroup computes one
//                such pair of blocks (ROWS_PER_WG = 64) and writes silu(gate)·up as one
//                int8 block (bindings yq array<vec4<u32>>, yd array<vec2<f32>>), the down
//                projection's input, instead of y
//   W8           the weight is int8 (quant.Q8Tensor: 2 × vec4<u32> per 32 values, scales
//                per 32) instead of q4gsw — the lm_head's format
//   Q8           activations arrive quantized to int8 per 32 (quantize_q8.wgsl), and the
//                dot products run on packed 4×8-bit integer dot instructions: about 1.6 ALU
//                operations per weight byte instead of 7
//   NORM_AFTER   (with RESIDUAL, not SILU) after y += x·Wᵀ, the last workgroup to finish
//                normalises the whole of y (RMSNorm, weights nw, eps P.eps) into int8 blocks
//                (nq, nd): the next GEMV's input, without a norm dispatch between them. It
//                knows it is last from the counter done[0] (every workgroup adds 1 after its
//                rows are stored; the last resets it). Other workgroups' rows are visible to it
//                because y is then declared @coherent (flag COHERENT; a plain storage buffer
//                can be read stale across workgroups on NVIDIA, KERNELS.md) and each workgroup
//                stores them before a storageBarrier() that precedes its atomicAdd.
//   LANES        one invocation per row (TPR = 1, R rows each, K unrolled): the CPU adapters'
//                kernel (see its main below); scales and offsets come interleaved in sw
//                instead of sc and off; no NORM_AFTER
//   W64          (with LANES) w is read as 64-bit words: array<w64_t>, w64_t = vec2<u64> for
//                q4gsw (one per 32 values), vec4<u64> for int8 weights (one per 32 values)
//
// Bindings (group 0):
//   P    uniform  N, K, eps (NORM_AFTER)
//   x    read     array<vec4<act_t>>  (K/4)          activations
//                 or, when Q8, array<vec4<u32>> (K/16): int8 x, per 8 values the even
//                 elements' bytes then the odd elements' (matching the nibble masks)
//   xd   read     array<vec2<f32>>    (K/32)         when Q8: (scale d, 8·Σ x_q) per 32
//   w    read     array<vec4<u32>>    (N, K/32)      packed weights: 32 values per load
//   sc   read     array<scale_t>      (N, K/GS)      scales
//   off  read     array<f32>          (N, K/GS)      offsets, when HAS_OFFSETS
//   sw   read     array<vec4<f32>>    (N, ⌈G/2⌉) or (N, ⌈G/4⌉), G = K/GS: when LANES, in place of
//                                     sc and off: per row (s_g, o_g, s_g+1, o_g+1) with offsets,
//                                     else (s_g .. s_g+3); zero past G (ops.linear.lane_scales)
//   bias read     array<f32>          (N)            when HAS_BIAS
//   y    rw       array<act_t>        (N)            output (yq, yd when SILU)
//   nw   read     array<vec4<f32>>    (N/4)          when NORM_AFTER: the norm's weights,
//   nq, nd rw     array<vec4<u32>> (N/16), array<vec2<f32>> (N/32): its int8 output,
//   done rw       array<atomic<u32>>                 the workgroups-finished counter
//
// One workgroup computes (WG / TPR) · R consecutive rows. Within a row group, TPR threads
// stride over K one vec4<u32> (32 weights, 16 bytes) at a time, so every weight byte is read
// once with a 16-byte load; the 32 activations of a chunk are loaded once for the R rows.
// Partial sums are reduced with subgroupAdd / subgroupShuffleXor (assumes subgroups are
// consecutive invocations of the workgroup) or in workgroup memory.
// llmgpu/ops/codegen.py generates the //@ lines unrolled over the R rows and the 8 activation
// vectors, so that accumulators and activations are named registers, never indexed arrays
// (which a compiler may place in local memory: that cost 3x on NVIDIA). `llmgpu generate
// --dump-wgsl DIR` writes the expanded source of every compiled kernel.

override WG: u32 = 256u;
override TPR: u32 = 32u;      // threads per row group (a power of two dividing WG)
override R: u32 = 1u;         // rows per row group: each activation load serves R rows
override GS: u32 = 32u;       // group size: 32, 64 or 128
override RESIDUAL: bool = false;   // y = y + x·Wᵀ

struct Params { N: u32, K: u32, eps: f32, _b: u32 }
@group(0) @binding(0) var<uniform> P: Params;
//#if Q8
@group(0) @binding(1) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> xd: array<vec2<f32>>;
//#else
@group(0) @binding(1) var<storage, read> x: array<vec4<act_t>>;
//#endif
//#if W64
@group(0) @binding(2) var<storage, read> w: array<w64_t>;
//#else
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
//#endif
//#if LANES
@group(0) @binding(3) var<storage, read> sw: array<vec4<f32>>;
//#else
@group(0) @binding(3) var<storage, read> sc: array<scale_t>;
//#if HAS_OFFSETS
@group(0) @binding(4) var<storage, read> off: array<f32>;
//#endif
//#endif
//#if SILU
@group(0) @binding(5) var<storage, read_write> yq: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read_write> yd: array<vec2<f32>>;
//#include q8_common
//#include silu_q8

// Workgroup blk's 64 row sums (32 gate, 32 up) in ys → silu(gate)·up as int8 block blk of yq, yd.
// From uniform control flow (silu_q8 has barriers).
fn store_silu(lid: u32, blk: u32, N: u32) {
    let q = silu_q8(lid);
    if (lid == 0u && blk * 64u < N) {
        yq[2u * blk] = q.w0;
        yq[2u * blk + 1u] = q.w1;
        yd[blk] = q.d;
    }
}
//#else
//#if COHERENT
@group(0) @binding(5) @coherent var<storage, read_write> y: array<act_t>;
//#else
@group(0) @binding(5) var<storage, read_write> y: array<act_t>;
//#endif
//#endif
//#if NORM_AFTER
@group(0) @binding(9) var<storage, read> nw: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> nq: array<vec4<u32>>;
@group(0) @binding(11) var<storage, read_write> nd: array<vec2<f32>>;
@group(0) @binding(12) var<storage, read_write> done: array<atomic<u32>>;
var<workgroup> last: u32;
//#include q8_common
//#endif
//#if HAS_BIAS
@group(0) @binding(7) var<storage, read> bias: array<f32>;
//#endif

override ROWS_PER_WG: u32 = (WG / TPR) * R;
//#if !LANES
var<workgroup> red: array<f32, WG * R>;
//#endif

//#include q4_dot

//#if NORM_AFTER
fn y4(i: u32) -> vec4<f32> { return vec4<f32>(f32(y[4u * i]), f32(y[4u * i + 1u]), f32(y[4u * i + 2u]), f32(y[4u * i + 3u])); }

// Called by every invocation once its rows of y are stored: the last workgroup normalises y → nq, nd.
fn norm_after(lid: u32, total: u32) {
    storageBarrier();
    if (lid == 0u) { last = u32(atomicAdd(&done[0], 1u) == total - 1u); }
    if (workgroupUniformLoad(&last) == 0u) { return; }
    storageBarrier();
    if (lid == 0u) { atomicStore(&done[0], 0u); }
    let N = P.N;
    var ss = 0.0;
    for (var i = lid; i < N / 4u; i += WG) { let v = y4(i); ss += dot(v, v); }
    red[lid] = ss;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h /= 2u) {
        if (lid < h) { red[lid] += red[lid + h]; }
        workgroupBarrier();
    }
    let r = inverseSqrt(red[0] / f32(N) + P.eps);
    for (var b = lid; b < N / 32u; b += WG) {
        let i = 8u * b;
        let q = q8_block(y4(i) * r * nw[i], y4(i + 1u) * r * nw[i + 1u], y4(i + 2u) * r * nw[i + 2u],
                         y4(i + 3u) * r * nw[i + 3u], y4(i + 4u) * r * nw[i + 4u], y4(i + 5u) * r * nw[i + 5u],
                         y4(i + 6u) * r * nw[i + 6u], y4(i + 7u) * r * nw[i + 7u]);
        nq[2u * b] = q.w0;
        nq[2u * b + 1u] = q.w1;
        nd[b] = q.d;
    }
}
//#endif

//#if LANES
// One invocation per row (TPR = 1): invocation lid computes rows base + r·WG (r < R) over the
// whole of K, unrolled by codegen.gemv_lanes_snippets for this K. For CPU adapters (lavapipe),
// which run a workgroup as SIMD loops over 8 invocations: there every load whose address
// differs between invocations is a per-invocation loop, while a load at a constant address (the
// activations here) is one load; and no partial sums cross invocations, so no reduction.
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let N = P.N;
    let base = (wid.x + wid.y * nwg.x) * ROWS_PER_WG + lid;   // rows base + r·WG
//@LANES
//#if SILU
    store_silu(lid, wid.x + wid.y * nwg.x, N);
//#endif
}
//#else
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
//#if SUBGROUPS
        @builtin(subgroup_size) sg_size: u32,
//#endif
        ) {
    let N = P.N;
    let nch = P.K / 32u;            // vec4<u32> chunks per row
    let gpr = P.K / GS;             // groups per row
    let lane = lid % TPR;
    let rg = lid / TPR;
    let row0 = (wid.x + wid.y * nwg.x) * ROWS_PER_WG + rg * R;

//@DECL
    for (var c = lane; c < nch; c += TPR) {
        let g = (c * 32u) / GS;
        let xb = c * 8u;
//@BODY
    }

    var step = 1u;
//#if SUBGROUPS
    {
        if (sg_size <= TPR) {
//@SGADD
            step = sg_size;
        } else {
            for (var o = TPR / 2u; o > 0u; o /= 2u) {
//@SGXOR
            }
            step = TPR;
        }
    }
//#endif
//@RED
    workgroupBarrier();
    if (lane == 0u) {
//@OUT
    }
//#if NORM_AFTER
    norm_after(lid, nwg.x * nwg.y * nwg.z);
//#endif
//#if SILU
    store_silu(lid, wid.x + wid.y * nwg.x, N);
//#endif
}
//#endif
