#!/bin/bash
# Shared memory per Vulkan row-kernel workgroup, further (packs of build/qmoe and test_parity_vulkan generated
# with the experiment switches of codegen/gen_glsl.lua): .dev/lb16 (QMOE_GLSL_LB0=16: 16 bytes per lane per row of
# a chunk, 4.6 KiB on NVIDIA), .dev/qx (QMOE_GLSL_QX=4096,4096,6144: the q8 records capped per stage, 5 / 5 / 7.7
# KiB instead of 10), .dev/lb16qx (both); against the default (.dev/gpu, bench/pack-gpu.sh). Parity on NVIDIA for
# lb16 and lb16qx, then Vulkan decode with --stages, f32 and q8.
cd "$(dirname "$0")/../.."
N=resvklb16; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for x in gpu lb16 qx lb16qx; do tar -C .dev -xJf .dev/$x.tar.xz; done; A=.dev/gpu
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env "$@" timeout 200 $t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
t1 parity_vulkan-lb16 .dev/lb16/test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
t1 parity_vulkan-lb16qx .dev/lb16qx/test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
S="--backend vulkan -p 8 -n 32 --repeats 3 --json --stages"
run vk-f32 timeout 150 $A/qmoe bench -m $M $S
run vk-f32-lb16 timeout 150 .dev/lb16/qmoe bench -m $M $S
run vk-q8 timeout 150 $A/qmoe bench -m $M $S --acc q8
run vk-q8-qx timeout 150 .dev/qx/qmoe bench -m $M $S --acc q8
run vk-q8-lb16qx timeout 150 .dev/lb16qx/qmoe bench -m $M $S --acc q8
run vk-f32-lb16-2 timeout 150 .dev/lb16/qmoe bench -m $M $S
run vk-f32-2 timeout 150 $A/qmoe bench -m $M $S
ls -la $R | head -3; save
