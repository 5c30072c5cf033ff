#!/bin/bash
# span tables + aligned word reads in the CUDA row kernels and the GLSL row shaders: GPU tests, decode A/B
# (default against QMOE_NO_SPAN_TAB + QMOE_NO_WORD_A4, with stages; each alone), Vulkan stages (runs of 16 and 8),
# prefill 512. Ordered by priority: the device call's 600 s may end it; every result is saved as it comes.
cd "$(dirname "$0")/../.."
R=/tmp/res99ced9b; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-.}/res.tgz res99ced9b; }
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export QMOE_CUDA_CACHE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
for t in test_parity_cuda test_model test_cuda_graph test_parity_vulkan test_router_nan; do
  QMOE_TEST_REQUIRE_BACKEND=1 timeout 200 $B/tests/$t > $R/$t.log 2>&1; echo "$t exit $? ok=$(grep -c '^ok' $R/$t.log) notok=$(grep -c '^not ok' $R/$t.log) skip=$(grep -c '^skip' $R/$t.log)"; grep '^not ok' $R/$t.log | head -5
done
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['prefill_chunk'],d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'])" 2>&1|tail -1)"; save; }
run cuda-stages timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run cuda-neither QMOE_CUDA_DEFINES=QMOE_NO_SPAN_TAB,QMOE_NO_WORD_A4 timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run vulkan-stages QMOE_VK_PIPELINE_STATS=1 timeout 150 $B/qmoe bench -m $M --backend vulkan -p 8 -n 16 --repeats 3 --stages --json
# the same binaries with the GLSL row shaders at runs of 8 (span tables then serve q6_k too): built at this commit
# with gen_glsl.lua's runs of 16 turned off (not committed), packed as .dev/gpu-rl8.tar.xz
mkdir -p .dev/rl8 && tar -C .dev/rl8 -xJf .dev/gpu-rl8.tar.xz
run vulkan-stages-rl8 QMOE_VK_PIPELINE_STATS=1 timeout 150 .dev/rl8/gpu/qmoe bench -m $M --backend vulkan -p 8 -n 16 --repeats 3 --stages --json
run cuda-nospan QMOE_CUDA_DEFINES=QMOE_NO_SPAN_TAB timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
run cuda-noa4 QMOE_CUDA_DEFINES=QMOE_NO_WORD_A4 timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
run cuda-p512 timeout 150 $B/qmoe bench -m $M --backend cuda -p 512 -n 128 --repeats 3 --json
save
