// One decode step (one token through every layer and the head) as phases of one kernel.
//
// Phase ph = 5·layer + k, then the head (ph = 5·NL):
//   k = 0  RMSNorm (recomputed by every workgroup) → int8 in workgroup memory │ QKV GEMV (+bias) → qkv
//   k = 1  per (head, block of BLOCK positions): q/k RMSNorm, RoPE, this token's cache write,
//          attention over the block → partial (o, max, sum) → part   (flash-decoding)
//   k = 2  combine the partials (every workgroup) → int8 │ O GEMV, h += (+bias)
//   k = 3  RMSNorm → int8 │ gate/up GEMV, silu(gate)·up → int8 blocks → aq, ad
//   k = 4  aq, ad → workgroup memory │ down GEMV, h += 
//   head   final RMSNorm → f32 in workgroup memory │ lm_head GEMV → logits
// Within a phase the units of work (rows of a weight, (head, block) pairs) are spread over the
// workgroups, unit u to workgroup u mod num_workgroups. Between phases, two schedules run the same
// code: PERSISTENT (one dispatch; a grid barrier between phases: an atomic counter every workgroup
// increments and spins on, bounded, so the kernel never hangs: a spin that runs out sets an error
// flag and every workgroup leaves) or phased (one dispatch per phase: the dispatch boundary is the
// barrier; runs anywhere, lavapipe included). The host picks the phase range per dispatch (R).
//
// Visibility across phases inside one dispatch: every buffer one phase writes and a later phase
// reads (h, qkv, part, aq, ad) is declared @coherent where the adapter has the feature
// (COHERENT); a plain storage buffer was read stale 99.9 % of the time on an H200
// (KERNELS.md). Weights, norms, the RoPE table and the embedding are only read. The KV cache
// row of this token is written in phase 1 and read only by the workgroups that wrote it (from
// workgroup memory) until the next dispatch.
//
// Types: act_t = scale type (f16 | f32), cache_t, emb_t. Overrides: the model's shape (D, FF, NH,
// NKV, HD, V, NL, MAXSEQ, GS, EPS), the kernel's (WG, TPR, BLOCK, SPIN, UNROLL). Flags: PERSISTENT,
// COHERENT, SUBGROUPS, SG_ROWS (TPR ≤ the subgroup size: row sums by subgroup shuffles, no
// barrier), HAS_OFFSETS (q4 weights carry per-group offsets), QKV_BIAS, O_BIAS,
// QK_NORM, HEAD_W8 (lm_head int8 per 32, else q4gsw), HEAD_OFFSETS.
// Bindings (group 0), L = NL layers stacked along rows:
//   S      uniform  pos (this token's position), token, nb (attention blocks: ceil((pos+1)/BLOCK))
//   R      uniform  first, last: the phases this dispatch runs
//   w_qkv  read     array<vec4<u32>>  (L·QKVD, D/32)    s_qkv read array<act_t> (L·QKVD, D/GS)
//   w_o    read     array<vec4<u32>>  (L·D, QD/32)      s_o   read array<act_t> (L·D, QD/GS)
//   w_gu   read     array<vec4<u32>>  (L·2FF, D/32)     s_gu  read array<act_t> (L·2FF, D/GS)
//                   gate and up rows interleaved per 32 (model._interleave32)
//   w_dn   read     array<vec4<u32>>  (L·D, FF/32)      s_dn  read array<act_t> (L·D, FF/GS)
//   o_qkv, o_o, o_gu, o_dn  read array<f32>, per-group offsets, when HAS_OFFSETS
//   b_qkv  read     array<f32> (L·QKVD) when QKV_BIAS;  b_o read array<f32> (L·D) when O_BIAS
//   w_hd   read     array<vec4<u32>>  lm_head (V, D/32) q4gsw, or (V, D/16) int8 when HEAD_W8
//   s_hd   read     array<act_t> (V, D/GS), or (V, D/32) when HEAD_W8;  o_hd when HEAD_OFFSETS
//   emb    read     array<vec4<emb_t>>  (V, D/4)
//   nrm    read     array<f32>: attention norms (L, D), MLP norms (L, D), final norm (D), then
//                   q_norm (L, HD) and k_norm (L, HD) when QK_NORM
//   cs     read     array<vec2<f32>>  (MAXSEQ, HD/2)     RoPE (cos, sin), rope.wgsl
//   kc, vc rw       array<vec4<cache_t>>  (L, CSTRIDE): layer l's (MAXSEQ, NKV, HD/4) at l · CSTRIDE
//   h      rw       array<f32>  (D)                the residual stream
//   qkv    rw       array<f32>  (QKVD)             this layer's fused QKV projection
//   part   rw       array<f32>  (NH, NBMAX, HD + 2)  attention partials: o (unnormalised), max, sum
//   aq     rw       array<vec4<u32>> (FF/16), ad rw array<vec2<f32>> (FF/32): silu(gate)·up, int8
//   logits rw       array<f32>  (V)
//   sync   rw       array<atomic<u32>>  [0] barrier counter (zeroed by the host each step),
//                   [1] error flag (a spin ran out), [2], [3] occupancy discovery (discover())

