#!/bin/bash
# The H200 run recorded in docs/gpu-results.md at 53eb743 (2026-12-02): GPU tests (CUDA and NVIDIA Vulkan), the
# Hugging Face oracle, then qmoe bench. Prepared on the build machine (docs/cuda.md "Running the GPU tests"):
#   bash tests/gpu.sh --pack .dev/gpu; cp build/qmoe .dev/gpu/; mkdir .dev/gpu/models; cp build/models/tiny.gguf .dev/gpu/models/
#   tar -C .dev -cJf .dev/gpu.tar.xz gpu; rm -r .dev/gpu
#   (cd .gl && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
#   pip download --no-deps -d .whl gguf; pip download --no-deps -d .whl tokenizers --python-version 3.12 \
#     --only-binary=:all: --platform manylinux2014_x86_64
# and run on the GPU machine from the repository root with .dev, .gl and .whl carried: bash bench/runs/<this file>.
# Results go to $OUT/res.tgz.
cd "$(dirname "$0")/../.."
R=/tmp/res; mkdir -p $R
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export QMOE_CUDA_CACHE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
for t in test_cuda_backend test_parity_cuda test_cuda_runtime test_model test_model_falsifiers test_cuda_graph test_embed_rows test_qk_norm_rope test_add_rmsnorm test_parity_vulkan test_vk_runtime test_vk_graph; do
  QMOE_TEST_REQUIRE_BACKEND=1 timeout 240 $B/tests/$t > $R/$t.log 2>&1; echo "$t exit $? ok=$(grep -c '^ok' $R/$t.log) notok=$(grep -c '^not ok' $R/$t.log) skip=$(grep -c '^skip' $R/$t.log)"; grep '^not ok' $R/$t.log | head -5
done
QMOE_BIN=$B PYTHONUNBUFFERED=1 timeout 150 python3 tests/oracle/check_oracle.py > $R/oracle.log 2>&1; echo "oracle exit $?: $(grep -c '^ok' $R/oracle.log) ok, $(grep -c '^not ok' $R/oracle.log) not ok"; grep -E '^(not ok|skip)' $R/oracle.log | head
QMOE_TEST_REQUIRE_BACKEND=1 timeout 120 $B/tests/test_vk_perf > $R/test_vk_perf.log 2>&1; grep '^ok bench' $R/test_vk_perf.log | sed 's/^ok bench.vulkan.//' | head -20
wait $MK; echo "make-model $?"
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'])" 2>&1|tail -1)"; }
run cuda timeout 150 $B/qmoe bench -m $M --backend cuda -p 128 -n 64 --repeats 3 --stages --json
run cuda-p512 timeout 150 $B/qmoe bench -m $M --backend cuda -p 512 -n 128 --repeats 3 --json
run cuda-ctx4096 timeout 90 $B/qmoe bench -m $M --backend cuda -p 16 -n 64 --repeats 3 --depth 4096 --json
run cuda-ctx32768 timeout 90 $B/qmoe bench -m $M --backend cuda -p 16 -n 64 --repeats 3 --depth 32768 --json
run cuda-f64 timeout 120 $B/qmoe bench -m $M --backend cuda --acc f64 -p 32 -n 32 --repeats 3 --stages --json
run cuda-occ8 QMOE_CUDA_DEFINES=QMOE_OCC8 timeout 150 $B/qmoe bench -m $M --backend cuda -p 128 -n 64 --repeats 3 --json
run vulkan timeout 200 $B/qmoe bench -m $M --backend vulkan -p 16 -n 16 --repeats 3 --stages --json
run vulkan-ctx4096 timeout 120 $B/qmoe bench -m $M --backend vulkan -p 4 -n 8 --repeats 2 --depth 4096 --json
tar -C /tmp -czf ${OUT:-.}/res.tgz res
