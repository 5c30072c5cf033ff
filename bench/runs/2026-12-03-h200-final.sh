#!/bin/bash
# The afternoon's kernels (moe_down 4 rows per block with per-item cp.async groups, router one warp per expert,
# q8 matvec and gate+up first chunk in two groups, v in its own lane): the CUDA parity test and test_model, decode
# f32 and q8 with stages (trimmed to the few minutes of device time left; the oracle last, cut if time runs out).
cd "$(dirname "$0")/../.."
N=resfinal; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export QMOE_CUDA_CACHE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { t=$1; QMOE_TEST_REQUIRE_BACKEND=1 timeout 240 $B/tests/$t > $R/$t.log 2>&1; echo "$t exit $? ok=$(grep -c '^ok' $R/$t.log) notok=$(grep -c '^not ok' $R/$t.log) skip=$(grep -c '^skip' $R/$t.log)"; grep '^not ok' $R/$t.log | head -5; save; }
t1 test_parity_cuda
wait $MK; echo "make-model $?"
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
run q8-stages timeout 60 $B/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --stages --json
run f32-stages timeout 60 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json

t1 test_model
QMOE_BIN=$B PYTHONUNBUFFERED=1 timeout 200 python3 tests/oracle/check_oracle.py > $R/oracle.log 2>&1; echo "oracle exit $?: $(grep -c '^ok' $R/oracle.log) ok, $(grep -c '^not ok' $R/oracle.log) not ok"; grep -E '^(not ok|skip)' $R/oracle.log | head; save
