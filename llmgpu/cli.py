"""The `llmgpu` command line: generate | chat | bench | quantize | perplexity."""
from __future__ import annotations

import argparse
import sys


def _bench(args) -> int:
    if args.what == "kernels":
        from . import bench_kernels
        return bench_kernels.run(args)
    from . import bench
    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmgpu", description="LLM inference on wgpu (WebGPU)")
    p.add_argument("--adapter", default=None,
                   help="pick the GPU adapter whose name or backend contains this text "
                        "(also LLMGPU_ADAPTER); default: the high-performance one")
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("bench", help="benchmarks: tokens/s of a model, or `bench kernels`")
    b.add_argument("what", nargs="?", choices=["kernels"], help="`kernels`: the q4gsw GEMV/GEMM alone")
    from . import bench_kernels
    bench_kernels.add_arguments(b)
    b.set_defaults(func=_bench)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"llmgpu: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
