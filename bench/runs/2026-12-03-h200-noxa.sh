#!/bin/bash
# Vulkan row kernels reading x at each step instead of one step ahead (fewer live registers; .dev/noxa: worktree
# 6360e41 + bench/runs/2026-12-03-h200-noxa.patch, an X_AHEAD template switch, generated with QMOE_GLSL_EXP=noxahead) against main's
# (.dev/fused, 5f77d3b: the same shaders as 6360e41). Registers per pipeline (QMOE_VK_PIPELINE_STATS=1), parity
# on NVIDIA for noxa, Vulkan decode alternated, f32 with --stages.
cd "$(dirname "$0")/../.."
N=resnoxa; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for x in fused noxa; do tar -C .dev -xJf .dev/$x.tar.xz; done; A=.dev/fused; B=.dev/noxa
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env "$@" timeout 150 $t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
t1 parity_vulkan-noxa $B/tests/test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
V="--backend vulkan -p 8 -n 32 --repeats 3 --json --copy-mib 64"
for x in fused noxa; do run vk-f32-stats-$x QMOE_VK_PIPELINE_STATS=1 timeout 60 .dev/$x/qmoe bench -m $M --backend vulkan -p 2 -n 2 --repeats 1 --json --copy-mib 16; grep -i "register" $R/bench-vk-f32-stats-$x.err | grep -E "matvec__q4_k__f32|matvec__q6_k__f32|gate_up_swiglu__q4_k__f32|moe_down__q4_k__f32|moe_down__q6_k__f32" | head -5; done
run vk-f32-stages-noxa timeout 120 $B/qmoe bench -m $M $V --stages
run vk-f32-stages-fused timeout 120 $A/qmoe bench -m $M $V --stages
for i in 1 2; do for x in fused noxa; do run vk-f32-$x-$i timeout 60 .dev/$x/qmoe bench -m $M $V; done; done
ls -la $R | head -3; save