override WG: u32 = 256u;
override TPR: u32 = 32u;          // threads per weight row (a power of two, divides WG), by default
// ... and per weight (the host picks each so that a phase's loads are in flight at once: few rows
// per lane pass where K is long, more where rows are many), with the rows a workgroup pass covers
override TPR_qkv: u32 = TPR;
override TPR_o: u32 = TPR;
override TPR_gu: u32 = TPR;       // a pass covers at most one gate/up block of 64 rows: below WG / 64 lanes idle
override TPR_dn: u32 = TPR;
override TPR_hd: u32 = TPR;
override RPW_qkv: u32 = WG / TPR_qkv;
override RPW_o: u32 = WG / TPR_o;
override RPW_gu: u32 = WG / TPR_gu;
override RPW_dn: u32 = WG / TPR_dn;
override RPW_hd: u32 = WG / TPR_hd;
override D: u32 = 64u;
override FF: u32 = 128u;
override NH: u32 = 4u;
override NKV: u32 = 2u;
override HD: u32 = 16u;
override V: u32 = 64u;
override NL: u32 = 1u;
override MAXSEQ: u32 = 64u;
override GS: u32 = 32u;
override EPS: f32 = 1e-5;
override BLOCK: u32 = 128u;       // attention positions per unit (≤ WG)
override SPIN: u32 = 2000000u;    // iterations a grid barrier waits before it gives up
override UNROLL: u32 = 4u;        // weight loads a GEMV lane issues at once (4 or 8)
override NORM_REG: bool = true;   // norms read their block once where D ≤ 32·WG (false: tests the other path)
override QD: u32 = NH * HD;
override QKVD: u32 = (NH + 2u * NKV) * HD;
override HD4: u32 = HD / 4u;
override NBMAX: u32 = (MAXSEQ + BLOCK - 1u) / BLOCK;
override CSTRIDE: u32 = MAXSEQ * NKV * HD4;   // a layer's cache, in vec4s (padded by the host)
override XS4: u32 = 16u;          // max(D, FF, QD) / 16: int8 activations in workgroup memory
override XD: u32 = 2u;            // max(D, FF, QD) / 32
override D4: u32 = D / 4u;
override XF4: u32 = D4;           // the head's f32 activations (a separate size only for occupancy probes)
override NWTS: u32 = NH * NBMAX;  // ≤ 2048 (the host picks BLOCK so)
override W0: u32 = XS4 + (XD + 1u) / 2u;
override A_QS: u32 = WG;
override A_VF: u32 = WG + HD4;
override A_QF: u32 = WG + 2u * HD4;
override A_KF: u32 = WG + 3u * HD4;
override A_SB: u32 = WG + 4u * HD4;
override WSM4: u32 = max(max(W0 + (NWTS + 3u) / 4u, XF4), A_SB + (BLOCK + 3u) / 4u);

