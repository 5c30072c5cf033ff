#!/bin/bash
# What the Vulkan decode graph costs without its work, and what changes it: main at 12f69cd (.dev/cur, that
# commit's code: QMOE_VK_EMPTY, QMOE_VK_GRAPH_DIRECT, QMOE_VK_GRAPH_BARRIER) and the row kernels with workgroups of
# 64 invocations (.dev/wg64: built with QMOE_GLSL_QWG=64); both packed by bench/pack-gpu.sh.
cd "$(dirname "$0")/../.."
N=resfloor; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for x in cur wg64; do tar -C .dev -xJf .dev/$x.tar.xz; done; A=.dev/cur; B=.dev/wg64
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env "$@" timeout 150 $t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
t1 parity_vulkan-cur $A/tests/test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
V="--backend vulkan -p 8 -n 32 --repeats 3 --json --copy-mib 64"
D=QMOE_VK_GRAPH_DIRECT=1; C=QMOE_VK_GRAPH_BARRIER=compute; X=QMOE_VK_GRAPH_BARRIER=none; E=QMOE_VK_EMPTY=all
run vk-f32 timeout 60 $A/qmoe bench -m $M $V
run vk-f32-direct $D timeout 60 $A/qmoe bench -m $M $V
run vk-f32-compute $C timeout 60 $A/qmoe bench -m $M $V
run vk-f32-direct-compute $D $C timeout 60 $A/qmoe bench -m $M $V
run vk-f32-empty $E timeout 60 $A/qmoe bench -m $M $V
run vk-f32-empty-direct $E $D timeout 60 $A/qmoe bench -m $M $V
run vk-f32-empty-compute $E $C timeout 60 $A/qmoe bench -m $M $V
run vk-f32-empty-none $E $X timeout 60 $A/qmoe bench -m $M $V
run vk-f32-empty-direct-none $E $D $X timeout 60 $A/qmoe bench -m $M $V
run vk-f32-stages-wg64 timeout 120 $B/qmoe bench -m $M $V --stages
run vk-f32-wg64 timeout 60 $B/qmoe bench -m $M $V
run vk-f32-2 timeout 60 $A/qmoe bench -m $M $V
run vk-f32-wg64-2 timeout 60 $B/qmoe bench -m $M $V
run vk-q8 timeout 60 $A/qmoe bench -m $M $V --acc q8
run vk-q8-wg64 timeout 60 $B/qmoe bench -m $M $V --acc q8
run vk-q8-direct-compute $D $C timeout 60 $A/qmoe bench -m $M $V --acc q8
run cuda-f32 timeout 60 $A/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
t1 vk_runtime-cur $A/tests/test_vk_runtime QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
t1 parity_vulkan-wg64 $B/tests/test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
ls -la $R | head -3; save
