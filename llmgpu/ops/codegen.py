"""The only generated WGSL: the GEMV's, GEMM's and flash attention's unrolled inner loops.

Why generate at all: accumulators and prefetch registers must be *named* variables. The same
loops over an indexed array (`var acc: array<f32, R>`) were measured 3× slower on NVIDIA,
whose compiler placed the array in local memory. Everything else in the shaders is plain
WGSL with `override` constants. Each function returns {placeholder: code}; the shader has a
line `//@NAME` where the code goes (q4gsw_gemv.wgsl, q4gsw_gemm.wgsl, q4gsw_gemm_i8.wgsl,
attention_prefill.wgsl). `llmgpu generate --dump-wgsl DIR` writes the expanded sources, and
tests/test_ops.py checks them.
"""
from __future__ import annotations


def gemv_snippets(R: int, q8: bool = False, w8: bool = False, silu: bool = False,
                  offsets: bool = False) -> dict:
    """q4gsw_gemv.wgsl: R named accumulators and the chunk's activations, for int8 or float
    activations (q8), q4gsw or int8 weights (w8), per-group offsets, and the outputs (or, with
    silu, the 64 sums that the SiLU epilogue reads from workgroup memory)."""
    row = lambda r: f"min(row0 + {r}u, N - 1u)"  # noqa: E731  (clamped: loads stay in bounds)
    if w8:
        body = [f"        let q{r} = w[2u * ({row(r)} * nch + c)];\n        let p{r} = w[2u * ({row(r)} * nch + c) + 1u];"
                for r in range(R)]
    else:
        body = [f"        let q{r} = w[{row(r)} * nch + c];" for r in range(R)]
    body += [f"        let gi{r} = {row(r)} * gpr + g;" for r in range(R)]
    if w8 and q8:
        body += ["        let xa = x[2u * c];", "        let xb2 = x[2u * c + 1u];", "        let dx = xd[c];"]
        body += [f"        acc{r} += f32(sc[gi{r}]) * dx.x * f32(idot32w(q{r}, p{r}, xa, xb2));" for r in range(R)]
    elif w8:
        body += [f"        let x{i} = vec4<f32>(x[xb + {i}u]);" for i in range(8)]
        for r in range(R):
            body.append(f"        acc{r} += f32(sc[gi{r}]) * ((fdot8w(q{r}.x, q{r}.y, x0, x1) + fdot8w(q{r}.z, q{r}.w, x2, x3))"
                        f" + (fdot8w(p{r}.x, p{r}.y, x4, x5) + fdot8w(p{r}.z, p{r}.w, x6, x7)));")
    elif q8:  # int8 activations: integer dot products, one float multiply per row-chunk
        body += ["        let xa = x[2u * c];", "        let xb2 = x[2u * c + 1u];", "        let dx = xd[c];"]
        for r in range(R):
            body.append(f"        acc{r} += f32(sc[gi{r}]) * dx.x * f32(idot32(q{r}, xa, xb2) - i32(dx.y));")
            if offsets:
                body.append(f"        acc{r} += off[gi{r}] * dx.x * (dx.y / 8.0);")
    else:
        body += [f"        let x{i} = vec4<f32>(x[xb + {i}u]);" for i in range(8)]
        body += ["        let xs4 = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));",
                 "        let xsum = xs4.x + xs4.y + xs4.z + xs4.w;"]
        for r in range(R):
            body.append(f"        let d{r} = (dot8(q{r}.x, x0, x1) + dot8(q{r}.y, x2, x3)) + "
                        f"(dot8(q{r}.z, x4, x5) + dot8(q{r}.w, x6, x7));")
            body.append(f"        acc{r} += f32(sc[gi{r}]) * (16.0 * d{r} - 24.0 * xsum);")
            if offsets:
                body.append(f"        acc{r} += off[gi{r}] * xsum;")
    lines = lambda f: "\n".join(f(r) for r in range(R))  # noqa: E731
    return {
        "DECL": lines(lambda r: f"    var acc{r} = 0.0;"),
        "BODY": "\n".join(body),
        "SGADD": lines(lambda r: f"            acc{r} = subgroupAdd(acc{r});"),
        "SGXOR": lines(lambda r: f"                acc{r} += subgroupShuffleXor(acc{r}, o);"),
        "RED": lines(lambda r: f"    red[{r}u * WG + lid] = acc{r};"),
        "OUT": "\n".join(_gemv_out(R, silu)),
    }