struct Step { pos: u32, token: u32, nb: u32, _a: u32 }
struct Range { first: u32, last: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> S: Step;
@group(0) @binding(1) var<uniform> R: Range;
@group(0) @binding(2) var<storage, read> w_qkv: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> s_qkv: array<act_t>;
@group(0) @binding(4) var<storage, read> w_o: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> s_o: array<act_t>;
@group(0) @binding(6) var<storage, read> w_gu: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read> s_gu: array<act_t>;
@group(0) @binding(8) var<storage, read> w_dn: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read> s_dn: array<act_t>;
//#if HAS_OFFSETS
@group(0) @binding(10) var<storage, read> o_qkv: array<f32>;
@group(0) @binding(11) var<storage, read> o_o: array<f32>;
@group(0) @binding(12) var<storage, read> o_gu: array<f32>;
@group(0) @binding(13) var<storage, read> o_dn: array<f32>;
//#endif
//#if QKV_BIAS
@group(0) @binding(14) var<storage, read> b_qkv: array<f32>;
//#endif
//#if O_BIAS
@group(0) @binding(15) var<storage, read> b_o: array<f32>;
//#endif
@group(0) @binding(16) var<storage, read> w_hd: array<vec4<u32>>;
@group(0) @binding(17) var<storage, read> s_hd: array<act_t>;
//#if HEAD_OFFSETS
@group(0) @binding(18) var<storage, read> o_hd: array<f32>;
//#endif
@group(0) @binding(19) var<storage, read> emb: array<vec4<emb_t>>;
@group(0) @binding(20) var<storage, read> nrm: array<f32>;
@group(0) @binding(21) var<storage, read> cs: array<vec2<f32>>;
@group(0) @binding(22) var<storage, read_write> kc: array<vec4<cache_t>>;
@group(0) @binding(23) var<storage, read_write> vc: array<vec4<cache_t>>;
//#if COHERENT
@group(0) @binding(24) @coherent var<storage, read_write> h: array<f32>;
@group(0) @binding(25) @coherent var<storage, read_write> qkv: array<f32>;
@group(0) @binding(26) @coherent var<storage, read_write> part: array<f32>;
@group(0) @binding(27) @coherent var<storage, read_write> aq: array<vec4<u32>>;
@group(0) @binding(28) @coherent var<storage, read_write> ad: array<vec2<f32>>;
//#else
@group(0) @binding(24) var<storage, read_write> h: array<f32>;
@group(0) @binding(25) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(26) var<storage, read_write> part: array<f32>;
@group(0) @binding(27) var<storage, read_write> aq: array<vec4<u32>>;
@group(0) @binding(28) var<storage, read_write> ad: array<vec2<f32>>;
//#endif
@group(0) @binding(29) var<storage, read_write> logits: array<f32>;
@group(0) @binding(30) var<storage, read_write> sync: array<atomic<u32>>;

//#include q8_common
//#include silu_q8
//#include q4_dot
//#include reduce
//#include rope

// Workgroup memory is one array that every phase views its own way (it bounds how many workgroups
// an SM keeps resident, measured: bench/occupancy_probe.py), phases separated by barriers:
//   GEMV phases  xs: int8 activations [0, XS4) · xds: their (scale, 8·Σq), two per vec4, [XS4, W0)
//   O phase      also the attention combine weights wts at [W0, W0 + NWTS/4)
//   head         xf: f32 activations [0, D4), vec4 j of chunk c (32 values) at j · D/32 + c
//   attention    oacc: weighted values per position group [0, WG) · qs (query), vf (value), qf, kf
//                (rotated query and key, scalars), sb (one block's scores): HD/4 vec4 each, then BLOCK/4
var<workgroup> wsm: array<vec4<u32>, WSM4>;
//#if !SG_ROWS
var<workgroup> gred: array<f32, WG>;         // GEMV partial sums
//#endif
var<workgroup> stop: u32;                    // a grid barrier gave up: leave

// ---- views of the workgroup memory ------------------------------------------------------

fn v4_get(i: u32) -> vec4<f32> { return bitcast<vec4<f32>>(wsm[i]); }
fn v4_put(i: u32, v: vec4<f32>) { wsm[i] = bitcast<vec4<u32>>(v); }
fn f_get(base: u32, i: u32) -> f32 { return bitcast<f32>(wsm[base + i / 4u][i % 4u]); }
fn f_put(base: u32, i: u32, v: f32) { wsm[base + i / 4u][i % 4u] = bitcast<u32>(v); }
fn xds_get(c: u32) -> vec2<f32> {
    let p = wsm[XS4 + c / 2u];
    if (c % 2u == 0u) { return bitcast<vec2<f32>>(p.xy); }
    return bitcast<vec2<f32>>(p.zw);
}
fn xds_put(c: u32, d: vec2<f32>) {
    let u = bitcast<vec2<u32>>(d);
    let i = XS4 + c / 2u;
    if (c % 2u == 0u) { wsm[i].x = u.x; wsm[i].y = u.y; } else { wsm[i].z = u.x; wsm[i].w = u.y; }
}

// ---- the grid barrier -------------------------------------------------------------------

//#if PERSISTENT
// All workgroups meet: each adds 1 to the counter and waits until it reaches goal (b·workgroups
// for the b-th barrier of the step). Returns false if a spin ran out (or another's did).
fn grid_sync(lid: u32, goal: u32) -> bool {
    storageBarrier();
    workgroupBarrier();
    if (lid == 0u) {
        atomicAdd(&sync[0], 1u);
        var n = 0u;
        loop {
            if (atomicLoad(&sync[0]) >= goal) { break; }
            if (atomicLoad(&sync[1]) != 0u) { break; }
            n++;
            if (n > SPIN) { atomicStore(&sync[1], 1u); break; }
        }
        stop = atomicLoad(&sync[1]);
    }
    workgroupBarrier();
    storageBarrier();
    return workgroupUniformLoad(&stop) == 0u;
}

// Occupancy discovery (R.first = 0xFFFFFFFF, a grid far larger than can be resident): each
// workgroup that starts while the window is open counts itself, then waits SPIN iterations; the
// first to finish closes the window and records the count. Workgroups that start later (only
// once a resident one has finished) see it closed. sync[3] = workgroups resident at once.
fn discover(lid: u32) {
    if (lid == 0u && atomicLoad(&sync[2]) == 0u) {
        atomicAdd(&sync[0], 1u);
        var n = 0u;
        loop {
            if (atomicLoad(&sync[2]) != 0u) { break; }
            n++;
            if (n > SPIN) { break; }
        }
        if (atomicExchange(&sync[2], 1u) == 0u) { atomicStore(&sync[3], atomicLoad(&sync[0])); }
    }
}
//#endif

// ---- activations into workgroup memory --------------------------------------------------

// Element 4i..4i+3 of the residual stream, or of this token's embedding before layer 0.
fn resid4(i: u32, first: bool) -> vec4<f32> {
    if (first) { return vec4<f32>(emb[S.token * D4 + i]); }
    return vec4<f32>(h[4u * i], h[4u * i + 1u], h[4u * i + 2u], h[4u * i + 3u]);
}

// The norm weights 4i .. 4i+3 at nrm[woff ..].
fn nrm4(woff: u32, i: u32) -> vec4<f32> {
    return vec4<f32>(nrm[woff + 4u * i], nrm[woff + 4u * i + 1u], nrm[woff + 4u * i + 2u], nrm[woff + 4u * i + 3u]);
}

// Element 4i..4i+3 of the residual normed with 1/rms r and the weights at nrm[woff ..].
fn normed4(i: u32, r: f32, woff: u32, first: bool) -> vec4<f32> {
    return resid4(i, first) * r * nrm4(woff, i);
}

// 1 / rms of the residual (every invocation gets it).
fn resid_inv_rms(first: bool, lid: u32, sgs: u32) -> f32 {
    var ss = 0.0;
    for (var i = lid; i < D4; i += WG) { let v = resid4(i, first); ss += dot(v, v); }
    return inverseSqrt(wg_sum(ss, lid, sgs) / f32(D) + EPS);
}

// Stores one int8 block (32 values as 8 vec4) as block b of xs / xds.
fn put_q8(b: u32, q: Q8Block) {
    wsm[2u * b] = q.w0;
    wsm[2u * b + 1u] = q.w1;
    xds_put(b, q.d);
}

// RMSNorm of the residual (weights nrm[woff ..]) → int8 blocks in xs / xds. Where D ≤ 32·WG,
// each invocation reads its block of 32 once (residual and weights before the reduction), else
// the residual twice.
fn norm_q8(woff: u32, first: bool, lid: u32, sgs: u32) {
    if (NORM_REG && D <= 32u * WG) {
        let on = lid < D / 32u;
        let i = 8u * min(lid, D / 32u - 1u);
        var x0 = vec4<f32>(0.0); var x1 = x0; var x2 = x0; var x3 = x0; var x4 = x0; var x5 = x0; var x6 = x0; var x7 = x0;
        var w0 = x0; var w1 = x0; var w2 = x0; var w3 = x0; var w4 = x0; var w5 = x0; var w6 = x0; var w7 = x0;
        if (on) {
            x0 = resid4(i, first); x1 = resid4(i + 1u, first); x2 = resid4(i + 2u, first); x3 = resid4(i + 3u, first);
            x4 = resid4(i + 4u, first); x5 = resid4(i + 5u, first); x6 = resid4(i + 6u, first); x7 = resid4(i + 7u, first);
            w0 = nrm4(woff, i); w1 = nrm4(woff, i + 1u); w2 = nrm4(woff, i + 2u); w3 = nrm4(woff, i + 3u);
            w4 = nrm4(woff, i + 4u); w5 = nrm4(woff, i + 5u); w6 = nrm4(woff, i + 6u); w7 = nrm4(woff, i + 7u);
        }
        let ss = (dot(x0, x0) + dot(x1, x1) + dot(x2, x2) + dot(x3, x3)) + (dot(x4, x4) + dot(x5, x5) + dot(x6, x6) + dot(x7, x7));
        let r = inverseSqrt(wg_sum(ss, lid, sgs) / f32(D) + EPS);
        if (on) {
            put_q8(lid, q8_block(x0 * r * w0, x1 * r * w1, x2 * r * w2, x3 * r * w3,
                                 x4 * r * w4, x5 * r * w5, x6 * r * w6, x7 * r * w7));
        }
        workgroupBarrier();
        return;
    }
    let r = resid_inv_rms(first, lid, sgs);
    for (var b = lid; b < D / 32u; b += WG) {
        let i = 8u * b;
        put_q8(b, q8_block(normed4(i, r, woff, first), normed4(i + 1u, r, woff, first), normed4(i + 2u, r, woff, first),
                           normed4(i + 3u, r, woff, first), normed4(i + 4u, r, woff, first), normed4(i + 5u, r, woff, first),
                           normed4(i + 6u, r, woff, first), normed4(i + 7u, r, woff, first)));
    }
    workgroupBarrier();
}

// ---- GEMV rows: TPR lanes per row, int8 activations from xs / xds -----------------------

//#include decode_gemv(qkv)
//#include decode_gemv(o)
//#include decode_gemv(gu)
//#include decode_gemv(dn)

// lm_head chunk c (32 columns) of row r: its weights (q; p, the second half, when HEAD_W8) and
// its scale (and offset), loaded apart from the arithmetic so that a batch of them is in flight.
fn hd_q(r: u32, c: u32) -> vec4<u32> {
//#if HEAD_W8
    return w_hd[2u * (r * (D / 32u) + c)];
//#else
    return w_hd[r * (D / 32u) + c];
//#endif
}
fn hd_p(r: u32, c: u32) -> vec4<u32> {
//#if HEAD_W8
    return w_hd[2u * (r * (D / 32u) + c) + 1u];
//#else
    return vec4<u32>(0u);
//#endif
}
fn hd_s(r: u32, c: u32) -> vec2<f32> {
//#if HEAD_W8
    return vec2<f32>(f32(s_hd[r * (D / 32u) + c]), 0.0);
//#else
    let gi = r * (D / GS) + (c * 32u) / GS;
//#if HEAD_OFFSETS
    return vec2<f32>(f32(s_hd[gi]), o_hd[gi]);
//#else
    return vec2<f32>(f32(s_hd[gi]), 0.0);
//#endif
//#endif
}

// One loaded chunk · the f32 activations in xf.
fn hd_chunk(c: u32, q: vec4<u32>, p: vec4<u32>, so: vec2<f32>) -> f32 {
    let n = D / 32u;   // xf holds vec4 j of chunk c at j·n + c (lanes on neighbouring chunks: no bank conflicts)
    let x0 = v4_get(c); let x1 = v4_get(n + c); let x2 = v4_get(2u * n + c); let x3 = v4_get(3u * n + c);
    let x4 = v4_get(4u * n + c); let x5 = v4_get(5u * n + c); let x6 = v4_get(6u * n + c); let x7 = v4_get(7u * n + c);
//#if HEAD_W8
    return so.x * ((fdot8w(q.x, q.y, x0, x1) + fdot8w(q.z, q.w, x2, x3)) + (fdot8w(p.x, p.y, x4, x5) + fdot8w(p.z, p.w, x6, x7)));
//#else
    let xs4 = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));
    let xsum = xs4.x + xs4.y + xs4.z + xs4.w;
    let d = (dot8(q.x, x0, x1) + dot8(q.y, x2, x3)) + (dot8(q.z, x4, x5) + dot8(q.w, x6, x7));
    return so.x * (16.0 * d - 24.0 * xsum) + so.y * xsum;
