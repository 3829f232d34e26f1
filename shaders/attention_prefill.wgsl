// Prefill attention: causal grouped-query flash attention of M new queries over the KV cache,
// which rope_kv.wgsl has already filled for these positions. No score scratch: the softmax
// runs online over blocks of keys (per query row a running maximum and sum; the output so far
// is rescaled whenever the maximum grows), so memory does not grow with the context.
//
// Types: cache_t (f16 | f32). Overrides: D4 = hd/4; TX, TY (powers of two), WG = TX·TY.
// Flag: SUBGROUPS. llmgpu/ops/codegen.py (flash_snippets) writes the //@ lines: NJ = ⌈D4/TX⌉
// named vec4 output accumulators per query row of a thread and NL = ⌈BC·D4/WG⌉ named prefetch
// registers each for keys and values, never indexed arrays.
// Bindings (group 0):
//   P    uniform  M, n_heads, n_kv, hd, max_seq, scale (f32)
//   S    uniform  pos0 — cache position of query 0
//   q    read     array<vec4<f32>>      (M, n_heads, hd/4)     rotated queries (rope_kv.wgsl)
//   kc   read     array<vec4<cache_t>>  (max_seq, n_kv, hd/4)
//   vc   read     array<vec4<cache_t>>  (max_seq, n_kv, hd/4)
//   out  rw       array<vec4<f32>>      (M, n_heads, hd/4)
//
// Tiling. The G = n_heads / n_kv query heads that share key/value head j are stacked as rows:
// row R = m·G + g is query m of head j·G + g, so one staged key block serves all of them.
// Workgroup (t, j) owns rows t·BR .. t·BR + BR − 1 (BR = 4·TY) and walks blocks of BC = 4·TX
// cache positions, up to the causal end of its last row. Thread (tx, ty) owns the rows
// 4·ty + 0..3 throughout; per block:
//   1. the block's keys, loaded into registers during the last block's p·V, to workgroup memory
//      as f32 (zero past the tile's last position); its values start loading;
//   2. scores of its rows at positions k0 + tx + TX·c (c < 4), from Qs and KV, masked causally;
//   3. the rows' block maxima over the TX threads of a row (subgroup shuffles, then workgroup
//      memory where a row spans subgroups); α = exp2(old max − new max); p = exp2(s − max);
//   4. p to Ps (for each position, the thread's 4 rows as one vec4), values into KV; the next
//      block's keys start loading;
//   5. output ·= α, += p·V, for vec4 columns tx + TX·jj of the head (jj < NJ).
// Each thread's part of the row sums is rescaled the same way and added up at the end.
// Queries are staged times scale·log2(e), so that exp2 gives the softmax's exp.
// Workgroup memory: 16·(BR + BC)·(D4 + 1) + 16·BC·(TY + 1) + 4·BR·TX bytes (llmgpu.ops.flash_storage).

override D4: u32 = 16u;
override TX: u32 = 16u;
override TY: u32 = 8u;
override WG: u32 = 128u;          // TX · TY
override BR: u32 = 4u * TY;       // rows per workgroup
override BC: u32 = 4u * TX;       // cache positions per block
override RS: u32 = D4 + 1u;       // row stride of Qs and KV (vec4s): padding against bank conflicts
override PS: u32 = TY + 1u;       // position stride of Ps (vec4s)
const NEG: f32 = -3.0e38;         // a masked score
const LOG2E: f32 = 1.4426950408889634;

