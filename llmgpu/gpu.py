"""The device layer: adapter choice, limits and features, buffers, a pipeline cache.

Everything that touches wgpu's device object lives here, so that the ops (llmgpu/ops) and model.py
speak in terms of named buffers and cached pipelines.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wgpu

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # lavapipe warns without it

BU = wgpu.BufferUsage
STORAGE = BU.STORAGE | BU.COPY_DST | BU.COPY_SRC
UNIFORM = BU.UNIFORM | BU.COPY_DST

# The features we use when the adapter has them; each has a fallback.
WANTED_FEATURES = ("shader-f16", "subgroup", "timestamp-query", "memory-decoration-coherent")
# ... and on CPU adapters only: 64-bit integers, so that the LANES GEMV (ops/linear.py) loads
# weights in 64-bit words (lavapipe loads a word per invocation at a time: half the loads)
CPU_FEATURES = ("shader-int64",)
# The limits we raise to the adapter's own values (wgpu's defaults are far lower).
WANTED_LIMITS = (
    "max-storage-buffer-binding-size",
    "max-buffer-size",
    "max-compute-workgroup-storage-size",
    "max-compute-invocations-per-workgroup",
    "max-compute-workgroup-size-x",
    "max-storage-buffers-per-shader-stage",
    "max-compute-workgroups-per-dimension",
)


def data_dir(name: str, marker: str) -> Path:
    """A data folder shipped with llmgpu: `<repo>/<name>` in a source checkout, `llmgpu/<name>`
    in an installed wheel (pyproject maps shaders/ and models/ into the package)."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / name, here / name):
        if (cand / marker).exists():
            return cand
    from importlib.resources import files
    return Path(str(files(f"llmgpu.{name}")))


def shader_dir() -> Path:
    return data_dir("shaders", "q4gsw_gemv.wgsl")


class GpuError(RuntimeError):
    """A problem with the adapter or with what we asked of it; the message says what to do."""


def _describe(adapter) -> str:
    info = adapter.info
    return f"{info['device']} ({info['backend_type']}, {info['adapter_type']})"


def choose_adapter(select: str | None = None):
    """Pick an adapter: high-performance by default, or the first whose device name or backend
    contains `select` (case-insensitive; also read from LLMGPU_ADAPTER)."""
    select = select if select is not None else os.environ.get("LLMGPU_ADAPTER") or None
    if not select:
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        if adapter is None:
            raise GpuError("no GPU adapter found; on a machine without a GPU install software Vulkan: "
                           "apt-get install -y mesa-vulkan-drivers libvulkan1")
        return adapter
    adapters = wgpu.gpu.enumerate_adapters_sync()
    for a in adapters:
        hay = f"{a.info['device']} {a.info['backend_type']} {a.info['adapter_type']} {a.info['vendor']}".lower()
        if select.lower() in hay:
            return a
    names = "; ".join(_describe(a) for a in adapters) or "none"
    raise GpuError(f"no adapter matches {select!r}; available: {names}")


def preprocess(src: str, consts: dict) -> tuple[str, set]:
    """Keep or drop lines between `//#if NAME` (or `//#if !NAME`) / `//#else` / `//#endif`
    by a bool constant; returns the text and the names the directives used.

    Only for code that must not exist at all in some variants: subgroup built-ins on an
    adapter without subgroups, bindings whose type differs (int8 or f32 outputs). Every other
    choice is an `override` constant and an ordinary `if`, which the compiler folds.
    """
    out, stack, used = [], [], set()
    for line in src.splitlines():
        t = line.strip()
        if t.startswith("//#if "):
            name = t[6:].strip().lstrip("!")
            if name not in consts:
                raise GpuError(f"shader flag {name} (//#if) was not given")
            used.add(name)
            stack.append(bool(consts[name]) != t[6:].strip().startswith("!"))
        elif t == "//#else":
            stack[-1] = not stack[-1]
        elif t == "//#endif":
            stack.pop()
        elif all(stack):
            out.append(line)
    if stack:
        raise ValueError("unbalanced //#if in shader source")
    return "\n".join(out), used