//#endif
}

// This lane's part of lm_head row r: batches of 4 chunks' loads (8 when UNROLL ≥ 8).
fn dot_hd(r: u32, lane: u32) -> f32 {
    let nch = D / 32u;
    var a0 = 0.0;
    var a1 = 0.0;
    var c = lane;
    if (UNROLL >= 8u) {
        for (; c + 7u * TPR_hd < nch; c += 8u * TPR_hd) {
            let q0 = hd_q(r, c); let q1 = hd_q(r, c + TPR_hd); let q2 = hd_q(r, c + 2u * TPR_hd); let q3 = hd_q(r, c + 3u * TPR_hd);
            let q4 = hd_q(r, c + 4u * TPR_hd); let q5 = hd_q(r, c + 5u * TPR_hd); let q6 = hd_q(r, c + 6u * TPR_hd); let q7 = hd_q(r, c + 7u * TPR_hd);
            let p0 = hd_p(r, c); let p1 = hd_p(r, c + TPR_hd); let p2 = hd_p(r, c + 2u * TPR_hd); let p3 = hd_p(r, c + 3u * TPR_hd);
            let p4 = hd_p(r, c + 4u * TPR_hd); let p5 = hd_p(r, c + 5u * TPR_hd); let p6 = hd_p(r, c + 6u * TPR_hd); let p7 = hd_p(r, c + 7u * TPR_hd);
            let s0 = hd_s(r, c); let s1 = hd_s(r, c + TPR_hd); let s2 = hd_s(r, c + 2u * TPR_hd); let s3 = hd_s(r, c + 3u * TPR_hd);
            let s4 = hd_s(r, c + 4u * TPR_hd); let s5 = hd_s(r, c + 5u * TPR_hd); let s6 = hd_s(r, c + 6u * TPR_hd); let s7 = hd_s(r, c + 7u * TPR_hd);
            a0 += (hd_chunk(c, q0, p0, s0) + hd_chunk(c + TPR_hd, q1, p1, s1)) + (hd_chunk(c + 2u * TPR_hd, q2, p2, s2) + hd_chunk(c + 3u * TPR_hd, q3, p3, s3));
            a1 += (hd_chunk(c + 4u * TPR_hd, q4, p4, s4) + hd_chunk(c + 5u * TPR_hd, q5, p5, s5)) + (hd_chunk(c + 6u * TPR_hd, q6, p6, s6) + hd_chunk(c + 7u * TPR_hd, q7, p7, s7));
        }
    }
    for (; c + 3u * TPR_hd < nch; c += 4u * TPR_hd) {
        let q0 = hd_q(r, c); let q1 = hd_q(r, c + TPR_hd); let q2 = hd_q(r, c + 2u * TPR_hd); let q3 = hd_q(r, c + 3u * TPR_hd);
        let p0 = hd_p(r, c); let p1 = hd_p(r, c + TPR_hd); let p2 = hd_p(r, c + 2u * TPR_hd); let p3 = hd_p(r, c + 3u * TPR_hd);
        let s0 = hd_s(r, c); let s1 = hd_s(r, c + TPR_hd); let s2 = hd_s(r, c + 2u * TPR_hd); let s3 = hd_s(r, c + 3u * TPR_hd);
        a0 += hd_chunk(c, q0, p0, s0) + hd_chunk(c + TPR_hd, q1, p1, s1);
        a1 += hd_chunk(c + 2u * TPR_hd, q2, p2, s2) + hd_chunk(c + 3u * TPR_hd, q3, p3, s3);
    }
    for (; c < nch; c += TPR_hd) { a0 += hd_chunk(c, hd_q(r, c), hd_p(r, c), hd_s(r, c)); }
    return a0 + a1;
}

