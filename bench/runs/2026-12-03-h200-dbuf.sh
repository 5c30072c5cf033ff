#!/bin/bash
# Vulkan row kernels with the next chunk loaded into registers while the current one is decoded (.dev/dbuf, 035aa80),
# and with a subgroup's next rows asked for during its last chunk (.dev/dbuf2, bf52762: moe_down's next expert),
# against main before them (.dev/base, 444ba20: the build bench/runs/2026-12-03-h200-vkfinal.sh was written for);
# all packed by bench/pack-gpu.sh. Parity on NVIDIA's driver for both, Vulkan decode f32 and q8 with --stages,
# alternated; the graph's floor and per-stage cost inside it with QMOE_VK_EMPTY (dbuf build); CUDA for the ratio.
cd "$(dirname "$0")/../.."
N=resdbuf; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for x in base dbuf dbuf2; do tar -C .dev -xJf .dev/$x.tar.xz; done; A=.dev/base; B=.dev/dbuf; C=.dev/dbuf2
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env "$@" timeout 150 $t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
t1 parity_vulkan-dbuf2 $C/tests/test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
t1 vk_runtime-dbuf2 $C/tests/test_vk_runtime QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
V="--backend vulkan -p 8 -n 32 --repeats 3 --json --copy-mib 64"
run vk-f32-stages-base timeout 120 $A/qmoe bench -m $M $V --stages
run vk-f32-stages-dbuf timeout 120 $B/qmoe bench -m $M $V --stages
run vk-f32-stages-dbuf2 timeout 120 $C/qmoe bench -m $M $V --stages
run vk-q8-stages-base timeout 120 $A/qmoe bench -m $M $V --stages --acc q8
run vk-q8-stages-dbuf2 timeout 120 $C/qmoe bench -m $M $V --stages --acc q8
for i in 1 2; do for x in base dbuf dbuf2; do run vk-f32-$x-$i timeout 60 .dev/$x/qmoe bench -m $M $V; done; done
for x in base dbuf2; do run vk-q8-$x timeout 60 .dev/$x/qmoe bench -m $M $V --acc q8; done
for s in all moe_gate_up_swiglu moe_down matvec router_topk attention add_rmsnorm qk_norm_rope; do
  run vk-f32-empty-$s QMOE_VK_EMPTY=$s timeout 60 $C/qmoe bench -m $M $V
done
run cuda-f32 timeout 60 $C/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
run cuda-q8 timeout 60 $C/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json --acc q8
t1 parity_vulkan-dbuf $B/tests/test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
t1 parity_vulkan-base $A/tests/test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
ls -la $R | head -3; save
