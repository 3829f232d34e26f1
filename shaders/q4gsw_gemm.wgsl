// q4gsw GEMM for prefill: y(M, N) = x(M, K) · W(N, K)ᵀ, W in q4gsw (see llmgpu/quant.py).
//
// Types: act_t, scale_t (f16 | f32), mul_t (f32, or f16 for the f16 variant: the type of the
// staged tiles and of the products, see below). Overrides (below): BM, BN (output tile;
// BK = 32, one u32×4 of every weight row per step), TM, TN (accumulators per thread, multiples
// of 4), WG = (BM/TM)·(BN/TN), GS, RESIDUAL. Flags: HAS_OFFSETS, HAS_BIAS (as in
// q4gsw_gemv.wgsl). llmgpu/ops/codegen.py generates the //@ lines, so that every accumulator
// and prefetch register is a named register, never an indexed array that a compiler might
// spill; it needs BM·8 and BN·4 to be multiples of WG (whole tiles per invocation).
//
// Bindings (group 0):
//   x    read     array<vec4<act_t>>  (M, K/4)
//   P, w, sc, off, y, bias: as gemm_common.wgsl lists them (shared with the other GEMM)
//
// Flag LANES: the CPU adapters' kernel (below, before the tiled one).
// Each step stages a BM×32 slice of x and a BN×32 slice of dequantized W (scale and offset
// applied in f32, then rounded to mul_t) in workgroup memory, k-major, then every thread
// accumulates a TM×TN block with vec4 FMAs. Thread (tx, ty) owns rows 4·(ty + i·BM/TM) + 0..3
// and columns 4·(tx + j·BN/TN) + 0..3, so neighbouring threads read neighbouring vec4s.
// The f16 variant (mul_t = f16, where the adapter has shader-f16) sums the products of one
// 32-wide k tile in vec4<f16> registers and adds them into the f32 accumulators after each
// tile, so f16 rounding never sees more than 32 terms.

@group(0) @binding(1) var<storage, read> x: array<vec4<act_t>>;

override BM: u32 = 64u;
override BN: u32 = 64u;
override TM: u32 = 4u;
override TN: u32 = 4u;
override WG: u32 = 256u;      // (BM / TM) · (BN / TN)
override GS: u32 = 32u;
override RESIDUAL: bool = false;
//#include gemm_common
//#if LANES
// CPU adapters (flag LANES; f32): one subgroup per workgroup (WG = its size S, BM = TM,
// BN = S·TN) and no workgroup memory. Invocation l owns the TN output columns nb .. nb+TN−1 and
// dequantizes their weights itself; of the BM activation rows it loads rows m0 + l + S·t, four
// k at a time, and every invocation takes each row's values from its owner with
// subgroupBroadcast at a constant lane. lavapipe runs a subgroup as one SIMD loop over its
// invocations: there a broadcast is a register shuffle, while each workgroup-memory load whose
// address differs between invocations (the tiled kernel below) is a loop over the lanes.
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wid.y * BM;
    let nb = wid.x * BN + lane * TN;
//@LANES_DECL
    for (var k4 = 0u; k4 < P.K / 4u; k4++) {
        let q = k4 % 8u;              // k = 4·k4: quad q of the 32-wide chunk k4 / 8
        if (q == 0u) {
            let c = k4 / 8u;
            let g = (c * 32u) / GS;
//@LANES_LOADW
        }
//@LANES_LOADX
        let sh = (q % 2u) * 16u;      // nibbles 4·(q % 2) .. of word q / 2
//@LANES_MAC
    }
//@LANES_STORE
}
//#else
const BK: u32 = 32u;
override TX: u32 = BN / TN;   // threads along N
override TY: u32 = BM / TM;   // threads along M
var<workgroup> As: array<vec4<mul_t>, BK * BM / 4u>;   // [k][m/4]
var<workgroup> Ws: array<vec4<mul_t>, BK * BN / 4u>;   // [k][n/4]


// Global → registers: activation vec4 `idx` of the BM×32 tile at k0 (zero past row M).
fn load_a(m0: u32, k0: u32, idx: u32) -> vec4<f32> {
    let m = idx / 8u;
    if (m0 + m >= P.M) { return vec4<f32>(0.0); }
    return vec4<f32>(x[(m0 + m) * (P.K / 4u) + k0 / 4u + idx % 8u]);
}
// Global → registers: weight word `idx` of the BN×32 tile at k0, with its scale and offset.
fn load_w(n0: u32, k0: u32, idx: u32) -> vec3<u32> {
    let n = idx % BN;
    if (n0 + n >= P.N) { return vec3<u32>(0x88888888u, 0u, 0u); }   // q = 0, s = o = 0
    let g = (n0 + n) * (P.K / GS) + k0 / GS;
    var o = 0.0;
//#if HAS_OFFSETS
    o = off[g];
//#endif
    return vec3<u32>(w[(n0 + n) * (P.K / 32u) + k0 / 32u][idx / BN], bitcast<u32>(f32(sc[g])), bitcast<u32>(o));
}
// Registers → workgroup memory, transposed to As[k][m].
fn store_a(idx: u32, v: vec4<f32>) {
    let m = idx / 8u;
    let base = ((idx % 8u) * 4u) * (BM / 4u) + m / 4u;
    let c = m % 4u;
    As[base][c] = mul_t(v.x);
    As[base + BM / 4u][c] = mul_t(v.y);
    As[base + 2u * BM / 4u][c] = mul_t(v.z);
    As[base + 3u * BM / 4u][c] = mul_t(v.w);
}
// Registers → workgroup memory: nibble e becomes the float 1 + n/16 (no int→float
// conversion), then q·s + o = (1 + n/16)·16s + (o − 24s), into Ws[k][n].
fn store_w(idx: u32, r: vec3<u32>) {
    let n = idx % BN;
    let s = bitcast<f32>(r.y);
    let s16 = 16.0 * s;
    let o24 = bitcast<f32>(r.z) - 24.0 * s;
    let base = ((idx / BN) * 8u) * (BN / 4u) + n / 4u;
    let c = n % 4u;
    for (var e = 0u; e < 8u; e++) {
        let f = bitcast<f32>((((r.x >> (4u * e)) & 0xFu) << 19u) | 0x3F800000u);
        Ws[base + e * (BN / 4u)][c] = mul_t(fma(f, s16, o24));
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let K = P.K;
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let tx = lid % TX;
    let ty = lid / TX;
//@DECL
    // The next tile's global loads are issued before the current tile's FMAs (register
    // prefetch), so their latency hides behind arithmetic.
//@LOAD0
//@STORE_TILE
    workgroupBarrier();
    for (var k0 = 0u; k0 < K; k0 += BK) {
        let kn = k0 + BK;
        if (kn < K) {
//@LOADN
        }
//@MAC
        workgroupBarrier();
        if (kn < K) {
//@STORE_TILE
        }
        workgroupBarrier();
    }
//@STORE
}
//#endif