// The tpr lanes' parts of each row of a pass summed; valid in lane 0 of each row (lid % tpr == 0).
//#if SG_ROWS
// tpr ≤ the subgroup size: a row's lanes are in one subgroup, so no workgroup barrier.
fn row_sum(acc: f32, lid: u32, sgs: u32, tpr: u32) -> f32 {
    var a = acc;
    for (var o = tpr / 2u; o > 0u; o /= 2u) { a += subgroupShuffleXor(a, o); }
    return a;
}
//#else
fn row_sum(acc: f32, lid: u32, sgs: u32, tpr: u32) -> f32 {
    gred[lid] = acc;
    workgroupBarrier();
    var s = 0.0;
    if (lid % tpr == 0u) {
        for (var i = 0u; i < tpr; i++) { s += gred[lid + i]; }
    }
    workgroupBarrier();
    return s;
}
//#endif

// ---- the phases -------------------------------------------------------------------------

fn phase_qkv(l: u32, w: u32, nw: u32, lid: u32, sgs: u32) {
    let units = (QKVD + RPW_qkv - 1u) / RPW_qkv;
    if (w >= units) { return; }
    norm_q8(l * D, l == 0u, lid, sgs);
    if (l == 0u && w == 0u) {   // the residual stream starts as the embedding (read from phase 2 on)
        for (var i = lid; i < D4; i += WG) {
            let v = vec4<f32>(emb[S.token * D4 + i]);
            h[4u * i] = v.x; h[4u * i + 1u] = v.y; h[4u * i + 2u] = v.z; h[4u * i + 3u] = v.w;
        }
    }
    for (var u = w; u < units; u += nw) {
        let row = u * RPW_qkv + lid / TPR_qkv;
        var acc = 0.0;
        if (row < QKVD) { acc = dot_qkv(l * QKVD + row, D, lid % TPR_qkv); }
        let s = row_sum(acc, lid, sgs, TPR_qkv);
        if (lid % TPR_qkv == 0u && row < QKVD) {
            var y = s;
//#if QKV_BIAS
            y += b_qkv[l * QKVD + row];
//#endif
            qkv[row] = y;
        }
    }
}

