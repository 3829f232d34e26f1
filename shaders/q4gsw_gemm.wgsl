// q4gsw GEMM for prefill: y(M, N) = x(M, K) · W(N, K)ᵀ, W in q4gsw (see llmgpu/quant.py).
//
// Prepended by llmgpu.gpu.Device.pipeline:
//   alias act_t, scale_t        f16 | f32
//   const BM, BN, BK            output tile (BM × BN) and K step; BK in {16, 32} (divides GS)
//   const TM, TN                accumulators per thread (multiples of 4)
//   const WG = (BM/TM)·(BN/TN)  threads
//   const GS, HAS_OFFSETS, RESIDUAL   as in q4gsw_gemv.wgsl
//
// Bindings (group 0):
//   0 uniform  P: M, N (this slice's rows of W), K, ldy (row stride of y), n_off (first column)
//   1 storage  x   array<vec4<act_t>>  (M, K/4)
//   2 storage  w   array<u32>          (N, K/8)
//   3 storage  sc  array<scale_t>      (N, K/GS)
//   4 storage  off array<f32>          (N, K/GS)   (a dummy when !HAS_OFFSETS)
//   5 storage  y   array<act_t>        (M, ldy); this dispatch writes columns n_off .. n_off+N
//
// Each workgroup stages a BM×BK slice of x and a BN×BK slice of dequantized W (scale and
// offset applied) in workgroup memory as f32, k-major, then every thread accumulates a
// TM×TN block with vec4 FMAs. Thread (tx, ty) owns rows 4·(ty + i·BM/TM) + 0..3 and columns
// 4·(tx + j·BN/TN) + 0..3, so neighbouring threads read neighbouring vec4s.

struct Params { M: u32, N: u32, K: u32, ldy: u32, n_off: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<act_t>>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> sc: array<scale_t>;
@group(0) @binding(4) var<storage, read> off: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<act_t>;

const TX: u32 = BN / TN;      // threads along N
const TY: u32 = BM / TM;      // threads along M
var<workgroup> As: array<vec4<f32>, BK * BM / 4u>;   // [k][m/4]
var<workgroup> Ws: array<vec4<f32>, BK * BN / 4u>;   // [k][n/4]

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let M = P.M;
    let N = P.N;
    let K = P.K;
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let tx = lid % TX;
    let ty = lid / TX;
    let k4 = K / 4u;
    let k8 = K / 8u;
    let gpr = K / GS;

    var acc: array<array<vec4<f32>, TN / 4u>, TM>;
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN / 4u; j++) { acc[i][j] = vec4<f32>(0.0); }
    }

    for (var k0 = 0u; k0 < K; k0 += BK) {
        // x tile: BM rows × BK/4 vec4s, stored transposed As[k][m].
        for (var idx = lid; idx < BM * BK / 4u; idx += WG) {
            let m = idx / (BK / 4u);
            let kq = idx % (BK / 4u);
            var v = vec4<f32>(0.0);
            if (m0 + m < M) { v = vec4<f32>(x[(m0 + m) * k4 + k0 / 4u + kq]); }
            let base = (kq * 4u) * (BM / 4u) + m / 4u;
            let c = m % 4u;
            As[base][c] = v.x;
            As[base + BM / 4u][c] = v.y;
            As[base + 2u * BM / 4u][c] = v.z;
            As[base + 3u * BM / 4u][c] = v.w;
        }
        // W tile: BN rows × BK/8 words, dequantized into Ws[k][n].
        for (var idx = lid; idx < BN * BK / 8u; idx += WG) {
            let n = idx / (BK / 8u);
            let kw = idx % (BK / 8u);
            var word = 0x88888888u;   // q = 0 everywhere
            var s = 0.0;
            var o = 0.0;
            if (n0 + n < N) {
                word = w[(n0 + n) * k8 + k0 / 8u + kw];
                let g = (n0 + n) * gpr + k0 / GS;
                s = f32(sc[g]);
                if (HAS_OFFSETS) { o = off[g]; }
            }
            let base = (kw * 8u) * (BN / 4u) + n / 4u;
            let c = n % 4u;
            for (var e = 0u; e < 8u; e++) {
                let q = f32((word >> (4u * e)) & 0xFu) - 8.0;
                Ws[base + e * (BN / 4u)][c] = fma(q, s, o);
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            var b: array<vec4<f32>, TN / 4u>;
            for (var j = 0u; j < TN / 4u; j++) { b[j] = Ws[k * (BN / 4u) + tx + j * TX]; }
            for (var i4 = 0u; i4 < TM / 4u; i4++) {
                let a = As[k * (BM / 4u) + ty + i4 * TY];
                for (var j = 0u; j < TN / 4u; j++) {
                    acc[i4 * 4u + 0u][j] = fma(vec4<f32>(a.x), b[j], acc[i4 * 4u + 0u][j]);
                    acc[i4 * 4u + 1u][j] = fma(vec4<f32>(a.y), b[j], acc[i4 * 4u + 1u][j]);
                    acc[i4 * 4u + 2u][j] = fma(vec4<f32>(a.z), b[j], acc[i4 * 4u + 2u][j]);
                    acc[i4 * 4u + 3u][j] = fma(vec4<f32>(a.w), b[j], acc[i4 * 4u + 3u][j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i4 = 0u; i4 < TM / 4u; i4++) {
        for (var ii = 0u; ii < 4u; ii++) {
            let m = m0 + 4u * (ty + i4 * TY) + ii;
            if (m >= M) { continue; }
            for (var j = 0u; j < TN / 4u; j++) {
                let v = acc[i4 * 4u + ii][j];
                let nb = n0 + 4u * (tx + j * TX);
                for (var jj = 0u; jj < 4u; jj++) {
                    let n = nb + jj;
                    if (n < N) {
                        var s = v[jj];
                        let yi = m * P.ldy + P.n_off + n;
                        if (RESIDUAL) { s += f32(y[yi]); }
                        y[yi] = act_t(s);
                    }
                }
            }
        }
    }
}
