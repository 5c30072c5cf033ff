#!/bin/bash
# Vulkan q8 with the first chunk loaded before x is rounded (qmoe_prefetch; packed as .dev/gpu.tar.xz by
# bench/pack-gpu.sh), and the same with 2x and 4x the rows per workgroup in the q8 row kernels (.dev/q8x2, q8x4:
# build/qmoe generated with QMOE_GLSL_Q8_ROWS=2,2,2 and 4,4,4): test_parity_vulkan on NVIDIA's driver, then Vulkan
# decode on the qwen3-30b-a3b preset, q8 with --stages for each, f32, and q8 again for each. Then whether shared
# memory per workgroup limits the row kernels: .dev/sg32 (sw[] sized for 32-wide subgroups only: 17 KiB, not
# 21.5) and .dev/lb32 (that, and 32 bytes per lane per row per chunk: 8.7 KiB), built with QMOE_GLSL_SGMIN=32
# [QMOE_GLSL_LB=32]: NVIDIA-only packs (a smaller subgroup would get NaN rows).
cd "$(dirname "$0")/../.."
N=resvkq8b; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C .dev -xJf .dev/gpu.tar.xz; A=.dev/gpu; for x in q8x2 q8x4 sg32 lb32; do tar -C .dev -xJf .dev/$x.tar.xz; done
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env "$@" timeout 200 $A/tests/$t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
t1 parity_vulkan test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1


wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
V="--backend vulkan -p 8 -n 32 --repeats 3 --json"
C="--backend cuda -p 64 -n 64 --repeats 3 --json"
S="$V --stages"
run vk-f32-stages timeout 150 $A/qmoe bench -m $M $S
run vk-q8-stages timeout 150 $A/qmoe bench -m $M $S --acc q8
run vk-f32-lb32-stages timeout 150 .dev/lb32/qmoe bench -m $M $S
run vk-f32-sg32-stages timeout 150 .dev/sg32/qmoe bench -m $M $S
run vk-q8x2-stages timeout 150 .dev/q8x2/qmoe bench -m $M $S --acc q8
run vk-q8x4-stages timeout 150 .dev/q8x4/qmoe bench -m $M $S --acc q8
run vk-q8-lb32-stages timeout 150 .dev/lb32/qmoe bench -m $M $S --acc q8
run vk-f32-stages-2 timeout 150 $A/qmoe bench -m $M $S
run vk-f32-lb32-stages-2 timeout 150 .dev/lb32/qmoe bench -m $M $S
ls -la $R | head -3; save