// Query head hh (scaled) into qs; when `own`, also key head j into kf and value head j into vf.
fn rope_head(l: u32, hh: u32, j: u32, own: bool, lid: u32, sgs: u32) {
    let half = HD / 2u;
    let qo = hh * HD;
    let ko = QD + j * HD;
    var rq = 1.0;
    var rk = 1.0;
//#if QK_NORM
    let qn = 2u * NL * D + D + l * HD;
    let kn = qn + NL * HD;
    var sq = 0.0;
    var sk = 0.0;
    for (var i = lid; i < HD; i += WG) { sq += qkv[qo + i] * qkv[qo + i]; sk += qkv[ko + i] * qkv[ko + i]; }
    rq = inv_rms(wg_sum(sq, lid, sgs), HD, EPS);
    rk = inv_rms(wg_sum(sk, lid, sgs), HD, EPS);
//#endif
    for (var i = lid; i < half; i += WG) {
        var qa = qkv[qo + i] * rq;
        var qb = qkv[qo + i + half] * rq;
        var ka = qkv[ko + i] * rk;
        var kb = qkv[ko + i + half] * rk;
//#if QK_NORM
        qa *= nrm[qn + i]; qb *= nrm[qn + i + half]; ka *= nrm[kn + i]; kb *= nrm[kn + i + half];
//#endif
        let c = cs[S.pos * half + i];
        let q2 = rope(qa, qb, c);
        f_put(A_QF, i, q2.x);
        f_put(A_QF, i + half, q2.y);
        if (own) {
            let k2 = rope(ka, kb, c);
            f_put(A_KF, i, k2.x);
            f_put(A_KF, i + half, k2.y);
        }
    }
    let vo = QD + NKV * HD + j * HD;
    for (var i = lid; i < HD4; i += WG) {
        if (own) { v4_put(A_VF + i, vec4<f32>(qkv[vo + 4u * i], qkv[vo + 4u * i + 1u], qkv[vo + 4u * i + 2u], qkv[vo + 4u * i + 3u])); }
    }
    workgroupBarrier();
    for (var i = lid; i < HD4; i += WG) {
        v4_put(A_QS + i, v4_get(A_QF + i) * inverseSqrt(f32(HD)));
    }
    workgroupBarrier();
}

