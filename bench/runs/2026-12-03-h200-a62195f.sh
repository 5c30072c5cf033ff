#!/bin/bash
# programmatic fork/join edges by default: the forward's tests, the oracle and decode again
cd "$(dirname "$0")/../.."
R=/tmp/res; mkdir -p $R
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
export QMOE_CUDA_CACHE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
for t in test_model test_model_falsifiers test_cuda_graph; do
  QMOE_TEST_REQUIRE_BACKEND=1 timeout 240 $B/tests/$t > $R/$t.log 2>&1; echo "$t exit $? ok=$(grep -c '^ok' $R/$t.log) notok=$(grep -c '^not ok' $R/$t.log) skip=$(grep -c '^skip' $R/$t.log)"; grep '^not ok' $R/$t.log | head -5
done
QMOE_BIN=$B PYTHONUNBUFFERED=1 timeout 150 python3 tests/oracle/check_oracle.py > $R/oracle.log 2>&1; echo "oracle exit $?: $(grep -c '^ok' $R/oracle.log) ok, $(grep -c '^not ok' $R/oracle.log) not ok"
wait $MK; echo "make-model $?"
for n in 1 2; do env timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json > $R/bench-cuda-$n.json 2>/dev/null; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-cuda-$n.json'));print(d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'])")"; done
timeout 90 $B/qmoe bench -m $M --backend cuda -p 16 -n 64 --repeats 3 --depth 4096 --json > $R/bench-cuda-ctx4096.json 2>/dev/null; echo "ctx4096 $(python3 -c "import json;d=json.load(open('$R/bench-cuda-ctx4096.json'));print(d['decode_tokens_per_s'])")"
tar -C /tmp -czf ${OUT:-.}/res.tgz res
