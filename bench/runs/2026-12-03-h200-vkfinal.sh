#!/bin/bash
# Not run as such: its check (parity of 444ba20 on NVIDIA, and its decode) ran as the base build of
# bench/runs/2026-12-03-h200-dbuf.sh. Written 2026-12-03, when that session had no device time left. The first check for the next
# session: the default build (LB 32 and the capped q8 records together) was measured only as parts (vklb, vklb16).
# The session's final Vulkan kernels (packed as .dev/gpu.tar.xz by bench/pack-gpu.sh): test_parity_vulkan on
# NVIDIA's driver, then Vulkan decode on the qwen3-30b-a3b preset, f32 and q8, with --stages and without, and f64.
cd "$(dirname "$0")/../.."
N=resvkfinal; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C .dev -xJf .dev/gpu.tar.xz; A=.dev/gpu
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env "$@" timeout 200 $A/tests/$t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
t1 parity_vulkan test_parity_vulkan QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
V="--backend vulkan -p 8 -n 32 --repeats 3 --json"
run vk-f32-stages timeout 150 $A/qmoe bench -m $M $V --stages
run vk-q8-stages timeout 150 $A/qmoe bench -m $M $V --stages --acc q8
run vk-f32 timeout 150 $A/qmoe bench -m $M $V
run vk-q8 timeout 150 $A/qmoe bench -m $M $V --acc q8
run vk-f64-stages timeout 150 $A/qmoe bench -m $M --backend vulkan -p 8 -n 16 --repeats 2 --json --stages --acc f64
ls -la $R | head -3; save
