// SwiGLU's middle: out = silu(gate) · up, from the fused gate/up projection's output.
//
// Overrides: WG. Flag: Q8OUT (int8 blocks for the Q8 GEMV instead of f32; q8_common.wgsl).
// Bindings (group 0):
//   P    uniform  M, F (intermediate size, a multiple of 32)
//   gu   read     array<vec4<f32>>  (M, 2F/4)   row m: per block of 32 outputs, 32 gate values
//                                               then 32 up values (the fused weight's row order)
//   out  rw       array<vec4<f32>>  (M, F/4)    when !Q8OUT
//   xq   rw       array<vec4<u32>>  (M, F/16), xd rw array<vec2<f32>> (M, F/32)   when Q8OUT
// One invocation per block of 32 outputs.

override WG: u32 = 64u;

struct Params { M: u32, F: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> gu: array<vec4<f32>>;
//#if Q8OUT
@group(0) @binding(2) var<storage, read_write> xq: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> xd: array<vec2<f32>>;
//#include q8_common
//#else
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
//#endif

fn silu_mul(i: u32) -> vec4<f32> {   // i: vec4 index of gate values in gu; up is 8 vec4s on
    let g = gu[i];
    return g / (1.0 + exp(-g)) * gu[i + 8u];
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = gid.x + gid.y * nwg.x * WG;      // block over (M, F/32)
    let nb = P.F / 32u;
    if (b >= P.M * nb) { return; }
    let m = b / nb;
    let i = m * (P.F / 2u) + (b % nb) * 16u;  // gu row m starts at m·2F/4 vec4s; 16 vec4s a block
//#if Q8OUT
    let q = q8_block(silu_mul(i), silu_mul(i + 1u), silu_mul(i + 2u), silu_mul(i + 3u),
                     silu_mul(i + 4u), silu_mul(i + 5u), silu_mul(i + 6u), silu_mul(i + 7u));
    xq[2u * b] = q.w0;
    xq[2u * b + 1u] = q.w1;
    xd[b] = q.d;
//#else
    for (var k = 0u; k < 8u; k++) { out[b * 8u + k] = silu_mul(i + k); }
//#endif
}
