// Decode attention (M = 1), straight from the fused QKV projection's output: (q/k RMSNorm,)
// RoPE on this head's query and its key head, the KV-cache write of this token, and attention
// over the cache — rope_kv.wgsl's work without its dispatch. The new key and value are used from
// workgroup memory, so no workgroup depends on another's cache write.
//
// Types: cache_t (f16 | f32). Overrides: WG (a multiple of D4), D4 = hd/4. Flags: QK_NORM
// (bindings qn, kn), Q8OUT (write the output as int8 blocks for the O projection's Q8 GEMV;
// needs hd % 32 == 0), SUBGROUPS.
// Bindings (group 0):
//   P    uniform  M (= 1), n_heads, n_kv, hd, max_seq, scale (f32), eps (f32)
//   S    uniform  pos0 — this token's cache position
//   qkv  read     array<f32>            ((n_heads + 2·n_kv)·hd)   unrotated q, k, v heads
//   kc   rw       array<vec4<cache_t>>  (max_seq, n_kv, hd/4)
//   vc   rw       array<vec4<cache_t>>  (max_seq, n_kv, hd/4)
//   sc   rw       array<f32>            (n_heads, max_seq)   scratch: scores, then weights
//   cs   read     array<vec2<f32>>      (max_seq, hd/2)      (cos, sin) table, rope.wgsl
//   qn   read     array<f32>            (hd)                 when QK_NORM
//   kn   read     array<f32>            (hd)                 when QK_NORM
//   out  rw       array<vec4<f32>>      (n_heads, hd/4)      when !Q8OUT
//   xq   rw       array<vec4<u32>>      (n_heads·hd/16), xd rw array<vec2<f32>> (n_heads·hd/32)  when Q8OUT
// Workgroup h attends head h over positions 0 ..= pos0 with the key/value head
// h / (n_heads / n_kv); the first query head of each group writes the cache.

override WG: u32 = 256u;
override D4: u32 = 16u;

struct Params { M: u32, n_heads: u32, n_kv: u32, hd: u32, max_seq: u32, scale: f32, eps: f32 }
struct Step { pos0: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<vec4<cache_t>>;
@group(0) @binding(4) var<storage, read_write> vc: array<vec4<cache_t>>;
@group(0) @binding(5) var<storage, read_write> sc: array<f32>;
@group(0) @binding(8) var<storage, read> cs: array<vec2<f32>>;
//#if QK_NORM
@group(0) @binding(9) var<storage, read> qn: array<f32>;
@group(0) @binding(10) var<storage, read> kn: array<f32>;
//#endif
//#if Q8OUT
@group(0) @binding(6) var<storage, read_write> xq: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> xd: array<vec2<f32>>;
//#include q8_common
//#else
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
//#endif
//#include reduce
//#include rope
//#include attention_common

var<workgroup> qf: array<f32, 256>;      // this head's rotated query
var<workgroup> kf: array<f32, 256>;      // this token's rotated key
var<workgroup> vf: array<vec4<f32>, 64>; // this token's value

// Rotates query head h into qs (scaled) and key head j into kf; loads value head j into vf.
fn rope_qkv(h: u32, j: u32, pos: u32, lid: u32, sgs: u32) {
    let hd = 4u * D4;
    let half = hd / 2u;
    let qo = h * hd;
    let ko = P.n_heads * hd + j * hd;
    let vo = (P.n_heads + P.n_kv) * hd + j * hd;
    var rq = 1.0;
    var rk = 1.0;
//#if QK_NORM
    var sq = 0.0;
    var sk = 0.0;
    for (var i = lid; i < hd; i += WG) { sq += qkv[qo + i] * qkv[qo + i]; sk += qkv[ko + i] * qkv[ko + i]; }
    rq = inv_rms(wg_sum(sq, lid, sgs), hd, P.eps);
    rk = inv_rms(wg_sum(sk, lid, sgs), hd, P.eps);
//#endif
    for (var i = lid; i < half; i += WG) {
        var qa = qkv[qo + i] * rq;
        var qb = qkv[qo + i + half] * rq;
        var ka = qkv[ko + i] * rk;
        var kb = qkv[ko + i + half] * rk;
//#if QK_NORM
        qa *= qn[i]; qb *= qn[i + half]; ka *= kn[i]; kb *= kn[i + half];
//#endif
        let c = cs[pos * half + i];
        let rq2 = rope(qa, qb, c);
        let rk2 = rope(ka, kb, c);
        qf[i] = rq2.x;
        qf[i + half] = rq2.y;
        kf[i] = rk2.x;
        kf[i + half] = rk2.y;
    }
    for (var i = lid; i < D4; i += WG) {
        vf[i] = vec4<f32>(qkv[vo + 4u * i], qkv[vo + 4u * i + 1u], qkv[vo + 4u * i + 2u], qkv[vo + 4u * i + 3u]);
    }
    workgroupBarrier();
    for (var i = lid; i < D4; i += WG) {
        qs[i] = vec4<f32>(qf[4u * i], qf[4u * i + 1u], qf[4u * i + 2u], qf[4u * i + 3u]) * P.scale;
    }
    workgroupBarrier();
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
    let j = h / (P.n_heads / P.n_kv);
    let pos = S.pos0;                // this token's position; positions < pos are cached
    let sbase = h * P.max_seq;
    rope_qkv(h, j, pos, lid, sgs);
    var mx = -3.0e38;
    if (lid == 0u) {                 // this token's own score, from workgroup memory
        var s = vec4<f32>(0.0);
        for (var i = 0u; i < D4; i++) {
            s = fma(qs[i], vec4<f32>(kf[4u * i], kf[4u * i + 1u], kf[4u * i + 2u], kf[4u * i + 3u]), s);
        }
        mx = s.x + s.y + s.z + s.w;
        sc[sbase + pos] = mx;
    }
    if (h % (P.n_heads / P.n_kv) == 0u) {   // one cache writer per key/value head
        for (var i = lid; i < D4; i += WG) {
            let ci = (pos * P.n_kv + j) * D4 + i;
            kc[ci] = vec4<cache_t>(vec4<f32>(kf[4u * i], kf[4u * i + 1u], kf[4u * i + 2u], kf[4u * i + 3u]));
            vc[ci] = vec4<cache_t>(vf[i]);
        }
    }
    let smax = cached_scores(sbase, pos, j, lid, mx);
    storageBarrier();   // sc[sbase + pos], written by invocation 0, is read by another
    let gmax = wg_max(smax, lid, sgs);
    let sum = softmax_numerators(sbase, pos + 1u, gmax, lid);
    storageBarrier();
    let total = wg_sum(sum, lid, sgs);
    var part = weighted_values(sbase, pos, j, lid);
    if (lid < D4) { part = fma(vec4<f32>(sc[sbase + pos]), vf[lid], part); }
    combine(part, total, lid);
//#if Q8OUT
    for (var b = lid; b < D4 / 8u; b += WG) {
        let i = b * 8u;
        let r = q8_block(qs[i], qs[i + 1u], qs[i + 2u], qs[i + 3u], qs[i + 4u], qs[i + 5u], qs[i + 6u], qs[i + 7u]);
        let blk = h * (D4 / 8u) + b;
        xq[2u * blk] = r.w0;
        xq[2u * blk + 1u] = r.w1;
        xd[blk] = r.d;
    }
//#else
    for (var i = lid; i < D4; i += WG) { out[h * D4 + i] = qs[i]; }
//#endif
}
