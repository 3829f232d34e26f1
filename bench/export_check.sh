#!/usr/bin/env bash
# Does llama.cpp load llmgpu's GGUF export and run it as llmgpu does? Builds bench/lcpp_logits.cpp
# against a llama.cpp CMake build, exports the model with `llmgpu export --to gguf`, and compares
# (bench/export_check.py): top-1 agreement over ~200 teacher-forced tokens (asked: >= 0.95), greedy
# answers, tokenization. Not a CI test: llama.cpp takes too long to build there.
#
#   bash bench/export_check.sh LLAMA_CPP_BUILD_DIR [MODEL] [-- export_check.py options]
#
# LLAMA_CPP_BUILD_DIR: a CMake build of llama.cpp with the shared library (libllama.so, the default
# BUILD_SHARED_LIBS=ON); its CMakeCache.txt says where the source (the headers) is. The sdist of
# llama-cpp-python==0.3.36 carries llama.cpp; a CPU build of the library alone:
#   pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcpp
#   tar xzf /tmp/lcpp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcpp
#   cmake -S /tmp/lcpp/llama_cpp_python-0.3.36/vendor/llama.cpp -B /tmp/lcpp/build -DCMAKE_BUILD_TYPE=Release \
#     -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF
#   cmake --build /tmp/lcpp/build -j2 --target llama
# (on the GPU machine add -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90a, and NGL=99 below).
# MODEL: what llmgpu exports (default: the default model, the GGUF that install.sh installs).
# Environment: PYTHON (default: .venv/bin/python if present, else python3), NGL (llama.cpp layers
# on the GPU, default 0), OUT (default: a new temporary directory; the export, logits and result.json).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash bench/export_check.sh LLAMA_CPP_BUILD_DIR [MODEL] [-- options]" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd) || { echo "export_check: $1: no such directory" >&2; exit 2; }
shift
model=()
if [ $# -ge 1 ] && [ "$1" != "--" ]; then model=(--model "$1"); shift; fi
[ "${1:-}" = "--" ] && shift
[ -f "$build/CMakeCache.txt" ] || { echo "export_check: $build has no CMakeCache.txt: not a CMake build directory" >&2; exit 2; }
src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
lib=$(find "$build" -name 'libllama.so' -print -quit)
[ -n "$lib" ] || { echo "export_check: no libllama.so under $build; build the 'llama' target (shared)" >&2; exit 2; }
[ -f "$src/include/llama.h" ] || { echo "export_check: no llama.h in $src/include" >&2; exit 2; }
libdir=$(dirname "$lib")
out=${OUT:-$(mktemp -d /tmp/export_check.XXXXXX)}
mkdir -p "$out"
g++ -O2 -std=c++17 "$root/bench/lcpp_logits.cpp" -I"$src/include" -I"$src/ggml/include" -L"$libdir" -lllama \
  -Wl,-rpath,"$libdir" -o "$out/lcpp_logits"
py=${PYTHON:-}
[ -n "$py" ] || { [ -x "$root/.venv/bin/python" ] && py="$root/.venv/bin/python" || py=python3; }
cd "$root"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
echo "export_check: llama.cpp $(git -C "$src" describe --tags 2>/dev/null || basename "$(dirname "$(dirname "$src")")"), build $build, results in $out"
exec "$py" bench/export_check.py --helper "$out/lcpp_logits" --out "$out" --ngl "${NGL:-0}" "${model[@]}" "$@"
