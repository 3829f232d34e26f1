"""Peer for `llmgpu bench kernels`: PyTorch's int4 tinygemm (`_weight_int4pack_mm`) on CUDA,
same projection shapes, group size, cache-defeating weight rotation and M = 1 / M = 512.

usage (on a CUDA machine): python3 bench/peer_torch_int4.py [--shapes llama-3.1-8b,llama-3.2-1b]
Prints one JSON line per shape and a table. Bytes counted: int4 weights + bf16 scales and zeros.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmgpu.bench_kernels import projection_shapes  # noqa: E402


def pack(N, K, gs, dev):
    w = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, device=dev)
    packed = torch.ops.aten._convert_weight_to_int4pack(w, 8)
    sz = torch.randn(K // gs, N, 2, device=dev, dtype=torch.bfloat16) * 0.01
    return packed, sz


def time_it(fn, reps=200):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn(0)
    torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        s.record()
        for r in range(reps):
            fn(r)
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / 1e3 / reps)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama-3.1-8b,llama-3.2-1b")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("-m", type=int, default=512)
    a = ap.parse_args()
    dev = "cuda"
    gs = a.group_size
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for name in a.shapes.split(","):
        for lab, N, K in projection_shapes(name):
            one = N * K // 2 + (K // gs) * N * 4
            copies = [pack(N, K, gs, dev) for _ in range(max(1, min(8, -(-(256 << 20) // one))))]
            x1 = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
            xm = torch.randn(a.m, K, device=dev, dtype=torch.bfloat16)
            mm = torch.ops.aten._weight_int4pack_mm
            t1 = time_it(lambda r: mm(x1, copies[r % len(copies)][0], gs, copies[r % len(copies)][1]))
            tm = time_it(lambda r: mm(xm, copies[r % len(copies)][0], gs, copies[r % len(copies)][1]), 20)
            row = dict(shape=name, proj=lab, N=N, K=K, gemv_us=t1 * 1e6, gemv_gbs=one / t1 / 1e9,
                       M=a.m, gemm_ms=tm * 1e3, gemm_tflops=2 * a.m * N * K / tm / 1e12)
            print("JSON", json.dumps(row))
            print(f"{name:<14} {lab:<8} {N:>6}x{K:<6} M=1 {t1 * 1e6:8.1f} us {one / t1 / 1e9:8.1f} GB/s   "
                  f"M={a.m} {tm * 1e3:8.3f} ms {2 * a.m * N * K / tm / 1e12:7.2f} TFLOP/s")
            del copies
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
