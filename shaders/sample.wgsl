// Sampling on the GPU: one row of logits -> one token id, with llmgpu/sample.py's semantics and order
// (repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw; greedy when P.greedy).
//
// Overrides: WG (invocations, a power of two in 32 .. 1024), CAP (candidates held in workgroup memory).
// Flags: PENALTY (bindings hist, xs: the repetition penalty), SUBGROUPS (reduce.wgsl).
// Bindings (group 0):
//   P       uniform  V, greedy, top_k (0 or >= V: off), top_p (f32, minus the CPU's 1e-9; 1: off),
//                    log_min_p (f32; -inf: off), inv_temp (f32, 1 / temperature), penalty (f32),
//                    window (ring slots of hist), seed_lo, seed_hi, append (1: push the token onto hist),
//                    log_len (slots of the token log in out)
//   logits  read     array<f32>  (V)
//   out     rw       array<u32>  (4 + log_len): [0] token, [1] status (0 ok, 1 non-finite logits; sticky:
//                    a step that finds it set does nothing), [2] RNG counter (read, then incremented),
//                    [3] order key of the final threshold (survivors: key(x) >= it), [4 + c % log_len]
//                    the token of the step whose counter was c
//   hist    rw       array<u32>  (1 + window): [0] tokens ever pushed n, [1 + i % window] the i-th  (PENALTY)
//   xs      rw       array<f32>  (V) scratch: the penalized logits                                (PENALTY)
// One workgroup does everything (dispatch (1, 1, 1)); every pass below is a strided loop over the
// logits (invocation lid owns elements lid, lid + WG, ...) closed by a workgroup reduction:
//   1. (PENALTY) xs = logits; then each window slot's token gets its logit divided (> 0) or
//      multiplied (<= 0) by the penalty, read from `logits`, so a token seen twice is penalized once.
//   2. max, its lowest index (np.argmax's tie rule) and a NaN/+inf count; greedy stops here.
//   3. Filters as thresholds on an order-preserving u32 key of the float bits (no sort): the top-k
//      cut is the largest key t with count(key >= t) >= k, the top-p cut the largest with
//      mass(key >= t) >= top_p * norm (norm: the top-k set's mass), each found by bisection (at the
//      midpoint in value, or in key where values cannot be split) that stops as soon as the set
//      cannot shrink; the min-p cut is max + log(min_p). Ties at a cut are all kept.
//   4. When at most CAP tokens pass the top-k and min-p cuts, they are copied (in a fixed order) to
//      workgroup memory and the top-p search and the draw read them there instead of the logits.
//   5. Draw: u from a counter-based hash of (seed, out[2]); per-invocation sums of
//      exp((x - max) / T) over the survivors, a prefix sum over invocations, and the invocation
//      whose range holds u * total walks its own elements to the token.
// The token stays on the GPU: the next step's embedding reads out[0]; steps recorded back to back
// chain through out[2] (counter), hist (penalty) and out[1] (an error stops the rest).
// Against the CPU sampler: the same survivors and probabilities, except that ties at a cut are all
// kept (the CPU keeps an arbitrary subset) and masses are f32 sums (a top-p cut whose prefix mass is
// within ~1e-6 of top_p may move by a token). History ids >= V are ignored. Counts are f32: V < 2^24.

override WG: u32 = 256u;
override CAP: u32 = 1024u;

struct Params {
    V: u32, greedy: u32, top_k: u32, top_p: f32,
    log_min_p: f32, inv_temp: f32, penalty: f32, window: u32,
    seed_lo: u32, seed_hi: u32, append: u32, log_len: u32,
}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
//#if PENALTY
@group(0) @binding(3) var<storage, read_write> hist: array<u32>;
@group(0) @binding(4) var<storage, read_write> xs: array<f32>;
//#endif
//#include reduce

const SEG: u32 = 32u;              // the prefix sum's segment: WG / SEG segments
const KEY_NEG_INF: u32 = 0x007fffffu;  // key(-inf): the smallest key of a non-NaN float

