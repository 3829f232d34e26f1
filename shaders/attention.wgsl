// Causal grouped-query attention of M new queries over the KV cache (prefill and decode).
//
// Prepended: alias cache_t (f16 | f32); const WG (a multiple of hd/4); const D4 = hd/4 (a
// compile-time loop bound, so the dot products unroll and their loads overlap); const SUBGROUPS
// (reductions by subgroupMax/subgroupAdd, one barrier each, instead of a tree); const Q8OUT
// (write the output as int8 blocks for the O projection's GEMV; needs hd % 32 == 0); const ROPE
// (decode only, M = 1: take q, k, v straight from the fused QKV projection's output, apply the
// q/k RMSNorm (QK_NORM) and RoPE here, write this token's k and v into the cache from the first
// query head of each group, and use them from workgroup memory: rope_kv.wgsl's work, without
// its dispatch).
// Bindings (group 0):
//   0 uniform  P: M, n_heads, n_kv, hd, max_seq, scale (f32 bits)
//   1 uniform  S: pos0 — cache position of query row 0
//   2 storage  q    array<vec4<f32>>      (M, n_heads, hd/4)   rotated queries (rope_kv.wgsl)
//                   or, when ROPE, qkv array<f32> (1, (n_heads + 2·n_kv)·hd), unrotated
//   3 storage  kc   array<vec4<cache_t>>  (max_seq, n_kv, hd/4)
//   4 storage  vc   array<vec4<cache_t>>  (max_seq, n_kv, hd/4)
//   8 storage  cs   array<vec2<f32>> (max_seq, hd/2); 9 qn, 10 kn array<f32> (hd)   when ROPE
//   5 storage  sc   array<f32>            (M·n_heads, max_seq)   scratch: scores, then weights
//   6 storage  out  array<vec4<f32>>      (M, n_heads, hd/4)   when !Q8OUT
//   6 storage  xq   array<vec4<u32>>      (M, n_heads·hd/16)   7 xd array<vec2<f32>>  when Q8OUT
// Workgroup (h, m) attends query row m of head h over cache positions 0 ..= pos0 + m, with the
// key/value head h / (n_heads / n_kv): scores (one key per invocation), max and sum by tree
// reductions, then hd/4 lanes × (WG·4/hd) position groups accumulate the weighted values.

