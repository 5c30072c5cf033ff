#!/bin/bash
# decode round 2: packed runs on the one-token path, router warp per expert, attention 32-position splits
cd "$(dirname "$0")/.."
R=/tmp/res; mkdir -p $R
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export QMOE_CUDA_CACHE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
for t in test_parity_cuda test_model test_cuda_graph test_router_nan test_model_falsifiers test_cuda_backend; do
  QMOE_TEST_REQUIRE_BACKEND=1 timeout 240 $B/tests/$t > $R/$t.log 2>&1; echo "$t exit $? ok=$(grep -c '^ok' $R/$t.log) notok=$(grep -c '^not ok' $R/$t.log) skip=$(grep -c '^skip' $R/$t.log)"; grep '^not ok' $R/$t.log | head -5
done
QMOE_TEST_TOKENS_MAX=40 QMOE_TEST_REQUIRE_BACKEND=1 timeout 240 $B/tests/test_parity_cuda > $R/test_parity_cuda-t40.log 2>&1; echo "parity_cuda T<=40 exit $? ok=$(grep -c '^ok' $R/test_parity_cuda-t40.log) notok=$(grep -c '^not ok' $R/test_parity_cuda-t40.log)"; grep '^not ok' $R/test_parity_cuda-t40.log | head -5
wait $MK; echo "make-model $?"
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['prefill_chunk'],d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'])" 2>&1|tail -1)"; }
run cuda-stages timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run cuda-p512 timeout 150 $B/qmoe bench -m $M --backend cuda -p 512 -n 128 --repeats 3 --json
run cuda-ctx4096 timeout 90 $B/qmoe bench -m $M --backend cuda -p 16 -n 64 --repeats 3 --depth 4096 --json
run cuda-ctx32768 timeout 90 $B/qmoe bench -m $M --backend cuda -p 16 -n 64 --repeats 3 --depth 32768 --json
QMOE_NO_GRAPH=1 timeout 200 ncu --cache-control none --clock-control none --launch-count 28 --section SpeedOfLight --csv \
    $B/qmoe run -m $M --backend cuda --tokens 5 -n 2 > $R/ncu-decode.csv 2> $R/ncu-decode.err
echo "ncu $?"
# what holds the big decode kernels back: warp stall reasons and issue rates (layer 0 of a one-token forward)
QMOE_NO_GRAPH=1 timeout 200 ncu --cache-control none --clock-control none -k regex:'moe_gate_up|moe_down|matvec' --launch-count 5 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section ComputeWorkloadAnalysis --csv \
    $B/qmoe run -m $M --backend cuda --tokens 5 -n 2 > $R/ncu-stalls.csv 2> $R/ncu-stalls.err
echo "ncu stalls $?"
QMOE_BIN=$B PYTHONUNBUFFERED=1 timeout 150 python3 tests/oracle/check_oracle.py > $R/oracle.log 2>&1; echo "oracle exit $?: $(grep -c '^ok' $R/oracle.log) ok, $(grep -c '^not ok' $R/oracle.log) not ok"; grep -E '^(not ok|skip)' $R/oracle.log | head
tar -C /tmp -czf ${OUT:-.}/res.tgz res
