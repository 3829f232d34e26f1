// RMSNorm over rows: out = x / sqrt(mean(x²) + eps) · w, as Hugging Face's LlamaRMSNorm (f32).
//
// Prepended: const WG (threads), const Q8OUT (write int8 blocks for the Q8 GEMV instead of f32),
// const SUBGROUPS (sum by subgroupAdd and one barrier instead of a tree).
// Bindings (group 0):
//   0 uniform  P: M, D (a multiple of 32), eps (f32 bits), row0 (first row of x to normalise)
//   1 storage  x    array<vec4<f32>>  (row0 + M, D/4)
//   2 storage  w    array<vec4<f32>>  (D/4)
//   3 storage  out  array<vec4<f32>>  (M, D/4)              when !Q8OUT (rows from 0)
//   3 storage  xq   array<vec4<u32>>  (M, D/16)  4 storage xd array<vec2<f32>> (M, D/32)  when Q8OUT
// One workgroup per row: a strided sum of squares, a tree reduction in workgroup memory, then
// each invocation normalises whole blocks of 32 (so that it can quantize them).

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

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
//#if SUBGROUPS
        @builtin(subgroup_size) sgs: u32,
//#endif
        ) {
    let row = wid.x;
    let d4 = P.D / 4u;
    let base = (P.row0 + row) * d4;
    var ss = 0.0;
    for (var i = lid; i < d4; i += WG) {
        let v = x[base + i];
        ss += dot(v, v);
    }
//#if SUBGROUPS
    let part = subgroupAdd(ss);
    if (lid % sgs == 0u) { red[lid / sgs] = part; }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < WG / sgs; i++) { total += red[i]; }
//#else
    red[lid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
//#endif
    let r = inverseSqrt(total / f32(P.D) + P.eps);
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
