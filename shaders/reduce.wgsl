// Workgroup-wide sum and max, the result in every invocation (`//#include reduce`).
//
// Needs from the including shader: `override WG: u32` (invocations, a power of two), the flag
// SUBGROUPS, and the subgroup size as an argument (1 without SUBGROUPS). With subgroups, each
// subgroup reduces with one instruction and its first lane writes one value (assumes subgroups
// are consecutive invocations); without, a tree in workgroup memory. Call from uniform control
// flow; consecutive calls are safe (each starts with a barrier: `red` may still be being read).

var<workgroup> red: array<f32, WG>;

fn wg_reduce(v: f32, lid: u32, sgs: u32, is_max: bool) -> f32 {
    workgroupBarrier();
//#if SUBGROUPS
    var r = 0.0;
    if (is_max) { r = subgroupMax(v); } else { r = subgroupAdd(v); }
    if (lid % sgs == 0u) { red[lid / sgs] = r; }
    workgroupBarrier();
    var t = red[0];
    for (var i = 1u; i < WG / sgs; i++) {
        if (is_max) { t = max(t, red[i]); } else { t += red[i]; }
    }
    return t;
//#else
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if (lid < s) {
            if (is_max) { red[lid] = max(red[lid], red[lid + s]); } else { red[lid] += red[lid + s]; }
        }
        workgroupBarrier();
    }
    return red[0];
//#endif
}

fn wg_sum(v: f32, lid: u32, sgs: u32) -> f32 { return wg_reduce(v, lid, sgs, false); }
fn wg_max(v: f32, lid: u32, sgs: u32) -> f32 { return wg_reduce(v, lid, sgs, true); }