var<workgroup> part: array<f32, WG>;        // one value per invocation, then its exclusive prefix sum
var<workgroup> seg: array<f32, 33>;         // segment totals, then their exclusive prefix sums
var<workgroup> cv: array<f32, CAP>;         // the candidates' logits (step 4)
var<workgroup> ci: array<u32, CAP>;         // ... and their token ids
var<workgroup> bu: vec2<u32>;
var<workgroup> bf: vec2<f32>;
var<private> lid: u32;
var<private> sgs: u32;

// Order-preserving: a < b (floats, not NaN) <=> key(a) < key(b); -0 counts as +0, as `>=` does.
fn key(v: f32) -> u32 {
    var b = bitcast<u32>(v);
    if (b == 0x80000000u) { b = 0u; }
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// The (penalized) logit of token i.
fn lg(i: u32) -> f32 {
//#if PENALTY
    return xs[i];
//#else
    return logits[i];
//#endif
}

// Element j of the source a pass reads: the logits, or the candidates in workgroup memory (sh).
fn val(j: u32, sh: bool) -> f32 {
    if (sh) { return cv[j]; }
    return lg(j);
}

fn token(j: u32, sh: bool) -> u32 {
    if (sh) { return ci[j]; }
    return j;
}

// The draw's weight exp((v - m) / T); the max itself is 1 even when 1/T overflowed to inf.
fn weight(v: f32, m: f32) -> f32 {
    if (v == m) { return 1.0; }
    if (v < -3.4e38) { return 0.0; }  // -inf: never drawn (and no -inf · 0 = NaN)
    return exp((v - m) * P.inv_temp);
}

// A workgroup-uniform copy of a value every invocation already holds (after a reduction): the
// uniformity analysis cannot know that, and loops with barriers need uniform conditions.
fn uni2(v: vec2<f32>) -> vec2<f32> {
    if (lid == 0u) { bf = v; }
    return workgroupUniformLoad(&bf);
}

fn uni1(v: f32) -> f32 { return uni2(vec2<f32>(v, 0.0)).x; }

// lowbias32 (C. Wellons): a bijection of u32 with full avalanche.
fn mix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

// Uniform in [0, 1) from (seed, counter): distinct counters give distinct 32-bit hashes (each
// step is a bijection of c), of which the top 24 bits make the float.
fn rand01(c: u32) -> f32 {
    let h = mix32(mix32(c + mix32(P.seed_lo)) ^ mix32(P.seed_hi ^ 0x9e3779b9u));
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

//#if PENALTY
// Step 1. Racing writes of one slot's token by several invocations all store the same value.
fn penalize() {
    for (var i = lid; i < P.V; i += WG) { xs[i] = logits[i]; }
    storageBarrier();
    let n = min(hist[0], P.window);
    for (var j = lid; j < n; j += WG) {
        let id = hist[1u + j];
        if (id < P.V) {
            let v = logits[id];
            xs[id] = select(v * P.penalty, v / P.penalty, v > 0.0);
        }
    }
    storageBarrier();
}
//#endif

// Step 2: (max, its lowest index, NaN/+inf count, smallest finite logit); uniform.
fn scan_max() -> vec4<f32> {
    var mx = bitcast<f32>(0xff800000u);
    var mn = 3.4e38;
    var am = P.V;
    var bad = 0.0;
    for (var i = lid; i < P.V; i += WG) {
        let v = lg(i);
        let a = bitcast<u32>(v);
        if ((a & 0x7fffffffu) > 0x7f800000u || a == 0x7f800000u) { bad += 1.0; }  // NaN, +inf
        else {
            if (v > mx) { mx = v; am = i; }  // the first (lowest) index of this invocation's max
            if (v > -3.4e38) { mn = min(mn, v); }
        }
    }
    let m = uni1(wg_max(mx, lid, sgs));
    let first = wg_max(select(0.0, f32(P.V - am), mx == m && am < P.V), lid, sgs);
    let r = uni2(vec2<f32>(first, wg_sum(bad, lid, sgs)));
    let fmin = uni1(-wg_max(-mn, lid, sgs));
    return vec4<f32>(m, f32(P.V) - r.x, r.y, fmin);
}

// (count, mass) of the source's elements with key >= t; mass = sum exp(x - m), only when asked
// (the top-k search counts). Uniform.
fn tally(t: u32, n: u32, sh: bool, m: f32, mass: bool) -> vec2<f32> {
    var c = 0.0;
    var s = 0.0;
    for (var j = lid; j < n; j += WG) {
        let v = val(j, sh);
        if (key(v) >= t) {
            c += 1.0;
            if (mass) { s += exp(v - m); }
        }
    }
    return uni2(vec2<f32>(wg_sum(c, lid, sgs), wg_sum(s, lid, sgs)));
}

fn unkey(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k ^ 0x80000000u, (k & 0x80000000u) != 0u));
}

