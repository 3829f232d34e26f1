// Streaming-read roofline: every invocation reads vec4<u32> words grid-stride over `src`
// and writes one word, so the time is that of reading the buffer once.
//   override WG    workgroup size
//   0 uniform  P: n (vec4 words in src), stride (total invocations)
//   1 storage  src array<vec4<u32>>  (n)
//   2 storage  dst array<u32>        (stride)   xor of what each invocation read
override WG: u32 = 256u;

struct Params { n: u32, stride: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i0 = gid.x + gid.y * nwg.x * WG;
    var acc = vec4<u32>(0u);
    for (var i = i0; i < P.n; i += P.stride) { acc ^= src[i]; }
    dst[i0] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
