#!/usr/bin/env bash
# gpu.sh: runs every test that needs an NVIDIA GPU — the CUDA backend (parity with the CPU reference, unit tests,
# NVRTC compilation for the device), the whole model forward against the CPU (test_model, and the model
# contract's falsifiers in test_model_falsifiers; Vulkan included) and the Vulkan backend on NVIDIA's
# driver — from an already built tree, prints a summary and writes the whole log to ${OUT:-.}/gpu-tests.log.
# Exits non-zero on any failure.
# It never configures or builds: the machine with the GPU may lack Lua, libyaml and shaderc; the test
# binaries (build/tests/*) link those statically and need only libc, libm and libdl.
#
# Usage: tests/gpu.sh [--no-vulkan]        (from the repo root, after ./configure && ninja on any machine)
#        tests/gpu.sh --pack [DIR]          copy just the programs it runs into DIR/tests (default .gpu-build,
#                                           git-ignored through .git/info/exclude), to carry to the GPU machine
# Environment:
#   QMOE_BUILD_DIR   where the binaries are (default: build; only $QMOE_BUILD_DIR/tests/ is needed)
#   QMOE_GL_DEBS     a directory of .deb files holding libvulkan1 & co. (default: .gl when present); unpacked
#                    into / (as root) only when libvulkan.so.1 is not already installed
#   QMOE_VK_LOADER   path of libvulkan.so.1 to load instead (read by the Vulkan runtime)
#   QMOE_GPU_TIMEOUT seconds per test program (default 600)
#   OUT              directory for gpu-tests.log (default: .)
set -u
B=${QMOE_BUILD_DIR:-build}
LOGDIR=${OUT:-.}
LOG="$LOGDIR/gpu-tests.log"
TMO=${QMOE_GPU_TIMEOUT:-600}
vulkan=1
cuda_tests="test_parity_cuda test_cuda_backend test_cuda_runtime test_cuda_compile test_model test_model_falsifiers test_embed_rows test_qk_norm_rope test_add_rmsnorm test_cuda_graph test_router_nan"
vk_tests="test_parity_vulkan test_vk_runtime test_vk_perf test_vk_graph"
if [ "${1:-}" = "--pack" ]; then
  dst=${2:-.gpu-build}
  mkdir -p "$dst/tests" || exit 1
  for t in $cuda_tests $vk_tests; do
    [ -x "$B/tests/$t" ] || { echo "gpu.sh --pack: $B/tests/$t is missing (./configure && ninja first)" >&2; exit 1; }
    cp "$B/tests/$t" "$dst/tests/$t" || exit 1
  done
  case "$dst" in
    /*|../*) ;;
    *) gd=$(git rev-parse --git-dir 2>/dev/null) && mkdir -p "$gd/info" &&
         { grep -qx "/${dst#./}/" "$gd/info/exclude" 2>/dev/null || echo "/${dst#./}/" >>"$gd/info/exclude"; } ;;
  esac
  echo "packed $(du -sh "$dst" | cut -f1) into $dst; on the GPU machine: QMOE_BUILD_DIR=$dst bash tests/gpu.sh"
  exit 0
fi
for a in "$@"; do
  case "$a" in
    --no-vulkan) vulkan=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$a' (try --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$LOGDIR"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }

say "== qmoe GPU tests, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), host $(uname -n), build dir $B"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
  nvidia-smi >>"$LOG" 2>&1
else
  say "nvidia-smi: not found (no NVIDIA driver on this machine?)"
fi

# The build must be there already, and must not need libraries this machine lacks.
missing=""
for t in $cuda_tests $vk_tests; do [ -x "$B/tests/$t" ] || missing="$missing $t"; done
if [ -n "$missing" ]; then
  say "FAIL: missing test programs in $B/tests:$missing (build them first: ./configure && ninja)"
  exit 1
fi
for t in $cuda_tests $vk_tests; do
  nf=$(ldd "$B/tests/$t" 2>&1 | grep "not found")
  if [ -n "$nf" ]; then say "FAIL: $B/tests/$t needs libraries this machine lacks: $nf"; exit 1; fi
done

# Vulkan: the loader, from the system or from carried .deb files; NVIDIA's ICD where the loader misses it.
if [ "$vulkan" = 1 ] && [ -z "${QMOE_VK_LOADER:-}" ] && ! ldconfig -p 2>/dev/null | grep -q "libvulkan.so.1 "; then
  debs=${QMOE_GL_DEBS:-.gl}
  if ls "$debs"/*.deb >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "unpacking the Vulkan loader from $debs/*.deb"
    for f in "$debs"/*.deb; do dpkg -x "$f" / >>"$LOG" 2>&1; done
    ldconfig
  fi
fi
if [ "$vulkan" = 1 ] && [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [ -f "$icd" ] && ! ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1; then
    export VK_DRIVER_FILES=$icd
    say "using NVIDIA's Vulkan driver manifest $icd"
  fi
fi

# Kernels are compiled fresh (a private cache), and a backend that cannot open fails instead of skipping.
export QMOE_TEST_REQUIRE_BACKEND=1
QMOE_CUDA_CACHE=$(mktemp -d /tmp/qmoe-gpu-cache.XXXXXX)
export QMOE_CUDA_CACHE
trap 'rm -rf "$QMOE_CUDA_CACHE"' EXIT

total_ok=0; total_bad=0; total_skip=0; failed_progs=""
summary=()
run_test() { # program name
  local t=$1 out rc ok bad skip start secs
  say ""
  say "== $t"
  start=$(date +%s)
  out=$(mktemp)
  timeout "$TMO" "$B/tests/$t" >"$out" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  cat "$out" >>"$LOG"
  ok=$(grep -c '^ok ' "$out"); bad=$(grep -c '^not ok ' "$out"); skip=$(grep -c '^skip ' "$out")
  grep -E '^(not ok|skip) ' "$out"
  grep -E '^ok (bench|shape)/' "$out" | head -60
  if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; echo "not ok $t: exit status $rc$( [ $rc = 124 ] && echo ' (timed out after '"$TMO"' s)')" | tee -a "$LOG"; fi
  if [ $((ok + bad + skip)) -eq 0 ]; then bad=1; say "not ok $t: printed no results"; fi
  total_ok=$((total_ok + ok)); total_bad=$((total_bad + bad)); total_skip=$((total_skip + skip))
  [ "$bad" -gt 0 ] && failed_progs="$failed_progs $t"
  summary+=("$(printf '%-22s %4d ok %4d failed %4d skipped %5ss' "$t" "$ok" "$bad" "$skip" "$secs")")
  rm -f "$out"
}

for t in $cuda_tests; do run_test "$t"; done
if [ "$vulkan" = 1 ]; then for t in $vk_tests; do run_test "$t"; done; fi

say ""
say "== summary"
for l in "${summary[@]}"; do say "$l"; done
say "$total_ok passed, $total_bad failed, $total_skip skipped${failed_progs:+ (failing:$failed_progs)}"
say "log: $LOG"
[ "$total_bad" -eq 0 ]
