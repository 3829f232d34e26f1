// Attention of one query head over cached keys and values (`//#include attention_common`),
// used by attention_decode.wgsl (prefill has its own flash attention, attention_prefill.wgsl).
//
// Needs from the including shader: override WG (a multiple of D4) and D4 = hd/4 (a loop bound
// the compiler unrolls, so the dot products' loads overlap); P with n_kv; kc, vc
// (array<vec4<cache_t>>, (max_seq, n_kv, hd/4)); sc (array<f32>, a row of max_seq per query
// head: scores, then softmax numerators); qs holding the query (times 1/sqrt(hd)).

var<workgroup> qs: array<vec4<f32>, 64>;     // this head's query, then its output (hd ≤ 256)
var<workgroup> acc: array<vec4<f32>, WG>;    // per position group: partial weighted values

// Scores q·k of cached positions lid, lid + WG, ... < Lc into sc[sbase + t]; returns the
// largest of these and mx.
fn cached_scores(sbase: u32, Lc: u32, j: u32, lid: u32, mx: f32) -> f32 {
    var m = mx;
    for (var t = lid; t < Lc; t += WG) {
        let kb = (t * P.n_kv + j) * D4;
        var s = vec4<f32>(0.0);
        for (var i = 0u; i < D4; i++) { s = fma(qs[i], vec4<f32>(kc[kb + i]), s); }
        let st = s.x + s.y + s.z + s.w;
        sc[sbase + t] = st;
        m = max(m, st);
    }
    return m;
}

// exp(score − gmax) in place for positions < L; returns this invocation's part of their sum.
fn softmax_numerators(sbase: u32, L: u32, gmax: f32, lid: u32) -> f32 {
    var sum = 0.0;
    for (var t = lid; t < L; t += WG) {
        let p = exp(sc[sbase + t] - gmax);
        sc[sbase + t] = p;
        sum += p;
    }
    return sum;
}

// Σ_t p_t · v_t over cached positions < Lc for lane lid % D4 of the value head j, position
// group lid / D4 taking every (WG / D4)-th position, four at a time with separate sums so that
// four independent loads are in flight.
fn weighted_values(sbase: u32, Lc: u32, j: u32, lid: u32) -> vec4<f32> {
    let ngroups = WG / D4;
    let vstride = P.n_kv * D4;
    let vb = j * D4 + lid % D4;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var t = lid / D4;
    for (; t + 3u * ngroups < Lc; t += 4u * ngroups) {
        a0 = fma(vec4<f32>(sc[sbase + t]), vec4<f32>(vc[t * vstride + vb]), a0);
        a1 = fma(vec4<f32>(sc[sbase + t + ngroups]), vec4<f32>(vc[(t + ngroups) * vstride + vb]), a1);
        a2 = fma(vec4<f32>(sc[sbase + t + 2u * ngroups]), vec4<f32>(vc[(t + 2u * ngroups) * vstride + vb]), a2);
        a3 = fma(vec4<f32>(sc[sbase + t + 3u * ngroups]), vec4<f32>(vc[(t + 3u * ngroups) * vstride + vb]), a3);
    }
    for (; t < Lc; t += ngroups) {
        a0 = fma(vec4<f32>(sc[sbase + t]), vec4<f32>(vc[t * vstride + vb]), a0);
    }
    return (a0 + a1) + (a2 + a3);
}

// Adds the position groups' partial sums and divides by the softmax total: qs[0 .. D4) holds
// the head's output afterwards (for every invocation).
fn combine(part: vec4<f32>, total: f32, lid: u32) {
    acc[lid] = part;
    workgroupBarrier();
    if (lid < D4) {
        var o = acc[lid];
        for (var g = 1u; g < WG / D4; g++) { o += acc[g * D4 + lid]; }
        qs[lid] = o / total;   // the query is no longer needed: its space takes the output
    }
    workgroupBarrier();
}
