#!/bin/bash
# the final CUDA row kernels (span tables where a span holds 4 runs or more; aligned words, q6_k's by run_w2):
# GPU tests, decode with stages against QMOE_NO_WORD_A4 (lm_head is q6_k alone), decode again, context 4k,
# the Hugging Face oracle. Ordered by priority; every result is saved as it comes.
cd "$(dirname "$0")/../.."
N=reseb5; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-.}/res.tgz $N; }
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
for t in test_parity_cuda test_model test_cuda_graph test_cuda_backend; do
  QMOE_TEST_REQUIRE_BACKEND=1 timeout 200 $B/tests/$t > $R/$t.log 2>&1; echo "$t exit $? ok=$(grep -c '^ok' $R/$t.log) notok=$(grep -c '^not ok' $R/$t.log) skip=$(grep -c '^skip' $R/$t.log)"; grep '^not ok' $R/$t.log | head -5
done
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
run cuda-stages timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run cuda-noa4 QMOE_CUDA_DEFINES=QMOE_NO_WORD_A4 timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run cuda-2 timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
run cuda-ctx4096 timeout 150 $B/qmoe bench -m $M --backend cuda -p 16 -n 64 --depth 4096 --repeats 3 --json
QMOE_BIN=$B PYTHONUNBUFFERED=1 timeout 150 python3 tests/oracle/check_oracle.py > $R/oracle.log 2>&1; echo "oracle exit $?: $(grep -c '^ok' $R/oracle.log) ok, $(grep -c '^not ok' $R/oracle.log) not ok"; grep -E '^(not ok|skip)' $R/oracle.log | head
save
