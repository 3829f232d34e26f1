"""Run llmgpu bench (the model benchmark) without the CLI: python3 bench/bench_model.py --shape NAME ..."""
import argparse
import sys
from llmgpu import bench, bench_kernels
p = argparse.ArgumentParser(); p.add_argument("--adapter")
bench_kernels.add_arguments(p); bench.add_arguments(p)
a = p.parse_args(sys.argv[1:])
bench.run(a)
