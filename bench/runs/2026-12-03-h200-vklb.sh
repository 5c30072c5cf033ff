#!/bin/bash
# The Vulkan row kernels with 32 bytes per lane per row of a chunk and sw[] sized for the device's subgroup size
# (packed as .dev/gpu.tar.xz by bench/pack-gpu.sh), and the q8 row kernels with 4x the rows per workgroup in
# gate+up and down (.dev/q8r: build/qmoe generated with QMOE_GLSL_Q8_ROWS=1,4,4): the Vulkan tests on NVIDIA's
# driver, then decode on the qwen3-30b-a3b preset, Vulkan f32 and q8 with --stages, and CUDA f32 and q8 in the
# same run (issue 11's ratio); then test_model (the whole forward on Vulkan and CUDA against the CPU).
cd "$(dirname "$0")/../.."
N=resvklb; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C .dev -xJf .dev/gpu.tar.xz; tar -C .dev -xJf .dev/q8r.tar.xz; A=.dev/gpu
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env "$@" timeout 200 $A/tests/$t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
t1 parity_vulkan test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
t1 vk_runtime test_vk_runtime QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
S="--backend vulkan -p 8 -n 32 --repeats 3 --json --stages"
C="--backend cuda -p 64 -n 64 --repeats 3 --json"
run vk-f32-stages timeout 150 $A/qmoe bench -m $M $S
run vk-q8-stages timeout 150 $A/qmoe bench -m $M $S --acc q8
run vk-q8r-stages timeout 150 .dev/q8r/qmoe bench -m $M $S --acc q8
run cuda-f32 timeout 60 $A/qmoe bench -m $M $C
run cuda-q8 timeout 60 $A/qmoe bench -m $M $C --acc q8
run vk-f32-stages-2 timeout 150 $A/qmoe bench -m $M $S
t1 model test_model QMOE_TEST_REQUIRE_BACKEND=1
ls -la $R | head -3; save
