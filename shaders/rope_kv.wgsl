// Prefill, after the fused QKV projection: (q/k RMSNorm,) RoPE on q and k, and the KV-cache
// write of M new positions. (Decode does this inside attention_decode.wgsl.)
//
// Types: cache_t (f16 | f32). Overrides: WG. Flags: QK_NORM (Qwen3's per-head q_norm / k_norm,
// bindings qn, kn), SUBGROUPS (reduce.wgsl).
// Bindings (group 0):
//   P    uniform  M, n_heads, n_kv, hd, eps (f32)
//   S    uniform  pos0 — cache position of row 0 (shared by every layer; written per step)
//   qkv  read     array<f32>       (M, (n_heads + 2·n_kv)·hd)   q heads, k heads, v heads
//   cs   read     array<vec2<f32>> (max_seq, hd/2)              (cos, sin) table, rope.wgsl
//   qn   read     array<f32>       (hd)                         when QK_NORM
//   kn   read     array<f32>       (hd)                         when QK_NORM
//   q    rw       array<f32>       (M, n_heads·hd)              rotated queries
//   kc   rw       array<cache_t>   (max_seq, n_kv, hd)          this layer's key cache
//   vc   rw       array<cache_t>   (max_seq, n_kv, hd)          this layer's value cache
// Workgroup (hh, m): hh < n_heads a query head, then n_kv key heads, then n_kv value heads.

override WG: u32 = 64u;

struct Params { M: u32, n_heads: u32, n_kv: u32, hd: u32, eps: f32 }
struct Step { pos0: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> cs: array<vec2<f32>>;
//#if QK_NORM
@group(0) @binding(4) var<storage, read> qn: array<f32>;
@group(0) @binding(5) var<storage, read> kn: array<f32>;
//#endif
@group(0) @binding(6) var<storage, read_write> q: array<f32>;
@group(0) @binding(7) var<storage, read_write> kc: array<cache_t>;
@group(0) @binding(8) var<storage, read_write> vc: array<cache_t>;
//#include reduce
//#include rope

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
//#if SUBGROUPS
        @builtin(subgroup_size) sgs: u32,
//#endif
        ) {
//#if !SUBGROUPS
    let sgs = 1u;
//#endif
    let hh = wid.x;
    let m = wid.y;
    let hd = P.hd;
    let half = hd / 2u;
    let pos = S.pos0 + m;
    let src = m * (P.n_heads + 2u * P.n_kv) * hd + hh * hd;   // q, k, v heads are consecutive
    let is_q = hh < P.n_heads;
    if (hh >= P.n_heads + P.n_kv) {        // a value head: copy into the cache (uniform per workgroup)
        let j = hh - P.n_heads - P.n_kv;
        for (var i = lid; i < hd; i += WG) { vc[(pos * P.n_kv + j) * hd + i] = cache_t(qkv[src + i]); }
        return;
    }
    var r = 1.0;
//#if QK_NORM
    var ss = 0.0;
    for (var i = lid; i < hd; i += WG) { ss += qkv[src + i] * qkv[src + i]; }
    r = inv_rms(wg_sum(ss, lid, sgs), hd, P.eps);
//#endif
    for (var i = lid; i < half; i += WG) {
        var a = qkv[src + i] * r;
        var b = qkv[src + i + half] * r;
//#if QK_NORM
        if (is_q) { a *= qn[i]; b *= qn[i + half]; } else { a *= kn[i]; b *= kn[i + half]; }
//#endif
        let v = rope(a, b, cs[pos * half + i]);
        if (is_q) {
            q[(m * P.n_heads + hh) * hd + i] = v.x;
            q[(m * P.n_heads + hh) * hd + i + half] = v.y;
        } else {
            let k = (pos * P.n_kv + hh - P.n_heads) * hd;
            kc[k + i] = cache_t(v.x);
            kc[k + i + half] = cache_t(v.y);
        }
    }
}
