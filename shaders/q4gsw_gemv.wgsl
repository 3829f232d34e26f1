// q4gsw GEMV for decode: y(N) = x(K) · W(N, K)ᵀ, W in q4gsw (see llmgpu/quant.py).
//
// Prepended by llmgpu.gpu.Device.pipeline:
//   alias act_t    f16 | f32   activations in and out
//   alias scale_t  f16 | f32   group scales
//   const WG       workgroup size (threads)
//   const TPR      threads that cooperate on one row group (power of two, divides WG)
//   const R        rows per row group: each activation load serves R rows
//   const GS       group size (32, 64, 128)
//   const HAS_OFFSETS  add o_g · Σ_{k in g} x_k (imported asymmetric checkpoints)
//   const SUBGROUPS    reduce with subgroup operations (else workgroup memory only);
//                      //#if SUBGROUPS blocks are dropped before compiling when false
//   const RESIDUAL     y = residual + x·Wᵀ (residual read from y itself before writing)
//
// Bindings (group 0):
//   0 uniform  P: N, K
//   1 storage  x   array<vec4<act_t>>  (K/4)          activations
//   2 storage  w   array<vec4<u32>>    (N, K/32)       packed weights: 32 values per load
//   3 storage  sc  array<scale_t>      (N, K/GS)       scales
//   4 storage  off array<f32>          (N, K/GS)       offsets (a dummy when !HAS_OFFSETS)
//   5 storage  y   array<act_t>        (N)             output
//
// One workgroup computes (WG / TPR) · R consecutive rows. Within a row group, TPR threads
// stride over K one vec4<u32> (32 weights, 16 bytes) at a time, so every weight byte is read
// once with a 16-byte load; the 32 activations of a chunk are loaded once for the R rows.
// Partial sums are reduced with subgroupAdd / subgroupShuffleXor (assumes subgroups are
// consecutive invocations of the workgroup) or in workgroup memory.

struct Params { N: u32, K: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<act_t>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> sc: array<scale_t>;
@group(0) @binding(4) var<storage, read> off: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<act_t>;

const ROWS_PER_WG: u32 = (WG / TPR) * R;
var<workgroup> red: array<f32, WG * R>;

// Dequantization without int→float conversions (a quarter-rate instruction on NVIDIA):
// OR-ing a nibble n into the top mantissa bits of 1.0 gives the float 1 + n/16 exactly, so
// Σ_i x_i·q_i = Σ_i x_i·(n_i − 8) = 16·Σ_i x_i·f_i − 24·Σ_i x_i with f_i = 1 + n_i/16.
// dot8 returns Σ_i x_i·f_i over the 8 nibbles of one word; xa = x[0..3], xb = x[4..7].
fn nib(word: u32, i: u32) -> f32 {
    return bitcast<f32>(((word << (19u - 4u * i)) & 0x00780000u) | 0x3F800000u);
}
fn nib0(word: u32) -> f32 { return bitcast<f32>(((word << 19u) & 0x00780000u) | 0x3F800000u); }
fn nibr(word: u32, i: u32) -> f32 {   // i >= 5: shift right instead of left
    return bitcast<f32>(((word >> (4u * i - 19u)) & 0x00780000u) | 0x3F800000u);
}
fn dot8(w: u32, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let lo = vec4<f32>(nib0(w), nib(w, 1u), nib(w, 2u), nib(w, 3u));
    let hi = vec4<f32>(nib(w, 4u), nibr(w, 5u), nibr(w, 6u), nibr(w, 7u));
    return dot(lo, xa) + dot(hi, xb);
}


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

    var acc: array<f32, R>;
    for (var r = 0u; r < R; r++) { acc[r] = 0.0; }

    for (var c = lane; c < nch; c += TPR) {
        let g = (c * 32u) / GS;
        var xv: array<vec4<f32>, 8>;
        var xs4 = vec4<f32>(0.0);
        for (var i = 0u; i < 8u; i++) {
            xv[i] = vec4<f32>(x[c * 8u + i]);
            xs4 += xv[i];
        }
        let xsum = xs4.x + xs4.y + xs4.z + xs4.w;
        for (var r = 0u; r < R; r++) {
            let row = min(row0 + r, N - 1u);
            let q = w[row * nch + c];
            let d = dot8(q.x, xv[0], xv[1]) + dot8(q.y, xv[2], xv[3])
                  + dot8(q.z, xv[4], xv[5]) + dot8(q.w, xv[6], xv[7]);
            var t = f32(sc[row * gpr + g]) * (16.0 * d - 24.0 * xsum);
            if (HAS_OFFSETS) { t += off[row * gpr + g] * xsum; }
            acc[r] += t;
        }
    }

    var step = 1u;
//#if SUBGROUPS
    {
        if (sg_size <= TPR) {
            for (var r = 0u; r < R; r++) { acc[r] = subgroupAdd(acc[r]); }
            step = sg_size;
        } else {
            for (var o = TPR / 2u; o > 0u; o /= 2u) {
                for (var r = 0u; r < R; r++) { acc[r] += subgroupShuffleXor(acc[r], o); }
            }
            step = TPR;
        }
    }
//#endif
    for (var r = 0u; r < R; r++) { red[r * WG + lid] = acc[r]; }
    workgroupBarrier();
    if (lane == 0u) {
        for (var r = 0u; r < R; r++) {
            let row = row0 + r;
            if (row < N) {
                var s = 0.0;
                for (var i = 0u; i < TPR; i += step) { s += red[r * WG + lid + i]; }
                if (RESIDUAL) { s += f32(y[row]); }
                y[row] = act_t(s);
            }
        }
    }
}
