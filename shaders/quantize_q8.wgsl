// Activations to int8, per block of 32 along K, for the Q8 GEMV (q4gsw_gemv.wgsl, Q8).
//
// Types: act_t (f16 | f32). Overrides: WG.
// Bindings (group 0):
//   P   uniform  M, K
//   x   read     array<vec4<act_t>>  (M, K/4)
//   xq  rw       array<vec4<u32>>    (M, K/16)  for every 8 values: the bytes of elements
//                                                 0,2,4,6 then of 1,3,5,7 (the GEMV's nibble
//                                                 masks take even and odd elements apart)
//   xd  rw       array<vec2<f32>>    (M, K/32)  (d, 8·Σ q) with x ≈ d·q, d = max|x| / 127
// One invocation per block of 32 values; q = round(x · 127 / max|x|), in [-127, 127].

override WG: u32 = 64u;

struct Params { M: u32, K: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<act_t>>;
@group(0) @binding(2) var<storage, read_write> xq: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> xd: array<vec2<f32>>;

//#include q8_common

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = gid.x + gid.y * nwg.x * WG;        // block index over (M, K/32)
    if (b >= P.M * (P.K / 32u)) { return; }
    let i = b * 8u;
    let r = q8_block(vec4<f32>(x[i]), vec4<f32>(x[i + 1u]), vec4<f32>(x[i + 2u]), vec4<f32>(x[i + 3u]),
                     vec4<f32>(x[i + 4u]), vec4<f32>(x[i + 5u]), vec4<f32>(x[i + 6u]), vec4<f32>(x[i + 7u]));
    xq[2u * b] = r.w0;
    xq[2u * b + 1u] = r.w1;
    xd[b] = r.d;
}