def _u32x4(v: str) -> str:
    """A vec2<u64> expression's four 32-bit halves, low first, as a vec4<u32>."""
    return f"vec4<u32>(u32({v}.x & 0xFFFFFFFFlu), u32({v}.x >> 32u), u32({v}.y & 0xFFFFFFFFlu), u32({v}.y >> 32u))"


def gemv_lanes_snippets(R: int, WG: int, K: int, GS: int, q8: bool = False, w8: bool = False,
                        silu: bool = False, offsets: bool = False, w64: bool = False) -> dict:
    """q4gsw_gemv.wgsl with LANES: one invocation per row, R rows (row0 + r·WG) each, the K/32
    chunks unrolled so that every activation load has a constant address (one load on a CPU
    adapter, where a per-invocation address costs a loop over the SIMD lanes). Group scales (and
    offsets) come from sw, one vec4 per 2 (or 4) groups, loaded when a chunk enters a new vec4.
    Outputs: + bias, + y (RESIDUAL) into y, or with silu the 64 sums into ys. w64: the weights
    read as 64-bit words (flag W64), split into the same u32 words."""
    nch, per = K // 32, (2 if offsets else 4)
    nvec = -(-(K // GS) // per)
    rows = [f"base + {r * WG}u" for r in range(R)]
    out = [f"    let row{r} = min({rows[r]}, N - 1u);\n    var acc{r} = 0.0;" for r in range(R)]
    loaded = -1
    for c in range(nch):
        g = c * 32 // GS
        v, lane = divmod(g, per)
        if v != loaded:
            out += [f"    let sw{r}_{v} = sw[row{r} * {nvec}u + {v}u];" for r in range(R)]
            loaded = v
        sc = lambda r: f"sw{r}_{v}.{'xyzw'[lane * (4 // per)]}"  # noqa: E731
        off = lambda r: f"sw{r}_{v}.{'xyzw'[2 * lane + 1]}"  # noqa: E731
        out.append("    {")
        if q8:
            out += [f"        let xa = x[{2 * c}u];", f"        let xb2 = x[{2 * c + 1}u];", f"        let dx = xd[{c}u];"]
        else:
            out += [f"        let x{i} = vec4<f32>(x[{8 * c + i}u]);" for i in range(8)]
            if not w8:
                out += ["        let xs4 = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));",
                        "        let xsum = xs4.x + xs4.y + xs4.z + xs4.w;"]
        for r in range(R):
            if w8 and w64:
                out += [f"        let v{r} = w[row{r} * {nch}u + {c}u];",
                        f"        let q{r} = {_u32x4(f'v{r}.xy')};", f"        let p{r} = {_u32x4(f'v{r}.zw')};"]
            elif w8:
                out += [f"        let q{r} = w[2u * (row{r} * {nch}u + {c}u)];",
                        f"        let p{r} = w[2u * (row{r} * {nch}u + {c}u) + 1u];"]
            elif w64:
                out += [f"        let v{r} = w[row{r} * {nch}u + {c}u];", f"        let q{r} = {_u32x4(f'v{r}')};"]
            else:
                out.append(f"        let q{r} = w[row{r} * {nch}u + {c}u];")
            if w8 and q8:
                out.append(f"        acc{r} += {sc(r)} * dx.x * f32(idot32w(q{r}, p{r}, xa, xb2));")
            elif w8:
                out.append(f"        acc{r} += {sc(r)} * ((fdot8w(q{r}.x, q{r}.y, x0, x1) + fdot8w(q{r}.z, q{r}.w, x2, x3))"
                           f" + (fdot8w(p{r}.x, p{r}.y, x4, x5) + fdot8w(p{r}.z, p{r}.w, x6, x7)));")
            elif q8:
                out.append(f"        acc{r} += {sc(r)} * dx.x * f32(idot32(q{r}, xa, xb2) - i32(dx.y));")
                if offsets:
                    out.append(f"        acc{r} += {off(r)} * dx.x * (dx.y / 8.0);")
            else:
                out.append(f"        let d{r} = (dot8(q{r}.x, x0, x1) + dot8(q{r}.y, x2, x3)) + "
                           f"(dot8(q{r}.z, x4, x5) + dot8(q{r}.w, x6, x7));")
                out.append(f"        acc{r} += {sc(r)} * (16.0 * d{r} - 24.0 * xsum);")
                if offsets:
                    out.append(f"        acc{r} += {off(r)} * xsum;")
        out.append("    }")
    for r in range(R):
        if silu:
            out.append(f"    ys[{r * WG}u + lid] = acc{r};")
        else:
            out += [f"    if ({rows[r]} < N) {{", f"        var s = acc{r};",
                    "//#if HAS_BIAS", f"        s += bias[{rows[r]}];", "//#endif",
                    f"        if (RESIDUAL) {{ s += f32(y[{rows[r]}]); }}",
                    f"        y[{rows[r]}] = act_t(s);", "    }"]
    return {"LANES": "\n".join(out)}


def _gemv_out(R: int, silu: bool) -> list[str]:
    """Each row group's lane 0 adds its TPR partial sums: into workgroup memory for the SiLU
    epilogue, else (+ bias, + residual) into y."""
    out = []
    for r in range(R):
        total = ["            var s = 0.0;",
                 f"            for (var i = 0u; i < TPR; i += step) {{ s += red[{r}u * WG + lid + i]; }}"]
        if silu:
            out += ["        {", *total, f"            ys[rg * R + {r}u] = s;", "        }"]
        else:
            out += [f"        if (row0 + {r}u < N) {{", *total,
                    "//#if HAS_BIAS", f"            s += bias[row0 + {r}u];", "//#endif",
                    f"            if (RESIDUAL) {{ s += f32(y[row0 + {r}u]); }}",
                    f"            y[row0 + {r}u] = act_t(s);", "        }"]
    return out


def gemm_snippets(BM: int, BN: int, TM: int, TN: int, f16: bool = False) -> dict:
    """q4gsw_gemm.wgsl: TM×(TN/4) named vec4 accumulators, and the register-prefetch loads and
    stores of one 32-wide k tile (BM·8/WG activation vec4s and BN·4/WG weight words per
    invocation). f16: the tile's products are summed in vec4<f16> registers (h…), which are
    added into the f32 accumulators after every 32-wide k tile."""
    WG = (BM // TM) * (BN // TN)
    na, nw = BM * 8 // WG, BN * 4 // WG
    if BM * 8 % WG or BN * 4 % WG:
        raise ValueError(f"GEMM tile {BM}x{BN} with {TM}x{TN} per thread: tiles do not split evenly")
    acc = [(i, j) for i in range(TM) for j in range(TN // 4)]
    decl = [f"    var c{i}_{j} = vec4<f32>(0.0);" for i, j in acc]
    decl += [f"    var ra{i}: vec4<f32>;" for i in range(na)]
    decl += [f"    var rw{i}: vec3<u32>;" for i in range(nw)]
    load = lambda k: [f"        ra{i} = load_a(m0, {k}, lid + {i}u * WG);" for i in range(na)] + \
        [f"        rw{i} = load_w(n0, {k}, lid + {i}u * WG);" for i in range(nw)]  # noqa: E731
    tile = [f"        store_a(lid + {i}u * WG, ra{i});" for i in range(na)] + \
        [f"        store_w(lid + {i}u * WG, rw{i});" for i in range(nw)]
    t, a = ("f16", "h") if f16 else ("f32", "c")
    mac = [f"            let b{j} = Ws[bb + {j}u * TX];" for j in range(TN // 4)]
    for i4 in range(TM // 4):
        mac.append(f"            let a{i4} = As[ab + {i4}u * TY];")
        for ii, comp in enumerate("xyzw"):
            i = 4 * i4 + ii
            mac += [f"            {a}{i}_{j} = fma(vec4<{t}>(a{i4}.{comp}), b{j}, {a}{i}_{j});" for j in range(TN // 4)]
    if f16:  # the tile's f16 sums: zeroed before, added into the f32 accumulators after
        mac = [f"        var h{i}_{j} = vec4<f16>(0.0);" for i, j in acc] + \
            ["        for (var k = 0u; k < BK; k++) {", "            let ab = k * (BM / 4u) + ty;",
             "            let bb = k * (BN / 4u) + tx;", *mac, "        }"] + \
            [f"        c{i}_{j} += vec4<f32>(h{i}_{j});" for i, j in acc]
    else:
        mac = ["        for (var k = 0u; k < BK; k++) {", "            let ab = k * (BM / 4u) + ty;",
               "            let bb = k * (BN / 4u) + tx;", *mac, "        }"]
    store = []
    for i in range(TM):
        m = f"m0 + 4u * (ty + {i // 4}u * TY) + {i % 4}u"
        for j in range(TN // 4):
            n = f"n0 + 4u * (tx + {j}u * TX)"
            store += [f"    put({m}, {n} + {jj}u, c{i}_{j}.{comp});" for jj, comp in enumerate("xyzw")]
    return {"DECL": "\n".join(decl), "MAC": "\n".join(mac), "STORE": "\n".join(store),
            "LOAD0": "\n".join(load("0u")), "LOADN": "\n".join(load("kn")), "STORE_TILE": "\n".join(tile)}


def gemm_lanes_snippets(TM: int, TN: int, S: int, offsets: bool = False) -> dict:
    """q4gsw_gemm.wgsl with LANES: TM×TN named accumulators (a{row}_{column}); the TN weight
    words, scales and offsets of the current chunk (wq, s16, o24: w = f·16s + (o − 24s), f the
    nibble as 1 + n/16); per quad of k the activation rows this invocation owns (xr{t}: row
    lane + S·t), and for each of the 4 k the TN weights and the TM broadcasts."""
    rows = -(-TM // S)
    decl = [f"    var a{i}_{j} = 0.0;" for i in range(TM) for j in range(TN)]
    decl += [f"    var wq{j} = vec4<u32>(0u);\n    var s16_{j} = 0.0;\n    var o24_{j} = 0.0;" for j in range(TN)]
    loadw = []
    for j in range(TN):
        loadw += [f"            let n{j} = min(nb + {j}u, P.N - 1u);",
                  f"            wq{j} = w[n{j} * (P.K / 32u) + c];",
                  f"            let s{j} = f32(sc[n{j} * (P.K / GS) + g]);",
                  f"            s16_{j} = 16.0 * s{j};"]
        if offsets:
            loadw.append(f"            o24_{j} = off[n{j} * (P.K / GS) + g] - 24.0 * s{j};")
        else:
            loadw.append(f"            o24_{j} = -24.0 * s{j};")
    loadx = [f"        let xr{t} = vec4<f32>(x[min(m0 + lane + {S * t}u, P.M - 1u) * (P.K / 4u) + k4]);"
             for t in range(rows)]
    mac = [f"        let word{j} = select(select(wq{j}.x, wq{j}.y, q >= 2u), select(wq{j}.z, wq{j}.w, q >= 6u), "
           f"q >= 4u) >> sh;" for j in range(TN)]
    for kq in range(4):
        mac += [f"        let w{j}_{kq} = fma(bitcast<f32>(((word{j} >> {4 * kq}u) & 0xFu) << 19u | 0x3F800000u), "
                f"s16_{j}, o24_{j});" for j in range(TN)]
        for i in range(TM):
            mac.append(f"        {{ let a = subgroupBroadcast(xr{i // S}.{'xyzw'[kq]}, {i % S}u); "
                       + " ".join(f"a{i}_{j} = fma(a, w{j}_{kq}, a{i}_{j});" for j in range(TN)) + " }")
    store = [f"    put(m0 + {i}u, nb + {j}u, a{i}_{j});" for i in range(TM) for j in range(TN)]
    return {"LANES_DECL": "\n".join(decl), "LANES_LOADW": "\n".join(loadw), "LANES_LOADX": "\n".join(loadx),
            "LANES_MAC": "\n".join(mac), "LANES_STORE": "\n".join(store)}


def flash_snippets(NJ: int, NL: int) -> dict:
    """attention_prefill.wgsl: the output accumulators of a thread's 4 query rows (i) and NJ
    vec4 columns of the head (n: column tx + n·TX, clamped to the head for loads; `put` skips
    the ones past it), their rescale by α, the p·V step at position c, the normalized store;
    and NL registers each that carry a block's keys and values from global to workgroup memory."""
    acc = [(i, n) for i in range(4) for n in range(NJ)]
    xyzw = "xyzw"
    decl = [f"    let dj{n} = min(tx + {n}u * TX, D4 - 1u);" for n in range(NJ)]
    decl += [f"    var o{i}_{n} = vec4<f32>(0.0);" for i, n in acc]
    decl += [f"    var {r}{n}: vec4<cache_t>;" for r in ("pk", "pv") for n in range(NL)]
    pv = [f"            let b{n} = KV[c * RS + dj{n}];" for n in range(NJ)]
    pv += [f"            o{i}_{n} = fma(vec4<f32>(a.{xyzw[i]}), b{n}, o{i}_{n});" for i, n in acc]
    load = lambda r, k0, v: "\n".join(f"        {r}{n} = load_kv({k0}, kend, j, lid + {n}u * WG, {v});"  # noqa: E731
                                      for n in range(NL))
    store = lambda r: "\n".join(f"        store_kv(lid + {n}u * WG, {r}{n});" for n in range(NL))  # noqa: E731
    return {"DECL": "\n".join(decl),
            "LOAD_K": load("pk", "kl", "false"), "LOAD_V": load("pv", "k0", "true"),
            "STORE_K": store("pk"), "STORE_V": store("pv"),
            "RESCALE": "\n".join(f"        o{i}_{n} *= alpha.{xyzw[i]};" for i, n in acc),
            "PV": "\n".join(pv),
            "STORE": "\n".join(f"    put(r0 + 4u * ty + {i}u, tx + {n}u * TX, j, G, o{i}_{n} / l.{xyzw[i]});"
                               for i, n in acc)}


def gemm_i8_snippets(BM: int, BN: int, TM: int, TN: int, KB: int, offsets: bool = False,
                     expand: bool = False) -> dict:
    """q4gsw_gemm_i8.wgsl: TM×TN named f32 accumulators; per block of 32, the invocation's TM
    activation rows held in registers (ax, ay: 32 bytes, am: scale terms) while its TN weight
    columns stream past (u, v: 8 int8 words, unpacked from nibbles unless expand); and the
    register-prefetch loads and stores of one step (KB blocks)."""
    if BM % TM or BN % TN:
        raise ValueError(f"int8 GEMM tile {BM}x{BN} does not split into {TM}x{TN} per invocation")
    WG = (BM // TM) * (BN // TN)
    per = lambda n: -(-n // WG)  # noqa: E731  (items per invocation, the last ones guarded)
    regs = [("ra", "vec4<u32>", "a", "m0", per(2 * KB * BM)), ("rm", "vec4<f32>", "am", "m0", per(KB * BM)),
            ("rw", "vec4<u32>", "w", "n0", per(KB * BN)), ("rs", "vec2<f32>", "ws", "n0", per(KB * BN))]
    decl = [f"    var c{i}_{j} = 0.0;" for i in range(TM) for j in range(TN)]
    decl += [f"    var {r}{k}: {t};" for r, t, _, _, n in regs for k in range(n)]
    load = lambda b: [f"        {r}{k} = load_{f}({o}, {b}, lid + {k}u * WG);"  # noqa: E731
                      for r, _, f, o, n in regs for k in range(n)]
    tile = [f"        store_{f}(lid + {k}u * WG, {r}{k});" for r, _, f, _, n in regs for k in range(n)]
    mac = []
    for i in range(TM):
        r = f"ab + {i}u * TY"
        mac += [f"            let ax{i} = Aq[({r}) * 2u];", f"            let ay{i} = Aq[({r}) * 2u + 1u];",
                f"            let am{i} = Am[{r}];"]
    for j in range(TN):
        c = f"bb + {j}u * TX"
        mac.append(f"            let s{j} = Ws[{c}];")
        if expand:
            mac += [f"            let u{j} = Wq[({c}) * 2u];", f"            let v{j} = Wq[({c}) * 2u + 1u];"]
        else:
            mac += [f"            let q{j} = Wq[{c}];", f"            let u{j} = w_lo(q{j});",
                    f"            let v{j} = w_hi(q{j});"]
        for i in range(TM):
            mac.append(f"            c{i}_{j} = fma(block_f32(am{i}.y, idot(ax{i}, ay{i}, u{j}, v{j})), "
                       f"am{i}.x * s{j}.x, c{i}_{j});")
            if offsets:
                mac.append(f"            c{i}_{j} = fma(am{i}.z, s{j}.y, c{i}_{j});")
    store = [f"    put(m0 + ty + {i}u * TY, n0 + tx + {j}u * TX, c{i}_{j});" for i in range(TM) for j in range(TN)]
    return {"DECL": "\n".join(decl), "MAC": "\n".join(mac), "STORE": "\n".join(store),
            "LOAD0": "\n".join(load("0u")), "LOADN": "\n".join(load("bn")), "STORE_TILE": "\n".join(tile)}
