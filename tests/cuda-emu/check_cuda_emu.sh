#!/bin/sh
# check_cuda_emu.sh: runs the CUDA backend's GPU tests (the generated parity test, test_cuda_backend, test_embed_rows,
# test_qk_norm_rope, test_add_rmsnorm, test_cuda_graph, test_router_nan and test_model: the forward, batched
# prefill included) on this machine, without a GPU, through stand-ins for
# libcuda.so.1 and libnvrtc.so (fake_cuda.c, fake_nvrtc.c): each
# generated kernel is compiled as C++ with emu.h and run with real block/warp semantics on fibers. This checks
# the kernels' logic and indexing, their launch geometry and the whole runtime path (variant lookup, NVRTC
# calls, CUBIN cache, buffers with guard pages) against the CPU reference. Timing and the device's own
# arithmetic are checked only on a GPU (tests/gpu.sh).
# qmoe-test: normal-only (fibers switch stacks, which the sanitizers do not follow)
BIN=${QMOE_BIN:-build}
D=build/cuda-emu
mkdir -p "$D"
fails=0
CC=${CC:-cc}
if ! command -v "${QMOE_EMU_CXX:-c++}" >/dev/null 2>&1; then
  echo "skip cuda-emu: no C++ compiler (${QMOE_EMU_CXX:-c++}) to build the kernels for the host"
  exit 0
fi
if ! $CC -shared -fPIC -O1 -Wall -o "$D/libcuda.so.1" tests/cuda-emu/fake_cuda.c -ldl 2>"$D/build.log" ||
   ! $CC -shared -fPIC -O1 -Wall -o "$D/libnvrtc.so" tests/cuda-emu/fake_nvrtc.c 2>>"$D/build.log"; then
  echo "not ok cuda-emu/build: $(cat "$D/build.log")"
  exit 1
fi
# The fakes come first on the library path; the cache persists (keys hash the kernel's source, so stale entries
# are only unused files) in a directory named after emu.h's checksum: a kernel built with another emu.h (its
# launcher, its block order) is never reused.
LD_LIBRARY_PATH="$PWD/$D${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
QMOE_EMU_HEADER="$PWD/tests/cuda-emu/emu.h"
QMOE_CUDA_CACHE="$PWD/$D/cache-$(cksum < tests/cuda-emu/emu.h | cut -d' ' -f1)"
mkdir -p "$QMOE_CUDA_CACHE"
QMOE_TEST_REQUIRE_BACKEND=1
export LD_LIBRARY_PATH QMOE_EMU_HEADER QMOE_CUDA_CACHE QMOE_TEST_REQUIRE_BACKEND
unset QMOE_CUDA_DEVICE QMOE_CUDA_SYNC

run() { # name, program
  out="$D/$1.out"
  "$BIN/tests/$2" >"$out" 2>&1
  rc=$?
  sed -n 's/^ok /ok emu\//p; s/^not ok /not ok emu\//p; s/^skip /skip emu\//p' "$out"
  if [ "$rc" -ne 0 ] && ! grep -q '^not ok ' "$out"; then
    echo "not ok emu/$2: exit status $rc: $(tail -5 "$out")"
    fails=$((fails + 1))
  fi
  grep -q '^not ok ' "$out" && fails=$((fails + 1))
  if ! grep -q '^ok ' "$out"; then echo "not ok emu/$2: no case passed"; fails=$((fails + 1)); fi
}
run parity test_parity_cuda
run backend test_cuda_backend
run embed test_embed_rows
run qkrope test_qk_norm_rope
run addnorm test_add_rmsnorm
run graph test_cuda_graph
run routernan test_router_nan
run model test_model

# The emulator really was the device (a test that skipped or used another device would prove nothing).
if grep -q "qmoe host emulator" "$D/backend.out" || QMOE_EMU_NO_DEVICE=0 "$BIN/tests/test_cuda_runtime" 2>&1 | grep -q "# opened qmoe host emulator"; then
  echo "ok emu/device is the host emulator"
else
  echo "not ok emu/device: the CUDA backend did not open the emulated device"
  fails=$((fails + 1))
fi
# A driver that sees no device: the plain message.
QMOE_EMU_NO_DEVICE=1 "$BIN/tests/test_cuda_runtime" >"$D/nodev.out" 2>&1
if grep -q "^ok test_open_says_why" "$D/nodev.out"; then echo "ok emu/no device: plain message"
else echo "not ok emu/no device: $(grep test_open_says_why "$D/nodev.out")"; fails=$((fails + 1)); fi
[ "$fails" -eq 0 ]
