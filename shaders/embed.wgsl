// Token embedding lookup: h[m] = table[ids[m]] (as f32).
//
// Types: emb_t (f16 | f32). Overrides: WG. Flag: SPLIT (the table is larger than one storage
// binding and continues in t1).
// Bindings (group 0):
//   P    uniform  M, D, rows0 (rows in t0)
//   ids  read     array<u32>          (M)
//   t0   read     array<vec4<emb_t>>  (rows0, D/4)       the table's first rows
//   t1   read     array<vec4<emb_t>>  (V - rows0, D/4)   the rest, when SPLIT
//   h    rw       array<vec4<f32>>    (M, D/4)
// One invocation per vec4 of output.

override WG: u32 = 64u;

struct Params { M: u32, D: u32, rows0: u32, _b: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> t0: array<vec4<emb_t>>;
//#if SPLIT
@group(0) @binding(3) var<storage, read> t1: array<vec4<emb_t>>;
//#endif
@group(0) @binding(4) var<storage, read_write> h: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let d4 = P.D / 4u;
    if (i >= P.M * d4) { return; }
    let id = ids[i / d4];
    let c = i % d4;
//#if SPLIT
    if (id >= P.rows0) {
        h[i] = vec4<f32>(t1[(id - P.rows0) * d4 + c]);
        return;
    }
//#endif
    h[i] = vec4<f32>(t0[id * d4 + c]);
}
