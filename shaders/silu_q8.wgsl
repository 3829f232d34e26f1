// silu(gate)·up of 64 GEMV row sums → one int8 block: the gate/up epilogue that both the GEMV
// (q4gsw_gemv.wgsl, flag SILU) and the decode kernel's gate/up phase run. Needs q8_common.
// ys holds 32 gate rows' sums, then the 32 up rows they pair with (rows interleaved per 32,
// model._interleave32).

var<workgroup> ys: array<f32, 64>;
var<workgroup> av: array<vec4<f32>, 8>;      // silu(gate)·up of those 32 pairs

// Call from uniform control flow once every ys is written; the block is valid in every invocation.
fn silu_q8(lid: u32) -> Q8Block {
    workgroupBarrier();
    if (lid < 8u) {
        let i = 4u * lid;
        let g = vec4<f32>(ys[i], ys[i + 1u], ys[i + 2u], ys[i + 3u]);
        let up = vec4<f32>(ys[i + 32u], ys[i + 33u], ys[i + 34u], ys[i + 35u]);
        av[lid] = g / (1.0 + exp(-g)) * up;
    }
    workgroupBarrier();
    return q8_block(av[0], av[1], av[2], av[3], av[4], av[5], av[6], av[7]);
}
