// What both prefill GEMMs share (`//#include gemm_common` in q4gsw_gemm.wgsl and
// q4gsw_gemm_i8.wgsl): the uniform, the weight / output bindings, and the output store with the
// bias and residual epilogues. Needs from the including shader: the types act_t and scale_t,
// `override RESIDUAL: bool`, the flags HAS_OFFSETS and HAS_BIAS; it declares its activations.
//   P    uniform  M, N (rows of W in this slice), K, ldy (row stride of y), n_off (first column)
//   w    read     array<vec4<u32>>    (N, K/32)
//   sc   read     array<scale_t>      (N, K/GS)
//   off  read     array<f32>          (N, K/GS)   when HAS_OFFSETS
//   y    rw       array<act_t>        (M, ldy); this dispatch writes columns n_off .. n_off+N
//   bias read     array<f32>          (N)         when HAS_BIAS

struct Params { M: u32, N: u32, K: u32, ldy: u32, n_off: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> sc: array<scale_t>;
//#if HAS_OFFSETS
@group(0) @binding(4) var<storage, read> off: array<f32>;
//#endif
@group(0) @binding(5) var<storage, read_write> y: array<act_t>;
//#if HAS_BIAS
@group(0) @binding(7) var<storage, read> bias: array<f32>;
//#endif

// Output (m, n) of this slice = v (+ bias, + the old y when RESIDUAL); outside M × N: nothing.
fn put(m: u32, n: u32, v: f32) {
    if (m < P.M && n < P.N) {
        let yi = m * P.ldy + P.n_off + n;
        var s = v;
//#if HAS_BIAS
        s += bias[n];
//#endif
        if (RESIDUAL) { s += f32(y[yi]); }
        y[yi] = act_t(s);
    }
}
