// The decode kernel's GEMV for one stacked weight (`//#include decode_gemv(K)` makes dot_K for the
// bindings w_K, s_K (and o_K)): int8 activations from workgroup memory (xs and xds in wsm, decode.wgsl).

// The scale of chunk c's group (and its offset when HAS_OFFSETS) of a row whose groups start at gbase.
fn sc_$K(c: u32, gbase: u32) -> vec2<f32> {
    let gi = gbase + (c * 32u) / GS;
//#if HAS_OFFSETS
    return vec2<f32>(f32(s_$K[gi]), o_$K[gi]);
//#else
    return vec2<f32>(f32(s_$K[gi]), 0.0);
//#endif
}

// One chunk of 32 weights (q, chunk c of its row, group scale and offset so) · the activations:
// scale × int8 dot product, with the nibbles' offset of 8 (and the group offset) taken out
// through the block's Σq.
fn term_$K(q: vec4<u32>, c: u32, so: vec2<f32>) -> f32 {
    let dx = xds_get(c);
    var t = so.x * dx.x * f32(idot32(q, wsm[2u * c], wsm[2u * c + 1u]) - i32(dx.y));
//#if HAS_OFFSETS
    t += so.y * dx.x * (dx.y / 8.0);
//#endif
    return t;
}

// This lane's part of row r (K columns): chunks lane, lane + TPR, ..., UNROLL (8 or 4) chunks'
// weights and scales loaded before their arithmetic, so that they are in flight together.
fn dot_$K(r: u32, K: u32, lane: u32) -> f32 {
    let nch = K / 32u;
    let base = r * nch;
    let g = r * (K / GS);
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
            let s0 = sc_$K(c, g); let s1 = sc_$K(c + TPR, g); let s2 = sc_$K(c + 2u * TPR, g); let s3 = sc_$K(c + 3u * TPR, g);
            let s4 = sc_$K(c + 4u * TPR, g); let s5 = sc_$K(c + 5u * TPR, g); let s6 = sc_$K(c + 6u * TPR, g); let s7 = sc_$K(c + 7u * TPR, g);
            a0 += term_$K(q0, c, s0) + term_$K(q4, c + 4u * TPR, s4);
            a1 += term_$K(q1, c + TPR, s1) + term_$K(q5, c + 5u * TPR, s5);
            a2 += term_$K(q2, c + 2u * TPR, s2) + term_$K(q6, c + 6u * TPR, s6);
            a3 += term_$K(q3, c + 3u * TPR, s3) + term_$K(q7, c + 7u * TPR, s7);
        }
    }
    for (; c + 3u * TPR < nch; c += 4u * TPR) {
        let q0 = w_$K[base + c];
        let q1 = w_$K[base + c + TPR];
        let q2 = w_$K[base + c + 2u * TPR];
        let q3 = w_$K[base + c + 3u * TPR];
        let s0 = sc_$K(c, g); let s1 = sc_$K(c + TPR, g); let s2 = sc_$K(c + 2u * TPR, g); let s3 = sc_$K(c + 3u * TPR, g);
        a0 += term_$K(q0, c, s0);
        a1 += term_$K(q1, c + TPR, s1);
        a2 += term_$K(q2, c + 2u * TPR, s2);
        a3 += term_$K(q3, c + 3u * TPR, s3);
    }
    for (; c < nch; c += TPR) { a0 += term_$K(w_$K[base + c], c, sc_$K(c, g)); }
    return (a0 + a1) + (a2 + a3);
}