// Key / value vec4 i of position t of kv head j in layer l (this token's from workgroup memory).
fn key4(l: u32, t: u32, j: u32, i: u32) -> vec4<f32> {
    if (t == S.pos) { return v4_get(A_KF + i); }
    return vec4<f32>(kc[l * CSTRIDE + (t * NKV + j) * HD4 + i]);
}
fn value4(l: u32, t: u32, j: u32, i: u32) -> vec4<f32> {
    if (t == S.pos) { return v4_get(A_VF + i); }
    return vec4<f32>(vc[l * CSTRIDE + (t * NKV + j) * HD4 + i]);
}

fn phase_attention(l: u32, w: u32, nw: u32, lid: u32, sgs: u32) {
    let units = NH * S.nb;
    for (var u = w; u < units; u += nw) {
        let hh = u % NH;
        let blk = u / NH;
        let j = hh / (NH / NKV);
        let t0 = blk * BLOCK;
        let t1 = min(t0 + BLOCK, S.pos + 1u);
        let own = t1 == S.pos + 1u;       // this block holds the new token
        rope_head(l, hh, j, own, lid, sgs);
        if (own && hh % (NH / NKV) == 0u) {   // one cache writer per key/value head
            for (var i = lid; i < HD4; i += WG) {
                let ci = l * CSTRIDE + (S.pos * NKV + j) * HD4 + i;
                kc[ci] = vec4<cache_t>(key4(l, S.pos, j, i));
                vc[ci] = vec4<cache_t>(v4_get(A_VF + i));
            }
        }
        var mx = -3.0e38;
        for (var t = t0 + lid; t < t1; t += WG) {
            var s = vec4<f32>(0.0);
            for (var i = 0u; i < HD4; i++) { s = fma(v4_get(A_QS + i), key4(l, t, j, i), s); }
            let st = s.x + s.y + s.z + s.w;
            f_put(A_SB, t - t0, st);
            mx = max(mx, st);
        }
        let m = wg_max(mx, lid, sgs);
        var sum = 0.0;
        for (var t = t0 + lid; t < t1; t += WG) {
            let p = exp(f_get(A_SB, t - t0) - m);
            f_put(A_SB, t - t0, p);
            sum += p;
        }
        let total = wg_sum(sum, lid, sgs);   // (its barrier also publishes sb)
        let ng = WG / HD4;
        var a = vec4<f32>(0.0);
        for (var t = t0 + lid / HD4; t < t1; t += ng) { a = fma(vec4<f32>(f_get(A_SB, t - t0)), value4(l, t, j, lid % HD4), a); }
        v4_put(lid, a);
        workgroupBarrier();
        let base = (hh * NBMAX + blk) * (HD + 2u);
        if (lid < HD4) {
            var o = v4_get(lid);
            for (var g = 1u; g < ng; g++) { o += v4_get(g * HD4 + lid); }
            part[base + 4u * lid] = o.x; part[base + 4u * lid + 1u] = o.y;
            part[base + 4u * lid + 2u] = o.z; part[base + 4u * lid + 3u] = o.w;
        }
        if (lid == 0u) { part[base + HD] = m; part[base + HD + 1u] = total; }
        workgroupBarrier();
    }
}

// Combine weights of the partials: wts[hh · NBMAX + b] = exp(m_b − M) / Σ_b' exp(m_b' − M) l_b'.
fn combine_weights(lid: u32) {
    for (var hh = lid; hh < NH; hh += WG) {
        var m = -3.0e38;
        for (var b = 0u; b < S.nb; b++) { m = max(m, part[(hh * NBMAX + b) * (HD + 2u) + HD]); }
        var den = 0.0;
        for (var b = 0u; b < S.nb; b++) {
            let base = (hh * NBMAX + b) * (HD + 2u);
            den += exp(part[base + HD] - m) * part[base + HD + 1u];
        }
        for (var b = 0u; b < S.nb; b++) {
            f_put(W0, hh * NBMAX + b, exp(part[(hh * NBMAX + b) * (HD + 2u) + HD] - m) / den);
        }
    }
    workgroupBarrier();
}

// Attention output elements e .. e+3 (of QD; one head: HD % 4 == 0), the partials combined.
fn att4(e: u32) -> vec4<f32> {
    let hh = e / HD;
    var o = vec4<f32>(0.0);
    for (var b = 0u; b < S.nb; b++) {
        let base = (hh * NBMAX + b) * (HD + 2u) + e % HD;
        o += f_get(W0, hh * NBMAX + b) * vec4<f32>(part[base], part[base + 1u], part[base + 2u], part[base + 3u]);
    }
    return o;
}