// The next threshold to try in (lo, hi): the midpoint in value (from fmin, the smallest finite
// logit, when lo is -inf), which splits logits in a few steps where the midpoint in key space
// would first walk down the exponents; the key midpoint where the values cannot be split.
fn split(lo: u32, hi: u32, fmin: f32) -> u32 {
    let a = max(unkey(lo), fmin);
    let k = key(a + (unkey(hi) - a) * 0.5);
    if (k <= lo || k >= hi) { return lo + (hi - lo) / 2u; }
    return k;
}

// The largest key t in [lo, hi) with count(key >= t) >= goal (by_mass: mass(key >= t) >= goal);
// lo when even lo fails it (nothing to cut). hi fails by assumption (hi = key(max) + 1). Stops
// early once [lo, hi) holds a single element, or lo's set has exactly goal elements (top-k).
fn search(lo0: u32, hi0: u32, goal: f32, by_mass: bool, n: u32, sh: bool, m: f32, fmin: f32) -> u32 {
    var lo = lo0;
    var hi = hi0;
    var t = tally(lo, n, sh, m, by_mass);
    if (select(t.x, t.y, by_mass) < goal) { return lo; }
    var c_lo = t.x;
    var c_hi = 0.0;
    loop {
        if (hi - lo <= 1u || c_lo <= c_hi + 1.0 || (!by_mass && c_lo == goal)) { break; }
        let mid = split(lo, hi, fmin);
        t = tally(mid, n, sh, m, by_mass);
        if (select(t.x, t.y, by_mass) >= goal) { lo = mid; c_lo = t.x; } else { hi = mid; c_hi = t.x; }
    }
    return lo;
}

// part[] -> its exclusive prefix sum; returns the total (uniform). Segments are summed in order by
// one invocation each, then the segment totals by one, so that part[j] + (j's own value) ==
// part[j + 1] and part is non-decreasing, exactly, in floating point: the draw relies on it.
fn prefix_sum() -> f32 {
    workgroupBarrier();
    if (lid < WG / SEG) {
        var a = 0.0;
        for (var k = lid * SEG; k < (lid + 1u) * SEG; k++) { let v = part[k]; part[k] = a; a += v; }
        seg[lid] = a;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var a = 0.0;
        for (var g = 0u; g < WG / SEG; g++) { let v = seg[g]; seg[g] = a; a += v; }
        seg[WG / SEG] = a;
    }
    workgroupBarrier();
    part[lid] = seg[lid / SEG] + part[lid];
    return uni1(seg[WG / SEG]);
}

// Step 4: the elements with key >= t to cv/ci, in the order (invocation, index); part[lid] holds
// this invocation's count on entry.
fn compact(t: u32) {
    prefix_sum();
    var o = u32(part[lid]);
    for (var i = lid; i < P.V; i += WG) {
        let v = lg(i);
        if (key(v) >= t) { cv[o] = v; ci[o] = i; o += 1u; }
    }
    workgroupBarrier();
}