_OVERRIDE = re.compile(r"^\s*override\s+(\w+)", re.M)
_BINDING = re.compile(r"@group\(0\)\s*@binding\((\d+)\)\s*(?:@\w+\s+)*var<(\w+)(?:,\s*(\w+))?>\s+(\w+)")


def parse_bindings(code: str) -> dict[str, tuple[int, str]]:
    """{name: (binding, buffer type)} from a shader's group-0 declarations: `var<uniform>` →
    uniform, `var<storage, read>` → read-only-storage, `var<storage, read_write>` → storage."""
    out = {}
    for idx, space, access, name in _BINDING.findall(code):
        kind = "uniform" if space == "uniform" else ("read-only-storage" if access in ("", "read") else "storage")
        out[name] = (int(idx), kind)
    return out


def _dump(folder, shader: str, entry: str, code: str, overrides: dict) -> None:
    """Write the expanded source of a compiled pipeline (`--dump-wgsl DIR`), overrides on top."""
    import hashlib
    Path(folder).mkdir(parents=True, exist_ok=True)
    head = "".join(f"// override {k} = {int(v) if float(v).is_integer() else v}\n" for k, v in sorted(overrides.items()))
    text = head + code
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    (Path(folder) / f"{shader}.{entry}.{digest}.wgsl").write_text(text)


@dataclass
class Pipeline:
    pipeline: object
    layout: object  # bind group layout 0
    name: str
    bindings: dict  # WGSL name -> (binding index, buffer type)