fn phase_o(l: u32, w: u32, nw: u32, lid: u32, sgs: u32) {
    let units = (D + RPW_o - 1u) / RPW_o;
    if (w >= units) { return; }
    combine_weights(lid);
    for (var b = lid; b < QD / 32u; b += WG) {   // the attention output → int8
        let e = 32u * b;
        put_q8(b, q8_block(att4(e), att4(e + 4u), att4(e + 8u), att4(e + 12u), att4(e + 16u), att4(e + 20u),
                           att4(e + 24u), att4(e + 28u)));
    }
    workgroupBarrier();
    for (var u = w; u < units; u += nw) {
        let row = u * RPW_o + lid / TPR_o;
        var acc = 0.0;
        if (row < D) { acc = dot_o(l * D + row, QD, lid % TPR_o); }
        let s = row_sum(acc, lid, sgs, TPR_o);
        if (lid % TPR_o == 0u && row < D) {
            var y = h[row] + s;
//#if O_BIAS
            y += b_o[l * D + row];
//#endif
            h[row] = y;
        }
    }
}

fn phase_up(l: u32, w: u32, nw: u32, lid: u32, sgs: u32) {
    let units = FF / 32u;   // blocks of 64 rows: 32 gate rows, then the 32 up rows they pair with
    if (w >= units) { return; }
    norm_q8(NL * D + l * D, false, lid, sgs);
    for (var u = w; u < units; u += nw) {
        for (var p = 0u; p < 64u; p += RPW_gu) {   // (RPW_gu > 64: the lanes of rows 64 .. RPW_gu idle)
            let r = p + lid / TPR_gu;
            var acc = 0.0;
            if (r < 64u) { acc = dot_gu(l * 2u * FF + 64u * u + r, D, lid % TPR_gu); }
            let s = row_sum(acc, lid, sgs, TPR_gu);
            if (lid % TPR_gu == 0u && r < 64u) { ys[r] = s; }
        }
        let q = silu_q8(lid);
        if (lid == 0u) {
            aq[2u * u] = q.w0;
            aq[2u * u + 1u] = q.w1;
            ad[u] = q.d;
        }
        workgroupBarrier();
    }
}

fn phase_down(l: u32, w: u32, nw: u32, lid: u32, sgs: u32) {
    let units = (D + RPW_dn - 1u) / RPW_dn;
    if (w >= units) { return; }
    for (var i = lid; i < FF / 16u; i += WG) { wsm[i] = aq[i]; }
    for (var i = lid; i < FF / 32u; i += WG) { xds_put(i, ad[i]); }
    workgroupBarrier();
    for (var u = w; u < units; u += nw) {
        let row = u * RPW_dn + lid / TPR_dn;
        var acc = 0.0;
        if (row < D) { acc = dot_dn(l * D + row, FF, lid % TPR_dn); }
        let s = row_sum(acc, lid, sgs, TPR_dn);
        if (lid % TPR_dn == 0u && row < D) { h[row] = h[row] + s; }
    }
}

fn phase_head(w: u32, nw: u32, lid: u32, sgs: u32) {
    let units = (V + RPW_hd - 1u) / RPW_hd;
    if (w >= units) { return; }
    let r = resid_inv_rms(false, lid, sgs);
    for (var i = lid; i < D4; i += WG) { v4_put((i % 8u) * (D / 32u) + i / 8u, normed4(i, r, 2u * NL * D, false)); }
    workgroupBarrier();
    for (var u = w; u < units; u += nw) {
        let row = u * RPW_hd + lid / TPR_hd;
        var acc = 0.0;
        if (row < V) { acc = dot_hd(row, lid % TPR_hd); }
        let s = row_sum(acc, lid, sgs, TPR_hd);
        if (lid % TPR_hd == 0u && row < V) { logits[row] = s; }
    }
}

fn run_phase(ph: u32, w: u32, nw: u32, lid: u32, sgs: u32) {
    if (ph == 5u * NL) { phase_head(w, nw, lid, sgs); return; }
    let l = ph / 5u;
    switch (ph % 5u) {
        case 0u: { phase_qkv(l, w, nw, lid, sgs); }
        case 1u: { phase_attention(l, w, nw, lid, sgs); }
        case 2u: { phase_o(l, w, nw, lid, sgs); }
        case 3u: { phase_up(l, w, nw, lid, sgs); }
        default: { phase_down(l, w, nw, lid, sgs); }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
//#if SUBGROUPS
        @builtin(subgroup_size) sgs: u32,
//#endif
        ) {
//#if !SUBGROUPS
    let sgs = 1u;
//#endif
    let first = R.first;
//#if PERSISTENT
    if (first == 0xFFFFFFFFu) { discover(lid); return; }
//#endif
    for (var ph = first; ph < R.last; ph++) {
//#if PERSISTENT
        if (ph > first && !grid_sync(lid, (ph - first) * nwg.x)) { return; }
//#endif
        run_phase(ph, wid.x, nwg.x, lid, sgs);
    }
}
