"""Does llama.cpp run llmgpu's GGUF export as llmgpu runs the model? (bench/export_check.sh builds the
helper and calls this.)

1. ``llmgpu export MODEL --to gguf`` (the command itself, timed);
2. llama.cpp (bench/lcpp_logits.cpp, through its C API) loads the export and gives the logits of every
   position of ~200 teacher-forced tokens (a chat prompt, then a text), a greedy answer to the prompt,
   and its own tokenization of a few texts;
3. llmgpu gives the same from the source model; compared: top-1 agreement over the teacher-forced
   positions (asked: >= 0.95), the greedy answers, the tokenizations.
With ``--compressed-tensors``: the same top-1 agreement for the compressed-tensors export run by
transformers on the CPU (needs torch, transformers, compressed-tensors; weights with offsets
re-quantized, --requantize), which shows what that re-quantization costs.
Exit status 1 when top-1 agreement is below --min-top1 or a tokenization differs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

QUESTION = [{"role": "user", "content": "Write a short story about a train journey in the rain."}]
TEXTS = ["Hello world! How are you today?", "def f(x):\n    return x * 2\n", "café naïve 日本 🙂 12345",
         "  leading spaces,\ttabs and 1,234,567.89 numbers"]


def top1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--helper", required=True, help="the built bench/lcpp_logits")
    p.add_argument("--model", default=None, help="what llmgpu exports (default: the default model)")
    p.add_argument("--out", required=True, help="a directory for the export and the logits")
    p.add_argument("-n", type=int, default=200, help="teacher-forced tokens (default 200)")
    p.add_argument("--gen", type=int, default=48, help="greedy tokens (default 48)")
    p.add_argument("--ngl", type=int, default=0, help="llama.cpp layers on the GPU (0: CPU build)")
    p.add_argument("--min-top1", type=float, default=0.95)
    p.add_argument("--compressed-tensors", action="store_true", help="also check the compressed-tensors export")
    a = p.parse_args()

    import llmgpu
    from llmgpu.defaults import default_model_path
    from llmgpu.tokenizer import encode_prompt

    model = a.model or str(default_model_path())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    gguf_path = out / "export.gguf"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llmgpu.cli", "export", model, "--to", "gguf", "-o", str(gguf_path),
                    "--force", "-q"], check=True)
    export_s = time.perf_counter() - t0

    llm = llmgpu.load(model, progress=False)
    ck = llm.model.ckpt
    prompt = llm.encode(QUESTION)
    text = resources.files("llmgpu").joinpath("calibration/default.txt").read_text(encoding="utf-8")
    ids = (prompt + encode_prompt(ck.tokenizer, text))[:a.n]
    (out / "ids.txt").write_text(" ".join(map(str, ids)) + "\n")
    texts = TEXTS + [ck.tokenizer.decode(prompt, skip_special_tokens=False)]  # the chat prompt as text
    (out / "texts.txt").write_text("".join(t.replace("\n", "\\n") + "\n" for t in texts), encoding="utf-8")

    t0 = time.perf_counter()
    r = subprocess.run([a.helper, str(gguf_path), str(out / "ids.txt"), str(len(prompt)), str(a.gen),
                        str(out / "lcpp_logits.f32"), str(a.ngl), str(out / "texts.txt")],
                       capture_output=True, text=True)
    lcpp_s = time.perf_counter() - t0
    (out / "lcpp.log").write_text(r.stderr)
    if r.returncode != 0:
        print(f"llama.cpp failed (exit {r.returncode}):\n" + "\n".join(r.stderr.splitlines()[-15:]))
        return 1
    lines = r.stdout.splitlines()
    greedy_lcpp = [int(t) for t in lines[0].split()[1:]]
    lcpp_tokens = [[int(t) for t in ln.split()[1:]] for ln in lines[1:]]
    V = ck.config.vocab_size
    theirs = np.fromfile(out / "lcpp_logits.f32", np.float32).reshape(len(ids), -1)[:, :V]

    ours = llm.logits(ids)
    agree = top1(ours, theirs)
    differ = np.flatnonzero(ours.argmax(1) != theirs.argmax(1))
    srt = np.sort(ours, axis=1)
    margins = (srt[:, -1] - srt[:, -2])[differ]  # llmgpu's own top-2 gap where the picks differ
    rel = float(np.abs(ours - theirs).max() / np.abs(ours).max())

    answer = llm.generate(QUESTION, temperature=0, max_tokens=a.gen, logprobs=0)
    greedy_ours = [e.token_id for e in answer.logprobs]
    eos = set(ck.eos_token_ids)
    g_l = [t for t in greedy_lcpp if t not in eos]
    same = next((i for i, (x, y) in enumerate(zip(greedy_ours, g_l)) if x != y), min(len(greedy_ours), len(g_l)))
    tok_ok = [llm.encode(t, chat_template=False) == got for t, got in zip(texts, lcpp_tokens)]
    fork_gap = None  # where the greedy answers part: llmgpu's logit of its pick minus that of llama.cpp's
    if same < min(len(greedy_ours), len(g_l)):
        row = llm.logits(prompt + greedy_ours[:same])[-1]
        fork_gap = float(row[greedy_ours[same]] - row[g_l[same]])

    res = {"model": model, "export_gguf_s": round(export_s, 1), "llama_cpp_s": round(lcpp_s, 1),
           "teacher_forced_tokens": len(ids), "top1_agreement": round(agree, 4),
           "differing_positions": differ.tolist(), "llmgpu_top2_gap_there": [round(float(m), 3) for m in margins],
           "max_abs_logit_diff_rel": round(rel, 4), "greedy_tokens": len(greedy_ours),
           "greedy_same_prefix": same, "greedy_fork_gap": None if fork_gap is None else round(fork_gap, 3),
           "greedy_llmgpu": str(answer),
           "greedy_llama_cpp": ck.tokenizer.decode(g_l), "tokenization_equal": tok_ok}
    print(f"export: {export_s:.1f} s; llama.cpp loaded {gguf_path.name} and ran {len(ids)} teacher-forced tokens")
    print(f"top-1 agreement llama.cpp vs llmgpu: {agree:.4f} over {len(ids)} positions "
          f"({len(differ)} differ; llmgpu's own top-2 gap there: {', '.join(f'{m:.3f}' for m in margins) or '-'}); "
          f"max |logit diff| / max |logit| {rel:.4f}")
    fork = "" if fork_gap is None else f" (there llmgpu's logits of the two picks differ by {fork_gap:.3f})"
    print(f"greedy ({len(greedy_ours)} tokens): the same for the first {same}{fork}; llmgpu: {str(answer)[:120]!r}")
    print(f"{'':17}llama.cpp: {res['greedy_llama_cpp'][:120]!r}")
    print(f"tokenization of {len(texts)} texts (chat prompt included) equal: {all(tok_ok)} {tok_ok}")

    if a.compressed_tensors:
        res.update(check_compressed_tensors(model, out, ids, ours))
    (out / "result.json").write_text(json.dumps(res, indent=1, ensure_ascii=False))
    print("JSON", json.dumps({k: v for k, v in res.items() if not k.startswith("greedy_l")}, ensure_ascii=False))
    return 0 if agree >= a.min_top1 and all(tok_ok) else 1


def check_compressed_tensors(model: str, out: Path, ids: list[int], ours: np.ndarray) -> dict:
    import torch
    import transformers

    ct = out / "export-ct"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "llmgpu.cli", "export", model, "--to", "compressed-tensors", "-o",
                        str(ct), "--force", "--requantize", "-q"], capture_output=True, text=True, check=True)
    export_s = time.perf_counter() - t0
    m = transformers.AutoModelForCausalLM.from_pretrained(ct, dtype=torch.float32).eval()
    m.hf_quantizer.compressor.decompress_model(m)
    with torch.no_grad():
        theirs = m(torch.tensor([ids])).logits[0].numpy()
    agree = top1(ours, theirs[:, :ours.shape[1]])
    warning = next((ln for ln in r.stderr.splitlines() if "warning" in ln), "")
    print(f"compressed-tensors export: {export_s:.1f} s; transformers (CPU, f32) vs llmgpu top-1 agreement "
          f"{agree:.4f}{' (weights re-quantized: ' + warning.split('so the export')[-1][:160] + ')' if warning else ''}")
    return {"ct_export_s": round(export_s, 1), "ct_top1_agreement": round(agree, 4), "ct_warning": warning}


if __name__ == "__main__":
    sys.exit(main())