struct Params { M: u32, n_heads: u32, n_kv: u32, hd: u32, max_seq: u32, scale: f32, eps: f32 }
struct Step { pos0: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: Step;
//#if ROPE
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<vec4<cache_t>>;
@group(0) @binding(4) var<storage, read_write> vc: array<vec4<cache_t>>;
@group(0) @binding(8) var<storage, read> cs: array<vec2<f32>>;
@group(0) @binding(9) var<storage, read> qn: array<f32>;
@group(0) @binding(10) var<storage, read> kn: array<f32>;
var<workgroup> qf: array<f32, 256>;      // this head's rotated query
var<workgroup> kf: array<f32, 256>;      // this token's rotated key
var<workgroup> vf: array<vec4<f32>, 64>; // this token's value
//#else
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kc: array<vec4<cache_t>>;
@group(0) @binding(4) var<storage, read> vc: array<vec4<cache_t>>;
//#endif
@group(0) @binding(5) var<storage, read_write> sc: array<f32>;
//#if Q8OUT
@group(0) @binding(6) var<storage, read_write> xq: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> xd: array<vec2<f32>>;
//#include q8_common
//#else
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
//#endif

var<workgroup> qs: array<vec4<f32>, 64>;     // hd ≤ 256
var<workgroup> red: array<f32, WG>;
var<workgroup> acc: array<vec4<f32>, WG>;

// Workgroup-wide max / sum, the result in every invocation. Call from uniform control flow.
fn reduce(v: f32, lid: u32, sgs: u32, is_max: bool) -> f32 {
    workgroupBarrier();   // red may still be read from the previous reduction
//#if SUBGROUPS
    var r = subgroupAdd(v);
    if (is_max) { r = subgroupMax(v); }
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
    let d4 = D4;
    let j = h / (P.n_heads / P.n_kv);
    let L = S.pos0 + m + 1u;
    let sbase = (m * P.n_heads + h) * P.max_seq;
    let qbase = (m * P.n_heads + h) * d4;
//#if ROPE
    // q head h and k head j of the fused projection: (q/k RMSNorm,) RoPE at this position.
    let hd = 4u * D4;
    let half = hd / 2u;
    let pos = L - 1u;
    let qo = h * hd;
    let ko = P.n_heads * hd + j * hd;
    let vo = (P.n_heads + P.n_kv) * hd + j * hd;
    var rq = 1.0;
    var rk = 1.0;
    if (QK_NORM) {
        var sq = 0.0;
        var sk = 0.0;
        for (var i = lid; i < hd; i += WG) { sq += qkv[qo + i] * qkv[qo + i]; sk += qkv[ko + i] * qkv[ko + i]; }
        rq = inverseSqrt(reduce(sq, lid, sgs, false) / f32(hd) + P.eps);
        rk = inverseSqrt(reduce(sk, lid, sgs, false) / f32(hd) + P.eps);
    }
    for (var i = lid; i < half; i += WG) {
        var qa = qkv[qo + i] * rq;
        var qb = qkv[qo + i + half] * rq;
        var ka = qkv[ko + i] * rk;
        var kb = qkv[ko + i + half] * rk;
        if (QK_NORM) { qa *= qn[i]; qb *= qn[i + half]; ka *= kn[i]; kb *= kn[i + half]; }
        let c = cs[pos * half + i];
        qf[i] = qa * c.x - qb * c.y;
        qf[i + half] = qb * c.x + qa * c.y;
        kf[i] = ka * c.x - kb * c.y;
        kf[i + half] = kb * c.x + ka * c.y;
    }
    for (var i = lid; i < D4; i += WG) {
        vf[i] = vec4<f32>(qkv[vo + 4u * i], qkv[vo + 4u * i + 1u], qkv[vo + 4u * i + 2u], qkv[vo + 4u * i + 3u]);
    }
    workgroupBarrier();
    for (var i = lid; i < D4; i += WG) {
        qs[i] = vec4<f32>(qf[4u * i], qf[4u * i + 1u], qf[4u * i + 2u], qf[4u * i + 3u]) * P.scale;
        if (h % (P.n_heads / P.n_kv) == 0u) {   // one writer per key/value head
            let ci = (pos * P.n_kv + j) * D4 + i;
            kc[ci] = vec4<cache_t>(vec4<f32>(kf[4u * i], kf[4u * i + 1u], kf[4u * i + 2u], kf[4u * i + 3u]));
            vc[ci] = vec4<cache_t>(vf[i]);
        }
    }
    let Lc = L - 1u;   // cached positions; this token's key and value come from workgroup memory
//#else
    for (var i = lid; i < d4; i += WG) { qs[i] = q[qbase + i] * P.scale; }
    let Lc = L;
//#endif
    workgroupBarrier();

    var mx = -3.0e38;
//#if ROPE
    if (lid == 0u) {
        var s = vec4<f32>(0.0);
        for (var i = 0u; i < D4; i++) {
            s = fma(qs[i], vec4<f32>(kf[4u * i], kf[4u * i + 1u], kf[4u * i + 2u], kf[4u * i + 3u]), s);
        }
        let st = s.x + s.y + s.z + s.w;
        sc[sbase + Lc] = st;
        mx = st;
    }
//#endif
    for (var t = lid; t < Lc; t += WG) {
        let kb = (t * P.n_kv + j) * d4;
        var s = vec4<f32>(0.0);
        for (var i = 0u; i < D4; i++) { s = fma(qs[i], vec4<f32>(kc[kb + i]), s); }
        let st = s.x + s.y + s.z + s.w;
        sc[sbase + t] = st;
        mx = max(mx, st);
    }
    let gmax = reduce(mx, lid, sgs, true);
    var sum = 0.0;
    for (var t = lid; t < L; t += WG) {
        let p = exp(sc[sbase + t] - gmax);
        sc[sbase + t] = p;
        sum += p;
    }
    storageBarrier();
    let total = reduce(sum, lid, sgs, false);

    let lane = lid % d4;
    let tg = lid / d4;
    let ngroups = WG / d4;
    // four positions per iteration with separate sums: four independent loads in flight
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    let vstride = P.n_kv * d4;
    let vb = j * d4 + lane;
    var t = tg;
    for (; t + 3u * ngroups < Lc; t += 4u * ngroups) {
        a0 = fma(vec4<f32>(sc[sbase + t]), vec4<f32>(vc[t * vstride + vb]), a0);
        a1 = fma(vec4<f32>(sc[sbase + t + ngroups]), vec4<f32>(vc[(t + ngroups) * vstride + vb]), a1);
        a2 = fma(vec4<f32>(sc[sbase + t + 2u * ngroups]), vec4<f32>(vc[(t + 2u * ngroups) * vstride + vb]), a2);
        a3 = fma(vec4<f32>(sc[sbase + t + 3u * ngroups]), vec4<f32>(vc[(t + 3u * ngroups) * vstride + vb]), a3);
    }
    for (; t < Lc; t += ngroups) {
        a0 = fma(vec4<f32>(sc[sbase + t]), vec4<f32>(vc[t * vstride + vb]), a0);
    }
//#if ROPE
    if (tg == 0u) { a0 = fma(vec4<f32>(sc[sbase + Lc]), vf[lane], a0); }
//#endif
    acc[lid] = (a0 + a1) + (a2 + a3);
    workgroupBarrier();
    if (tg == 0u) {
        var o = acc[lane];
        for (var g = 1u; g < ngroups; g++) { o += acc[g * d4 + lane]; }
        qs[lane] = o / total;   // q is no longer needed: reuse its space for the output
    }
    workgroupBarrier();
//#if Q8OUT
    for (var b = lid; b < P.hd / 32u; b += WG) {
        let i = b * 8u;
        let r = q8_block(qs[i], qs[i + 1u], qs[i + 2u], qs[i + 3u], qs[i + 4u], qs[i + 5u], qs[i + 6u], qs[i + 7u]);
        let blk = (m * P.n_heads + h) * (P.hd / 32u) + b;
        xq[2u * blk] = r.w0;
        xq[2u * blk + 1u] = r.w1;
        xd[blk] = r.d;
    }
//#else
    for (var i = lid; i < d4; i += WG) { out[qbase + i] = qs[i]; }
//#endif
}
