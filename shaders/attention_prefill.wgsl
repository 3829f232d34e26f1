// Prefill attention: causal grouped-query attention of M new queries over the KV cache, which
// rope_kv.wgsl has already filled for these positions.
//
// Types: cache_t (f16 | f32). Overrides: WG (a multiple of D4), D4 = hd/4. Flag: SUBGROUPS.
// Bindings (group 0):
//   P    uniform  M, n_heads, n_kv, hd, max_seq, scale (f32)
//   S    uniform  pos0 — cache position of query row 0
//   q    read     array<vec4<f32>>      (M, n_heads, hd/4)     rotated queries (rope_kv.wgsl)
//   kc   read     array<vec4<cache_t>>  (max_seq, n_kv, hd/4)
//   vc   read     array<vec4<cache_t>>  (max_seq, n_kv, hd/4)
//   sc   rw       array<f32>            (M·n_heads, max_seq)   scratch: scores, then weights
//   out  rw       array<vec4<f32>>      (M, n_heads, hd/4)
// Workgroup (h, m) attends query row m of head h over cache positions 0 ..= pos0 + m with the
// key/value head h / (n_heads / n_kv) (attention_common.wgsl).

override WG: u32 = 256u;
override D4: u32 = 16u;

struct Params { M: u32, n_heads: u32, n_kv: u32, hd: u32, max_seq: u32, scale: f32 }
struct Step { pos0: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: Step;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kc: array<vec4<cache_t>>;
@group(0) @binding(4) var<storage, read> vc: array<vec4<cache_t>>;
@group(0) @binding(5) var<storage, read_write> sc: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
//#include reduce
//#include attention_common

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
//#if SUBGROUPS
        @builtin(subgroup_size) sgs: u32,
//#endif
        ) {
//#if !SUBGROUPS
    let sgs = 1u;
//#endif
    let h = wid.x;
    let m = wid.y;
    let j = h / (P.n_heads / P.n_kv);
    let L = S.pos0 + m + 1u;                    // positions this query sees
    let sbase = (m * P.n_heads + h) * P.max_seq;
    let qbase = (m * P.n_heads + h) * D4;
    for (var i = lid; i < D4; i += WG) { qs[i] = q[qbase + i] * P.scale; }
    workgroupBarrier();
    let gmax = wg_max(cached_scores(sbase, L, j, lid, -3.0e38), lid, sgs);
    let sum = softmax_numerators(sbase, L, gmax, lid);
    storageBarrier();   // sc: each invocation reads back other invocations' numerators
    let total = wg_sum(sum, lid, sgs);
    combine(weighted_values(sbase, L, j, lid), total, lid);
    for (var i = lid; i < D4; i += WG) { out[qbase + i] = qs[i]; }
}