struct Params { M: u32, n_heads: u32, n_kv: u32, hd: u32, max_seq: u32, scale: f32 }
struct Step { pos0: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: Step;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kc: array<vec4<cache_t>>;
@group(0) @binding(4) var<storage, read> vc: array<vec4<cache_t>>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

var<workgroup> Qs: array<vec4<f32>, BR * RS>;   // [row][d4], scaled queries
var<workgroup> KV: array<vec4<f32>, BC * RS>;   // [position][d4]: the block's keys, then its values
var<workgroup> Ps: array<vec4<f32>, BC * PS>;   // [position][ty]: p of rows 4·ty + 0..3
var<workgroup> red: array<f32, BR * TX>;        // [row][tx]: partial row maxima / sums

// Index of row R's query vector in q and out: query m = R / G, head j·G + R % G.
fn qrow(R: u32, j: u32, G: u32) -> u32 {
    return (R / G) * P.n_heads + j * G + R % G;
}

// Queries of rows r0 .. r0 + BR − 1 into Qs, scaled; zero past the last row.
fn stage_queries(r0: u32, j: u32, G: u32, lid: u32) {
    let s = P.scale * LOG2E;
    for (var i = lid; i < BR * D4; i += WG) {
        let r = i / D4;
        let d = i % D4;
        var x = vec4<f32>(0.0);
        if (r0 + r < P.M * G) { x = q[qrow(r0 + r, j, G) * D4 + d] * s; }
        Qs[r * RS + d] = x;
    }
}

// Global → registers: vec4 `idx` of the keys (or values) of key head j at positions
// k0 .. k0 + BC − 1, position-major; zero from kend on (a zero value times p = 0 stays zero,
// where an unwritten cache entry might be NaN) and past the block.
fn load_kv(k0: u32, kend: u32, j: u32, idx: u32, values: bool) -> vec4<cache_t> {
    let c = idx / D4;
    if (idx >= BC * D4 || k0 + c >= kend) { return vec4<cache_t>(0.0); }
    let gi = ((k0 + c) * P.n_kv + j) * D4 + idx % D4;
    if (values) { return vc[gi]; }
    return kc[gi];
}
// Registers → workgroup memory, as f32 with padded rows.
fn store_kv(idx: u32, x: vec4<cache_t>) {
    if (idx < BC * D4) { KV[(idx / D4) * RS + idx % D4] = vec4<f32>(x); }
}

// Max (or sum) of v over the TX threads that share rows 4·ty + 0..3 (component i: row 4·ty + i),
// in every one of them: shuffles within a subgroup, then workgroup memory across subgroups.
// Call from uniform control flow; it waits at a workgroup barrier.
fn row_reduce(v: vec4<f32>, tx: u32, ty: u32, sgs: u32, is_max: bool) -> vec4<f32> {
    var x = v;
    let w = min(TX, sgs);   // consecutive lanes of a row within one subgroup
//#if SUBGROUPS
    for (var o = 1u; o < w; o *= 2u) {
        let y = subgroupShuffleXor(x, o);
        x = select(x + y, max(x, y), is_max);
    }
//#endif
    let base = 4u * ty * TX + tx;
    if (w < TX) {
        for (var i = 0u; i < 4u; i++) { red[base + i * TX] = x[i]; }
    }
    workgroupBarrier();
    if (w < TX) {
        for (var i = 0u; i < 4u; i++) {
            let row = (4u * ty + i) * TX;
            var t = red[row];
            for (var k = w; k < TX; k += w) {
                if (is_max) { t = max(t, red[row + k]); } else { t += red[row + k]; }
            }
            x[i] = t;
        }
    }
    return x;
}

// s + (q·k over 4 components) for 4 keys, given component by component: FMAs only.
fn qk(a: vec4<f32>, kx: vec4<f32>, ky: vec4<f32>, kz: vec4<f32>, kw: vec4<f32>, s: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(a.w), kw, fma(vec4<f32>(a.z), kz, fma(vec4<f32>(a.y), ky, fma(vec4<f32>(a.x), kx, s))));
}

fn max4(v: vec4<f32>) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }
fn sum4(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }

