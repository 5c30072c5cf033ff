#!/bin/sh
# pack-gpu.sh [NAME]: the programs a GPU run needs (qmoe and the GPU tests, built here: they need only glibc)
# into .dev/NAME.tar.xz (default gpu), unpacked there by the bench/runs scripts as .dev/NAME. Run after ninja.
set -e
cd "$(dirname "$0")/.."
N=${1:-gpu}
T=$(mktemp -d)
mkdir -p "$T/$N/tests" .dev
cp build/qmoe "$T/$N/"
for t in test_parity_cuda test_parity_vulkan test_model test_cuda_graph test_cuda_backend test_router_nan test_vk_perf \
         test_vk_runtime test_vk_graph test_embed_rows test_qk_norm_rope test_add_rmsnorm; do
  [ -x "build/tests/$t" ] && cp "build/tests/$t" "$T/$N/tests/"
done
tar -C "$T" -cJf ".dev/$N.tar.xz" "$N"
rm -rf "$T"
ls -l ".dev/$N.tar.xz"
