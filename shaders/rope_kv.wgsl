// After the fused QKV projection: (q/k RMSNorm,) RoPE on q and k, and the KV-cache write.
//
// Prepended: alias cache_t (f16 | f32); const WG; const QK_NORM (qwen3's per-head q_norm/k_norm).
// Bindings (group 0):
//   0 uniform  P: M, n_heads, n_kv, hd, eps (f32 bits)
//   1 uniform  S: pos0 — cache position of row 0 (shared by every layer; written per step)
//   2 storage  qkv  array<f32>       (M, (n_heads + 2·n_kv)·hd)  q heads, k heads, v heads
//   3 storage  cs   array<vec2<f32>> (max_seq, hd/2)             (cos, sin) of pos · inv_freq[i]
//   4 storage  qn   array<f32>       (hd)   q_norm weight (a dummy without QK_NORM)
//   5 storage  kn   array<f32>       (hd)   k_norm weight
//   6 storage  q    array<f32>       (M, n_heads·hd)             rotated queries
//   7 storage  kc   array<cache_t>   (max_seq, n_kv, hd)         this layer's key cache
//   8 storage  vc   array<cache_t>   (max_seq, n_kv, hd)         this layer's value cache
// Workgroup (h, m): h < n_heads a query head, then n_kv key heads, then n_kv value heads.
// RoPE pairs element i with i + hd/2 (Hugging Face's rotate_half convention).

struct Params { M: u32, n_heads: u32, n_kv: u32, hd: u32, eps: f32 }
struct Step { pos0: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> cs: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> qn: array<f32>;
@group(0) @binding(5) var<storage, read> kn: array<f32>;
@group(0) @binding(6) var<storage, read_write> q: array<f32>;
@group(0) @binding(7) var<storage, read_write> kc: array<cache_t>;
@group(0) @binding(8) var<storage, read_write> vc: array<cache_t>;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let hh = wid.x;
    let m = wid.y;
    let hd = P.hd;
    let half = hd / 2u;
    let pos = S.pos0 + m;
    let stride = (P.n_heads + 2u * P.n_kv) * hd;
    let src = m * stride + hh * hd;        // q, k and v heads are consecutive in a row
    let is_q = hh < P.n_heads;
    if (hh >= P.n_heads + P.n_kv) {        // a value head: copy into the cache
        let j = hh - P.n_heads - P.n_kv;
        for (var i = lid; i < hd; i += WG) { vc[(pos * P.n_kv + j) * hd + i] = cache_t(qkv[src + i]); }
        return;
    }
    var r = 1.0;
    if (QK_NORM) {
        var ss = 0.0;
        for (var i = lid; i < hd; i += WG) { ss += qkv[src + i] * qkv[src + i]; }
        red[lid] = ss;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s /= 2u) {
            if (lid < s) { red[lid] += red[lid + s]; }
            workgroupBarrier();
        }
        r = inverseSqrt(red[0] / f32(hd) + P.eps);
    }
    for (var i = lid; i < half; i += WG) {
        var a = qkv[src + i];
        var b = qkv[src + i + half];
        if (QK_NORM) {
            if (is_q) { a *= r * qn[i]; b *= r * qn[i + half]; } else { a *= r * kn[i]; b *= r * kn[i + half]; }
        }
        let c = cs[pos * half + i];
        let ra = a * c.x - b * c.y;
        let rb = b * c.x + a * c.y;
        if (is_q) {
            q[(m * P.n_heads + hh) * hd + i] = ra;
            q[(m * P.n_heads + hh) * hd + i + half] = rb;
        } else {
            let k = (pos * P.n_kv + hh - P.n_heads) * hd;
            kc[k + i] = cache_t(ra);
            kc[k + i + half] = cache_t(rb);
        }
    }
}
