// RMSNorm over rows: out = x / sqrt(mean(x²) + eps) · w, as Hugging Face's LlamaRMSNorm (f32).
//
// Overrides: WG (invocations). Flags: Q8OUT (write int8 blocks for the Q8 GEMV instead of f32;
// see q8_common.wgsl), SUBGROUPS (reduce.wgsl).
// Bindings (group 0):
//   P    uniform  M, D (a multiple of 32), eps (f32), row0 (first row of x to normalise)
//   x    read     array<vec4<f32>>  (row0 + M, D/4)
//   w    read     array<vec4<f32>>  (D/4)
//   out  rw       array<vec4<f32>>  (M, D/4)               when !Q8OUT (rows from 0)
//   xq   rw       array<vec4<u32>>  (M, D/16), xd rw array<vec2<f32>> (M, D/32)   when Q8OUT
// One workgroup per row: a strided sum of squares, a workgroup reduction, then each invocation
// normalises whole blocks of 32 (so that it can quantize them).

override WG: u32 = 128u;

struct Params { M: u32, D: u32, eps: f32, row0: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
//#if Q8OUT
@group(0) @binding(3) var<storage, read_write> xq: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> xd: array<vec2<f32>>;
//#include q8_common
//#else
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
//#endif
//#include reduce

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
//#if SUBGROUPS
        @builtin(subgroup_size) sgs: u32,
//#endif
        ) {
//#if !SUBGROUPS
    let sgs = 1u;
//#endif
    let row = wid.x;
    let d4 = P.D / 4u;
    let base = (P.row0 + row) * d4;
    var ss = 0.0;
    for (var i = lid; i < d4; i += WG) {
        let v = x[base + i];
        ss += dot(v, v);
    }
    let r = inverseSqrt(wg_sum(ss, lid, sgs) / f32(P.D) + P.eps);
    for (var b = lid; b < P.D / 32u; b += WG) {
        let i = base + b * 8u;
        let j = b * 8u;
//#if Q8OUT
        let q = q8_block(x[i] * r * w[j], x[i + 1u] * r * w[j + 1u], x[i + 2u] * r * w[j + 2u],
                         x[i + 3u] * r * w[j + 3u], x[i + 4u] * r * w[j + 4u], x[i + 5u] * r * w[j + 5u],
                         x[i + 6u] * r * w[j + 6u], x[i + 7u] * r * w[j + 7u]);
        let blk = row * (P.D / 32u) + b;
        xq[2u * blk] = q.w0;
        xq[2u * blk + 1u] = q.w1;
        xd[blk] = q.d;
//#else
        for (var k = 0u; k < 8u; k++) { out[row * d4 + j + k] = x[i + k] * r * w[j + k]; }
//#endif
    }
}