// Step 3's one full pass after the top-k search: (count of key >= klo, mass of the top-k set
// key >= ktk, the top-p cut's denominator); this invocation's count to part[lid] for compact().
fn prepare(klo: u32, ktk: u32, m: f32) -> vec2<f32> {
    var c = 0.0;
    var s = 0.0;
    for (var i = lid; i < P.V; i += WG) {
        let v = lg(i);
        let k = key(v);
        if (k >= klo) { c += 1.0; }
        if (k >= ktk) { s += exp(v - m); }
    }
    part[lid] = c;
    return uni2(vec2<f32>(wg_sum(c, lid, sgs), wg_sum(s, lid, sgs)));
}

// The step's result, by the one invocation that holds it.
fn finish(tok: u32, t: u32, c: u32) {
    out[0] = tok;
    out[2] = c + 1u;
    out[3] = t;
    if (P.log_len > 0u) { out[4u + c % P.log_len] = tok; }
//#if PENALTY
    if (P.append != 0u) {
        let n = hist[0];
        hist[1u + n % P.window] = tok;
        hist[0] = n + 1u;
    }
//#endif
}

// Step 5 over the source's elements with key >= t. The owner is the last invocation whose
// exclusive prefix is <= u · total and whose own sum is > 0 (the last one with any weight when
// rounding put the target at the total); it re-adds its weights in the same order to the token.
fn draw(t: u32, n: u32, sh: bool, m: f32, c: u32) {
    var s = 0.0;
    for (var j = lid; j < n; j += WG) {
        let v = val(j, sh);
        if (key(v) >= t) { s += weight(v, m); }
    }
    part[lid] = s;
    let goal = rand01(c) * prefix_sum();
    let owner = wg_max(select(-1.0, f32(lid), part[lid] <= goal && s > 0.0), lid, sgs);
    if (f32(lid) != owner) { return; }
    let rest = goal - part[lid];
    var acc = 0.0;
    var pick = 0u;
    for (var j = lid; j < n; j += WG) {
        let v = val(j, sh);
        let w = weight(v, m);
        if (key(v) >= t && w > 0.0) {
            pick = token(j, sh);
            acc += w;
            if (acc > rest) { break; }
        }
    }
    finish(pick, t, c);
}

// Steps 3-5 for max logit m, smallest finite logit fmin and RNG counter c.
fn filter_and_draw(m: f32, fmin: f32, c: u32) {
    let hi = key(m) + 1u;  // fails every search's predicate: nothing is above the max
    let kmin = key(m + P.log_min_p);
    var ktk = KEY_NEG_INF;
    if (P.top_k > 0u && P.top_k < P.V) {
        // top-p's fractions are of the whole top-k set's mass, so then the cut is needed exactly
        // even where min-p cuts deeper; without top-p only the higher of the two cuts matters
        let lo = select(kmin, KEY_NEG_INF, P.top_p < 1.0);
        ktk = search(lo, hi, f32(P.top_k), false, P.V, false, m, fmin);
    }
    let klo = max(kmin, ktk);
    let cn = prepare(klo, ktk, m);
    let sh = cn.x <= f32(CAP);
    var n = P.V;
    if (sh) {
        compact(klo);
        n = u32(cn.x);
    }
    var t = klo;
    if (P.top_p < 1.0) { t = search(klo, hi, P.top_p * cn.y, true, n, sh, m, fmin); }
    draw(t, n, sh, m, c);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32,
//#if SUBGROUPS
        @builtin(subgroup_size) sg: u32,
//#endif
        ) {
    lid = li;
//#if SUBGROUPS
    sgs = sg;
//#else
    sgs = 1u;
//#endif
    if (lid == 0u) { bu = vec2<u32>(out[1], out[2]); }
    let state = workgroupUniformLoad(&bu);
    if (state.x != 0u) { return; }  // an earlier step failed: the chain stops until the host clears it
//#if PENALTY
    penalize();
//#endif
    let mx = scan_max();
    if (mx.z > 0.0 || mx.x < -3.4e38) {  // a NaN or +inf, or no finite logit at all
        if (lid == 0u) { out[1] = 1u; }
        return;
    }
    if (P.greedy != 0u) {
        if (lid == 0u) { finish(u32(mx.y), key(mx.x), state.y); }
        return;
    }
    filter_and_draw(mx.x, mx.w, state.y);
}
