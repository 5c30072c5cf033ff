#!/bin/bash
# GLSL runs of 16; two graph lanes (q beside k, v; A/B QMOE_CUDA_NO_BRANCH); GLSL packed runs; CUDA runs of 16 (one map for one-token and many-token entries, tiles of 6) and the ranked router top-K: GPU tests,
# decode stages A/B against QMOE_RUNS8 in the same run, prefill 512, Nsight Compute over a one-token forward
cd "$(dirname "$0")/../.."
R=/tmp/res; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-.}/res.tgz res; }
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; git log --oneline -1 2>/dev/null; } | tee $R/env.txt
M=/tmp/m.gguf
( $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
for t in test_parity_cuda test_cuda_backend test_model test_router_nan test_cuda_graph test_parity_vulkan test_vk_graph; do
  QMOE_TEST_REQUIRE_BACKEND=1 timeout 240 $B/tests/$t > $R/$t.log 2>&1; echo "$t exit $? ok=$(grep -c '^ok' $R/$t.log) notok=$(grep -c '^not ok' $R/$t.log) skip=$(grep -c '^skip' $R/$t.log)"; grep '^not ok' $R/$t.log | head -5
done
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['prefill_chunk'],d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'])" 2>&1|tail -1)"; save; }
run cuda-stages timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run cuda-stages-runs8 QMOE_CUDA_DEFINES=QMOE_RUNS8 timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run cuda-stages-rscan QMOE_CUDA_DEFINES=QMOE_ROUTER_SCAN timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run cuda-nobranch QMOE_CUDA_NO_BRANCH=1 timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
run cuda-lanepdl QMOE_CUDA_LANE_PDL=1 timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
run cuda-p512 timeout 150 $B/qmoe bench -m $M --backend cuda -p 512 -n 128 --repeats 3 --json
save
run vulkan-stages timeout 150 $B/qmoe bench -m $M --backend vulkan -p 8 -n 16 --repeats 3 --stages --json
QMOE_NO_GRAPH=1 timeout 200 ncu --cache-control none --clock-control none --launch-count 28 --section SpeedOfLight --section Occupancy --section LaunchStats --csv \
    $B/qmoe run -m $M --backend cuda --tokens 5 -n 2 > $R/ncu-decode.csv 2> $R/ncu-decode.err
echo "ncu $?"
tar -C /tmp -czf ${OUT:-.}/res.tgz res