class Device:
    """One wgpu device with the adapter's real limits, the features it has, and caches.

    f16 / subgroups: None = use when the adapter has them; False = force the fallback
    (f32 scales and activations; shared-memory reductions). Tests use both paths.
    """

    def __init__(self, adapter: str | None = None, *, f16: bool | None = None,
                 subgroups: bool | None = None, timestamps: bool | None = None, coherent: bool | None = None,
                 verbose: bool = False,
                 dump_wgsl: str | None = None):
        self.adapter = choose_adapter(adapter)
        have = set(self.adapter.features)
        want = {"shader-f16": f16, "subgroup": subgroups, "timestamp-query": timestamps,
                "memory-decoration-coherent": coherent}
        feats = [f for f in WANTED_FEATURES if f in have and want[f] is not False]
        if self.adapter.info["adapter_type"] == "CPU":
            feats += [f for f in CPU_FEATURES if f in have]
        for f, w in want.items():
            if w and f not in have:
                raise GpuError(f"adapter {_describe(self.adapter)} lacks feature {f!r}; drop the request for it")
        alimits = self.adapter.limits
        limits = {k: alimits[k] for k in WANTED_LIMITS if k in alimits}
        self.device = self.adapter.request_device_sync(required_features=feats, required_limits=limits)
        self.queue = self.device.queue
        self.features = frozenset(feats)
        self.has_f16 = "shader-f16" in self.features
        self.has_subgroups = "subgroup" in self.features
        self.has_timestamps = "timestamp-query" in self.features
        # @coherent storage: what one workgroup stores is seen by others after a grid barrier
        # inside one dispatch (the persistent decode kernel needs it; decode.wgsl)
        self.has_coherent = "memory-decoration-coherent" in self.features
        self.has_int64 = "shader-int64" in self.features  # (requested on CPU adapters only)
        # dot4I8Packed (WGSL language feature packed_4x8_integer_dot_product), the int8 GEMM's
        # instruction. wgpu-py 0.32 reports no language features at all (an empty set); naga
        # compiles the builtin on every backend (SPIR-V OpSDot where the Vulkan device has integer
        # dot products, else a shift-and-multiply polyfill), so an empty report means "available".
        langs = set(getattr(wgpu.gpu, "wgsl_language_features", None) or ())
        self.has_dot4i8 = not langs or "packed_4x8_integer_dot_product" in langs
        lim = self.device.limits
        self.max_binding = int(lim["max-storage-buffer-binding-size"])
        self.storage_align = int(lim["min-storage-buffer-offset-alignment"])  # a binding's byte offset
        self.max_buffer = int(lim["max-buffer-size"])
        self.max_workgroup_storage = int(lim["max-compute-workgroup-storage-size"])
        self.max_invocations = int(lim["max-compute-invocations-per-workgroup"])
        self.max_groups = int(lim["max-compute-workgroups-per-dimension"])
        self.dump_wgsl = dump_wgsl  # a folder: write every compiled shader's expanded source there
        self._pipelines: dict = {}
        self._sources: dict = {}
        # Start-up accounting (`generate --verbose`, `llmgpu bench`): pipelines compiled and the
        # wall time spent in shader-module and pipeline creation. (lavapipe runs LLVM at a
        # pipeline's first dispatch instead, inside the first token: ~16 s for the default model's
        # 13 pipelines unless Mesa's own disk cache, ~/.cache/mesa_shader_cache, has them.)
        self.pipelines_compiled = 0
        self.compile_seconds = 0.0
        self.name = _describe(self.adapter)
        self.is_cpu = self.adapter.info["adapter_type"] == "CPU"  # lavapipe and other software adapters
        if verbose:
            print(f"llmgpu: adapter {self.name}; features {', '.join(sorted(self.features)) or 'none'}; "
                  f"max binding {self.max_binding >> 20} MiB", file=sys.stderr)

    # -- dtypes -----------------------------------------------------------------------------
    @property
    def act_type(self) -> str:
        """WGSL type of activations, group scales, the KV cache and the embedding table on this
        device: f16 where the adapter has shader-f16, else f32. The one place this is decided."""
        return "f16" if self.has_f16 else "f32"

    @property
    def act_dtype(self):
        """NumPy dtype matching `act_type`."""
        return np.float16 if self.act_type == "f16" else np.float32

    # -- buffers ----------------------------------------------------------------------------
    def check_size(self, nbytes: int, what: str, binding: bool = True) -> None:
        limit = self.max_binding if binding else self.max_buffer
        if nbytes > limit:
            kind = "storage-buffer binding" if binding else "buffer"
            raise GpuError(
                f"{what} needs {nbytes / 2**20:.1f} MiB but this adapter's max {kind} size is "
                f"{limit / 2**20:.0f} MiB ({self.name}); split it into smaller pieces, "
                f"use a smaller model or context, or pick another adapter with --adapter")

    def buffer(self, data=None, *, size: int | None = None, usage=STORAGE, label: str = "",
               binding: bool = True):
        """A storage buffer from a NumPy array (uploaded) or of `size` bytes (zeroed)."""
        if data is not None:
            arr = np.ascontiguousarray(data)
            nbytes = arr.nbytes
        else:
            nbytes = int(size)
        nbytes = max(16, (nbytes + 3) // 4 * 4)
        self.check_size(nbytes, label or "a buffer", binding=binding and bool(usage & BU.STORAGE))
        if data is None:
            return self.device.create_buffer(size=nbytes, usage=usage, label=label)
        buf = self.device.create_buffer(size=nbytes, usage=usage | BU.COPY_DST, label=label)
        raw = arr.view(np.uint8).reshape(-1)
        if raw.nbytes:
            if raw.nbytes % 4:
                raw = np.concatenate([raw, np.zeros(4 - raw.nbytes % 4, np.uint8)])
            self.queue.write_buffer(buf, 0, raw)
        return buf

    def uniform(self, values, label: str = ""):
        """A uniform buffer of u32/i32/f32 scalars packed as 32-bit words (padded to 16 bytes)."""
        words = np.zeros(max(4, (len(values) + 3) // 4 * 4), dtype=np.uint32)
        for i, v in enumerate(values):
            words[i] = np.float32(v).view(np.uint32) if isinstance(v, float) else np.uint32(np.int64(v) & 0xFFFFFFFF)
        return self.buffer(words, usage=UNIFORM, label=label, binding=False)

    def write(self, buf, data, offset: int = 0) -> None:
        self.queue.write_buffer(buf, offset, np.ascontiguousarray(data))

    def read(self, buf, dtype, shape=None, offset: int = 0, count: int | None = None) -> np.ndarray:
        """Copy a buffer back (waits for the GPU). `count` elements from `offset` bytes."""
        dtype = np.dtype(dtype)
        if count is None and shape is not None:
            count = int(np.prod(shape))
        size = count * dtype.itemsize if count is not None else None
        if size is not None and size % 4:
            size += 4 - size % 4
        raw = self.queue.read_buffer(buf, offset, size)
        arr = np.frombuffer(raw, dtype=np.uint8)
        n = count if count is not None else arr.nbytes // dtype.itemsize
        arr = arr[: n * dtype.itemsize].view(dtype)
        return arr.reshape(shape) if shape is not None else arr

    def sync(self) -> None:
        """Wait until the GPU has finished all submitted work."""
        if not hasattr(self, "_sync_buf"):
            self._sync_buf = self.buffer(size=16, label="sync")
        self.queue.read_buffer(self._sync_buf, 0, 4)

    @property
    def subgroup_size(self) -> int:
        """Invocations per subgroup as kernels see them (measured once; 1 without subgroups)."""
        if not hasattr(self, "_subgroup_size"):
            self._subgroup_size = 1
            if self.has_subgroups:
                pipe = self.pipeline("subgroup_size")
                out = self.buffer(size=16, label="subgroup_size")
                enc = self.device.create_command_encoder()
                cpass = enc.begin_compute_pass()
                cpass.set_pipeline(pipe.pipeline)
                cpass.set_bind_group(0, self.bind_group(pipe, {"out": out}))
                cpass.dispatch_workgroups(1)
                cpass.end()
                self.queue.submit([enc.finish()])
                self._subgroup_size = int(self.read(out, np.uint32, (1,))[0])
        return self._subgroup_size

    # -- shaders and pipelines --------------------------------------------------------------
    def _source(self, shader: str) -> str:
        """The shader's text, with `//#include NAME` lines replaced by shaders/NAME.wgsl, and
        `//#include NAME(ARG)` by that file with every `$K` replaced by ARG (one template, several
        copies: the decode kernel's GEMV for each weight it reads)."""
        if shader not in self._sources:
            lines = (shader_dir() / f"{shader}.wgsl").read_text().splitlines()
            self._sources[shader] = "\n".join(self._include(t) for t in lines) + "\n"
        return self._sources[shader]

    def _include(self, line: str) -> str:
        t = line.strip()
        if not t.startswith("//#include "):
            return line
        name = t[11:].strip()
        if name.endswith(")") and "(" in name:
            name, arg = name[:-1].split("(", 1)
            return self._source(name).replace("$K", arg.strip())
        return self._source(name)

    def source(self, shader: str, consts: dict | None = None, types: dict | None = None,
               snippets: dict | None = None) -> tuple[str, dict]:
        """The WGSL that `pipeline` compiles, and the override constants it passes.

        `types` become `alias` declarations prepended to the file (f16 / f32 by adapter);
        `snippets` replace lines `//@NAME` with generated code (llmgpu/ops/codegen.py);
        `consts` are either flags of `//#if NAME` blocks (code that must not exist at all in
        some variants: subgroup built-ins, bindings of another type) or values of the shader's
        own `override` declarations. A name that is neither is an error.
        """
        consts, types = dict(consts or {}), dict(types or {})
        head = ["enable f16;"] if self.has_f16 else []
        for k, v in sorted(types.items()):
            if v == "f16" and not self.has_f16:
                raise GpuError(f"{shader}: f16 requested for {k} but the adapter lacks shader-f16")
            head.append(f"alias {k} = {v};")
        body = self._source(shader)
        for k, v in (snippets or {}).items():
            body = body.replace(f"//@{k}\n", v + "\n")
        body, flags = preprocess(body, consts)
        code = "\n".join(head) + "\n" + body
        declared = set(_OVERRIDE.findall(code))
        unknown = set(consts) - declared - flags
        if unknown:
            raise GpuError(f"{shader}.wgsl has no override or //#if named {', '.join(sorted(unknown))}")
        overrides = {k: (float(v) if not isinstance(v, bool) else v) for k, v in consts.items() if k in declared}
        return code, overrides

    def pipeline(self, shader: str, entry: str = "main", consts: dict | None = None,
                 types: dict | None = None, snippets: dict | None = None) -> "Pipeline":
        """Compile `shaders/<shader>.wgsl` once per (entry point, constants, type aliases, snippets),
        with an explicit bind-group layout read from its own `@binding` declarations: each binding
        is known by its WGSL name, and `var<storage, read>` becomes a read-only binding."""
        consts = dict(consts or {})
        key = (shader, entry, tuple(sorted(consts.items())), tuple(sorted((types or {}).items())),
               tuple(sorted((snippets or {}).items())))
        hit = self._pipelines.get(key)
        if hit is not None:
            return hit
        if consts.get("WG", 0) > self.max_invocations:
            raise GpuError(f"{shader}: a workgroup of {consts['WG']} invocations exceeds this adapter's "
                           f"limit of {self.max_invocations}; pick a smaller kernel configuration")
        code, overrides = self.source(shader, consts, types, snippets)
        if self.dump_wgsl:
            _dump(self.dump_wgsl, shader, entry, code, overrides)
        bindings = parse_bindings(code)
        t0 = time.perf_counter()
        try:
            module = self.device.create_shader_module(label=shader, code=code)
            layout = self.device.create_bind_group_layout(entries=[
                {"binding": i, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": kind}}
                for i, kind in bindings.values()])
            pipe = self.device.create_compute_pipeline(
                label=f"{shader}:{entry}", layout=self.device.create_pipeline_layout(bind_group_layouts=[layout]),
                compute={"module": module, "entry_point": entry, "constants": overrides})
        except Exception as e:  # compile errors carry the WGSL diagnostics
            raise GpuError(f"compiling {shader}.wgsl:{entry} with {consts} {types} failed: {e}") from e
        self.compile_seconds += time.perf_counter() - t0
        self.pipelines_compiled += 1
        p = Pipeline(pipe, layout, f"{shader}:{entry}", bindings)
        self._pipelines[key] = p
        return p

    def bind_group(self, pipe: "Pipeline", buffers: dict):
        """Bind buffers to group 0 by the names the shader gives them: {name: buffer}, where an
        entry may be (buffer, byte offset, size). Every binding the shader declares must be given."""
        missing = set(pipe.bindings) - set(buffers)
        extra = set(buffers) - set(pipe.bindings)
        if missing or extra:
            raise ValueError(f"{pipe.name}: bindings {sorted(missing)} missing, {sorted(extra)} not declared")
        entries = []
        for name, b in buffers.items():
            buf, off, size = b if isinstance(b, tuple) else (b, 0, b.size)
            entries.append({"binding": pipe.bindings[name][0],
                            "resource": {"buffer": buf, "offset": off, "size": size}})
        return self.device.create_bind_group(layout=pipe.layout, entries=entries)

    def grid(self, groups: int) -> tuple[int, int, int]:
        """Spread a 1-D workgroup count over x and y within the per-dimension limit."""
        if groups <= self.max_groups:
            return (groups, 1, 1)
        y = -(-groups // self.max_groups)
        return (-(-groups // y), y, 1)