// Output vec4 d4 of row R (skipped past the last row or past the head).
fn put(R: u32, d4: u32, j: u32, G: u32, v: vec4<f32>) {
    if (R < P.M * G && d4 < D4) { out[qrow(R, j, G) * D4 + d4] = v; }
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
    let G = P.n_heads / P.n_kv;
    let j = wid.y;
    let r0 = wid.x * BR;
    let tx = lid % TX;
    let ty = lid / TX;
    stage_queries(r0, j, G, lid);
    let last = min(r0 + BR, P.M * G) - 1u;       // the tile's last row
    let kend = S.pos0 + last / G + 1u;           // positions it sees: 0 .. kend − 1
    let rr = r0 + 4u * ty + vec4<u32>(0u, 1u, 2u, 3u);
    let lim = vec4<u32>(S.pos0) + min(rr, vec4<u32>(last)) / G;   // each row's last position
    let cols = tx + TX * vec4<u32>(0u, 1u, 2u, 3u);
    var mrow = vec4<f32>(NEG);   // running maxima of the rows
    var lsum = vec4<f32>(0.0);   // this thread's part of their running sums
//@DECL
    var kl = 0u;          // the block whose keys are being loaded into registers
//@LOAD_K
    for (var k0 = 0u; k0 < kend; k0 += BC) {
//@STORE_K
        workgroupBarrier();
//@LOAD_V
        var s0 = vec4<f32>(0.0);   // row 4·ty + i: s_i at positions k0 + cols
        var s1 = vec4<f32>(0.0);
        var s2 = vec4<f32>(0.0);
        var s3 = vec4<f32>(0.0);
        for (var d = 0u; d < D4; d++) {
            let a0 = Qs[(4u * ty) * RS + d];
            let a1 = Qs[(4u * ty + 1u) * RS + d];
            let a2 = Qs[(4u * ty + 2u) * RS + d];
            let a3 = Qs[(4u * ty + 3u) * RS + d];
            let b0 = KV[cols.x * RS + d];
            let b1 = KV[cols.y * RS + d];
            let b2 = KV[cols.z * RS + d];
            let b3 = KV[cols.w * RS + d];
            let kx = vec4<f32>(b0.x, b1.x, b2.x, b3.x);   // component x of the 4 keys, ...
            let ky = vec4<f32>(b0.y, b1.y, b2.y, b3.y);
            let kz = vec4<f32>(b0.z, b1.z, b2.z, b3.z);
            let kw = vec4<f32>(b0.w, b1.w, b2.w, b3.w);
            s0 = qk(a0, kx, ky, kz, kw, s0);
            s1 = qk(a1, kx, ky, kz, kw, s1);
            s2 = qk(a2, kx, ky, kz, kw, s2);
            s3 = qk(a3, kx, ky, kz, kw, s3);
        }
        let kp = k0 + cols;
        s0 = select(s0, vec4<f32>(NEG), kp > vec4<u32>(lim.x));
        s1 = select(s1, vec4<f32>(NEG), kp > vec4<u32>(lim.y));
        s2 = select(s2, vec4<f32>(NEG), kp > vec4<u32>(lim.z));
        s3 = select(s3, vec4<f32>(NEG), kp > vec4<u32>(lim.w));
        // (the barrier inside also ends every thread's reads of the keys)
        let bmax = row_reduce(vec4<f32>(max4(s0), max4(s1), max4(s2), max4(s3)), tx, ty, sgs, true);
        let mnew = max(mrow, bmax);
        let alpha = exp2(mrow - mnew);
        mrow = mnew;
        let p0 = exp2(s0 - mnew.x);
        let p1 = exp2(s1 - mnew.y);
        let p2 = exp2(s2 - mnew.z);
        let p3 = exp2(s3 - mnew.w);
        lsum = lsum * alpha + vec4<f32>(sum4(p0), sum4(p1), sum4(p2), sum4(p3));
        Ps[cols.x * PS + ty] = vec4<f32>(p0.x, p1.x, p2.x, p3.x);
        Ps[cols.y * PS + ty] = vec4<f32>(p0.y, p1.y, p2.y, p3.y);
        Ps[cols.z * PS + ty] = vec4<f32>(p0.z, p1.z, p2.z, p3.z);
        Ps[cols.w * PS + ty] = vec4<f32>(p0.w, p1.w, p2.w, p3.w);
//@STORE_V
        kl = k0 + BC;
//@LOAD_K
        workgroupBarrier();
//@RESCALE
        for (var c = 0u; c < BC; c++) {
            let a = Ps[c * PS + ty];
//@PV
        }
        workgroupBarrier();   // KV and Ps are rewritten by the next block
    }
    let l = row_reduce(lsum, tx, ty, sgs, false);
//@STORE
}
