// The decode kernel's GEMV for one stacked weight (`//#include decode_gemv(K)` makes dot_K for the
// bindings w_K, s_K (and o_K)): int8 activations from workgroup memory (xs and xds in wsm, decode.wgsl).

// One chunk of 32 weights (q, chunk c of its row) · the activations: scale × int8 dot product,
// with the nibbles' offset of 8 (and a group offset) taken out through the block's Σq.
fn term_$K(q: vec4<u32>, c: u32, gbase: u32) -> f32 {
    let gi = gbase + (c * 32u) / GS;
    let dx = xds_get(c);
    var t = f32(s_$K[gi]) * dx.x * f32(idot32(q, wsm[2u * c], wsm[2u * c + 1u]) - i32(dx.y));
//#if HAS_OFFSETS
    t += o_$K[gi] * dx.x * (dx.y / 8.0);
//#endif
    return t;
}

// This lane's part of row r (K columns): chunks lane, lane + TPR, ..., UNROLL (8 or 4) loads
// issued before their arithmetic so that they are in flight together.
fn dot_$K(r: u32, K: u32, lane: u32) -> f32 {
    let nch = K / 32u;
    let base = r * nch;
    let gbase = r * (K / GS);
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var c = lane;
    if (UNROLL >= 8u) {
        for (; c + 7u * TPR < nch; c += 8u * TPR) {
            let q0 = w_$K[base + c];
            let q1 = w_$K[base + c + TPR];
            let q2 = w_$K[base + c + 2u * TPR];
            let q3 = w_$K[base + c + 3u * TPR];
            let q4 = w_$K[base + c + 4u * TPR];
            let q5 = w_$K[base + c + 5u * TPR];
            let q6 = w_$K[base + c + 6u * TPR];
            let q7 = w_$K[base + c + 7u * TPR];
            a0 += term_$K(q0, c, gbase) + term_$K(q4, c + 4u * TPR, gbase);
            a1 += term_$K(q1, c + TPR, gbase) + term_$K(q5, c + 5u * TPR, gbase);
            a2 += term_$K(q2, c + 2u * TPR, gbase) + term_$K(q6, c + 6u * TPR, gbase);
            a3 += term_$K(q3, c + 3u * TPR, gbase) + term_$K(q7, c + 7u * TPR, gbase);
        }
    }
    for (; c + 3u * TPR < nch; c += 4u * TPR) {
        let q0 = w_$K[base + c];
        let q1 = w_$K[base + c + TPR];
        let q2 = w_$K[base + c + 2u * TPR];
        let q3 = w_$K[base + c + 3u * TPR];
        a0 += term_$K(q0, c, gbase);
        a1 += term_$K(q1, c + TPR, gbase);
        a2 += term_$K(q2, c + 2u * TPR, gbase);
        a3 += term_$K(q3, c + 3u * TPR, gbase);
    }
    for (; c < nch; c += TPR) { a0 += term_$K(w_$K[base + c], c, gbase); }
    return (a0 + a1) + (a2 + a3);
}
