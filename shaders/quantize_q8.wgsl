// Activations to int8, per block of 32 along K, for the Q8 GEMV (q4gsw_gemv.wgsl, Q8).
//
// Prepended: alias act_t (f16 | f32); const WG.
// Bindings (group 0):
//   0 uniform  P: M, K
//   1 storage  x   array<vec4<act_t>>  (M, K/4)
//   2 storage  xq  array<u32>          (M, K/4)   for every 8 values: the bytes of elements
//                                                 0,2,4,6 then of 1,3,5,7 (the GEMV's nibble
//                                                 masks take even and odd elements apart)
//   3 storage  xd  array<vec2<f32>>    (M, K/32)  (d, 8·Σ q) with x ≈ d·q, d = max|x| / 127
// One invocation per block of 32 values; q = round(x · 127 / max|x|), in [-127, 127].

struct Params { M: u32, K: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<act_t>>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;
@group(0) @binding(3) var<storage, read_write> xd: array<vec2<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = gid.x + gid.y * nwg.x * WG;        // block index over (M, K/32)
    if (b >= P.M * (P.K / 32u)) { return; }
    var v: array<vec4<f32>, 8>;
    var amax = 0.0;
    for (var i = 0u; i < 8u; i++) {
        v[i] = vec4<f32>(x[b * 8u + i]);
        let a = abs(v[i]);
        amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    }
    let d = amax / 127.0;
    var id = 0.0;
    if (amax > 0.0) { id = 127.0 / amax; }
    var total = 0;
    for (var j = 0u; j < 4u; j++) {        // 8 values: v[2j] = x[8j..8j+3], v[2j+1] = x[8j+4..8j+7]
        let lo = vec4<i32>(round(v[2u * j] * id));
        let hi = vec4<i32>(round(v[2u * j + 1u] * id));
        xq[b * 8u + 2u * j] = pack4xI8(vec4<i32>(lo.x, lo.z, hi.x, hi.z));
        xq[b * 8u + 2u * j + 1u] = pack4xI8(vec4<i32>(lo.y, lo.w, hi.y, hi.w));
        let s = lo + hi;
        total += s.x + s.y + s.z + s.w;
    }
    xd[b] = vec2<f32>(d, f32(8 * total));
}
