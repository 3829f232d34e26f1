// q4gsw GEMM on packed int8 dot products, for prefill: y(M, N) = x(M, K) · W(N, K)ᵀ with x
// quantized to int8 per block of 32 values (quantize_q8.wgsl: x ≈ d·q) and W in q4gsw
// (llmgpu/quant.py: w = s·(n − 8) + o, n the stored nibble). Per block b of 32 values along K,
//   Σ_k x_k·w_k = d_b·s_g·(I_b − 8·Q_b) + o_g·d_b·Q_b,   I_b = Σ_k q_k·n_k,  Q_b = Σ_k q_k,
// with I_b summed exactly in i32 by dot4I8Packed (the nibbles 0..15 are valid int8 bytes, and
// the activations' even/odd byte order matches the nibble masks: see q4_dot.wgsl) and the block
// result added to an f32 accumulator. The i32 → f32 step adds the integer to the bits of
// 1.5·2²³ (exact for |I − 8Q| < 2²², here ≤ 92 000) instead of a conversion instruction.
//
// Types: act_t (y), scale_t (f16 | f32). Overrides (below): BM, BN (output tile), KB (blocks of
// 32 along K per step), TM, TN (outputs per invocation), WG = (BM/TM)·(BN/TN), GS, RESIDUAL,
// EXPAND (weights stored in workgroup memory as int8, 2 words per 8 values, instead of nibble
// words that every invocation unpacks). Flags: HAS_OFFSETS, HAS_BIAS. llmgpu/ops/codegen.py
// (gemm_i8_snippets) generates the //@ lines: named accumulator and prefetch registers.
//
// Bindings (group 0):
//   xq   read     array<vec4<u32>>    (M, K/16)  int8 activations, per 8 values the bytes of
//                                                 elements 0,2,4,6 then 1,3,5,7
//   xd   read     array<vec2<f32>>    (M, K/32)  (d, 8·Q) per block
//   P, w, sc, off, y, bias: as gemm_common.wgsl lists them (shared with the other GEMM)
//
// Each step stages KB blocks of BM activation rows and of BN weight rows in workgroup memory
// (the next step's are loaded into registers first, so their latency hides behind the dot
// products). Invocation (tx, ty) owns rows ty + i·BM/TM and columns tx + j·BN/TN: it keeps its
// TM rows' 32 activation bytes in registers and streams its TN columns' weights.

@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> xd: array<vec2<f32>>;

override BM: u32 = 64u;
override BN: u32 = 64u;
override KB: u32 = 2u;
override TM: u32 = 4u;
override TN: u32 = 4u;
override WG: u32 = 256u;       // (BM / TM) · (BN / TN)
override GS: u32 = 32u;
override RESIDUAL: bool = false;
//#include gemm_common
override EXPAND: bool = false;
override TX: u32 = BN / TN;    // invocations along N
override TY: u32 = BM / TM;    // invocations along M
override WW: u32 = select(1u, 2u, EXPAND);  // vec4<u32> per weight row and block in Wq
const M4: u32 = 0x0F0F0F0Fu;
const MAGIC: u32 = 0x4B400000u;  // the bits of 1.5·2²³: its float's unit is 1
// Workgroup memory, block-major: [kb][row]
var<workgroup> Aq: array<vec4<u32>, 2u * KB * BM>;   // [kb][m][2]: the 32 activation bytes
var<workgroup> Am: array<vec4<f32>, KB * BM>;        // [kb][m]: (d, bits of 1.5·2²³ − 8Q, d·Q, 0)
var<workgroup> Wq: array<vec4<u32>, WW * KB * BN>;   // [kb][n][WW]: 32 nibbles, or 8 int8 words
var<workgroup> Ws: array<vec2<f32>, KB * BN>;        // [kb][n]: (scale, offset) of the block's group

