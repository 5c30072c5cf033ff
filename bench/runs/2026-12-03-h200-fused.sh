#!/bin/bash
# Vulkan router_topk and attention as one dispatch each (the last workgroup to finish runs the second pass: .dev/fused,
# 5f77d3b) against the two-dispatch stages (.dev/cur, 12f69cd); both packed by bench/pack-gpu.sh. Parity, the
# runtime and graph tests and test_model (the whole forward on Vulkan and CUDA against the CPU) on NVIDIA's driver;
# Vulkan decode alternated, f32 and q8, --stages; the floor (QMOE_VK_EMPTY=all) of both; CUDA for the ratio.
cd "$(dirname "$0")/../.."
N=resfused; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for x in cur fused; do tar -C .dev -xJf .dev/$x.tar.xz; done; A=.dev/cur; B=.dev/fused
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env "$@" timeout 150 $t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
t1 parity_vulkan-fused $B/tests/test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
t1 vk_runtime-fused $B/tests/test_vk_runtime QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
V="--backend vulkan -p 8 -n 32 --repeats 3 --json --copy-mib 64"
run vk-f32-stages-fused timeout 120 $B/qmoe bench -m $M $V --stages
for i in 1 2; do for x in cur fused; do run vk-f32-$x-$i timeout 60 .dev/$x/qmoe bench -m $M $V; done; done
for x in cur fused; do run vk-q8-$x timeout 60 .dev/$x/qmoe bench -m $M $V --acc q8; done
for x in cur fused; do run vk-f32-empty-$x QMOE_VK_EMPTY=all timeout 60 .dev/$x/qmoe bench -m $M $V; done
run vk-f32-ctx4k-fused timeout 60 $B/qmoe bench -m $M --backend vulkan -p 8 -n 32 --repeats 3 --json --copy-mib 64 --depth 4096 --ctx 4160
run vk-f32-ctx4k-cur timeout 60 $A/qmoe bench -m $M --backend vulkan -p 8 -n 32 --repeats 3 --json --copy-mib 64 --depth 4096 --ctx 4160
run cuda-f32 timeout 60 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
run cuda-q8 timeout 60 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json --acc q8
t1 vk_graph-fused $B/tests/test_vk_graph QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
t1 model-fused $B/tests/test_model QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
ls -la $R | head -3; save