// Global → registers, for the step whose first block is b0. Item `idx` of each kind; past the
// tile's items, past row M or column N, or past the last block: zeros (scale 0, d 0).
fn load_a(m0: u32, b0: u32, idx: u32) -> vec4<u32> {      // BM·KB·2 items: row idx / 2KB
    let m = m0 + idx / (2u * KB);
    let p = idx % (2u * KB);
    if (idx >= 2u * KB * BM || m >= P.M || b0 + p / 2u >= P.K / 32u) { return vec4<u32>(0u); }
    return xq[m * (P.K / 16u) + 2u * b0 + p];
}
fn load_am(m0: u32, b0: u32, idx: u32) -> vec4<f32> {     // BM·KB items: row idx / KB
    let m = m0 + idx / KB;
    let b = b0 + idx % KB;
    if (idx >= KB * BM || m >= P.M || b >= P.K / 32u) { return vec4<f32>(0.0, bitcast<f32>(MAGIC), 0.0, 0.0); }
    let v = xd[m * (P.K / 32u) + b];
    return vec4<f32>(v.x, bitcast<f32>(MAGIC - u32(i32(v.y))), v.x * (v.y / 8.0), 0.0);
}
fn load_w(n0: u32, b0: u32, idx: u32) -> vec4<u32> {      // BN·KB items: row idx / KB
    let n = n0 + idx / KB;
    let b = b0 + idx % KB;
    if (idx >= KB * BN || n >= P.N || b >= P.K / 32u) { return vec4<u32>(0u); }
    return w[n * (P.K / 32u) + b];
}
fn load_ws(n0: u32, b0: u32, idx: u32) -> vec2<f32> {
    let n = n0 + idx / KB;
    let b = b0 + idx % KB;
    if (idx >= KB * BN || n >= P.N || b >= P.K / 32u) { return vec2<f32>(0.0); }
    let g = n * (P.K / GS) + b * 32u / GS;
    var o = 0.0;
//#if HAS_OFFSETS
    o = off[g];
//#endif
    return vec2<f32>(f32(sc[g]), o);
}
// Registers → workgroup memory (items past the tile are dropped).
fn store_a(idx: u32, v: vec4<u32>) {
    if (idx < 2u * KB * BM) {
        let m = idx / (2u * KB);
        let p = idx % (2u * KB);
        Aq[((p / 2u) * BM + m) * 2u + p % 2u] = v;
    }
}
fn store_am(idx: u32, v: vec4<f32>) {
    if (idx < KB * BM) { Am[(idx % KB) * BM + idx / KB] = v; }
}
// A block's 32 nibbles (4 words, low nibble first) as 8 int8 words in the order of the
// activation words they pair with: per 8 values, elements 0,2,4,6 then 1,3,5,7.
fn w_lo(q: vec4<u32>) -> vec4<u32> {   // values 0-15
    return vec4<u32>(q.x & M4, (q.x >> 4u) & M4, q.y & M4, (q.y >> 4u) & M4);
}
fn w_hi(q: vec4<u32>) -> vec4<u32> {   // values 16-31
    return vec4<u32>(q.z & M4, (q.z >> 4u) & M4, q.w & M4, (q.w >> 4u) & M4);
}
fn store_w(idx: u32, v: vec4<u32>) {
    if (idx < KB * BN) {
        let i = ((idx % KB) * BN + idx / KB) * WW;
        if (EXPAND) {
            Wq[i] = w_lo(v);
            Wq[i + 1u] = w_hi(v);
        } else {
            Wq[i] = v;
        }
    }
}
fn store_ws(idx: u32, v: vec2<f32>) {
    if (idx < KB * BN) { Ws[(idx % KB) * BN + idx / KB] = v; }
}

// One block's exact dot product: 32 activation bytes (a, b) with 8 int8 weight words (u, v).
fn idot(a: vec4<u32>, b: vec4<u32>, u: vec4<u32>, v: vec4<u32>) -> i32 {
    return dot4I8Packed(u.x, a.x) + dot4I8Packed(u.y, a.y) + dot4I8Packed(u.z, a.z) + dot4I8Packed(u.w, a.w)
         + dot4I8Packed(v.x, b.x) + dot4I8Packed(v.y, b.y) + dot4I8Packed(v.z, b.z) + dot4I8Packed(v.w, b.w);
}
// f32 of a block's (I − 8Q), from the row's MAGIC − 8Q bits (exact; see the header).
fn block_f32(mq: f32, i: i32) -> f32 {
    return bitcast<f32>(bitcast<u32>(mq) + bitcast<u32>(i)) - 12582912.0;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let nb = P.K / 32u;
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let tx = lid % TX;
    let ty = lid / TX;
//@DECL
//@LOAD0
//@STORE_TILE
    workgroupBarrier();
    for (var b0 = 0u; b0 < nb; b0 += KB) {
        let bn = b0 + KB;
        if (bn < nb) {
//@LOADN
        }
        for (var kb = 0u; kb < KB; kb++) {
            let ab = kb * BM + ty;
            let bb = kb * BN + tx;
//@MAC
        }
        workgroupBarrier();
        if (bn < nb) {
//@STORE_TILE
        }
        workgroupBarrier();
    }
//@STORE
}
