#!/bin/bash
# The H200 run recorded in docs/gpu-results.md "2026-12-02 (evening)": batched prefill, fourth run (CUDA only, short: the device time left). GPU tests (CUDA and NVIDIA
# Vulkan; the parity test twice, the second with up to 40 tokens per call), the Hugging Face oracle, qmoe bench
# (prefill in chunks of 512, 64, 8 and 1 tokens per stage call; decode at 512, 4k, 32k), an Nsight Compute pass over
# the first layer's many-token kernels of a 512-token prefill. Prepared as bench/runs/2026-12-02-h200-53eb743.sh says;
# run from the repository root with .dev, .gl and .whl carried. Results go to $OUT/res.tgz.
cd "$(dirname "$0")/../.."
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
for t in test_parity_cuda test_model test_cuda_graph; do
  QMOE_TEST_REQUIRE_BACKEND=1 timeout 240 $B/tests/$t > $R/$t.log 2>&1; echo "$t exit $? ok=$(grep -c '^ok' $R/$t.log) notok=$(grep -c '^not ok' $R/$t.log) skip=$(grep -c '^skip' $R/$t.log)"; grep '^not ok' $R/$t.log | head -5
done
QMOE_TEST_TOKENS_MAX=40 QMOE_TEST_REQUIRE_BACKEND=1 timeout 240 $B/tests/test_parity_cuda > $R/test_parity_cuda-t40.log 2>&1; echo "parity_cuda T<=40 exit $? ok=$(grep -c '^ok' $R/test_parity_cuda-t40.log) notok=$(grep -c '^not ok' $R/test_parity_cuda-t40.log)"; grep '^not ok' $R/test_parity_cuda-t40.log | head -5
QMOE_BIN=$B PYTHONUNBUFFERED=1 timeout 150 python3 tests/oracle/check_oracle.py > $R/oracle.log 2>&1; echo "oracle exit $?: $(grep -c '^ok' $R/oracle.log) ok, $(grep -c '^not ok' $R/oracle.log) not ok"; grep -E '^(not ok|skip)' $R/oracle.log | head
wait $MK; echo "make-model $?"
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['prefill_chunk'],d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'])" 2>&1|tail -1)"; }
run cuda-p512 timeout 150 $B/qmoe bench -m $M --backend cuda -p 512 -n 64 --repeats 3 --json
run cuda-f64 timeout 150 $B/qmoe bench -m $M --backend cuda --acc f64 -p 512 -n 32 --repeats 3 --json
# Nsight Compute: every kernel of layer 0 of a 512-token prefill (qmoe run, no warm-up: launch 0 is the
# embedding, 1..13 layer 0), one kernel at a time (QMOE_NO_GRAPH=1)
if command -v ncu > /dev/null; then
  IDS=$(python3 -c "print(','.join(str((i * 37) % 1000 + 5) for i in range(512)))")
  QMOE_NO_GRAPH=1 timeout 200 ncu --launch-skip 1 --launch-count 13 --section SpeedOfLight --csv \
    $B/qmoe run -m $M --backend cuda --tokens $IDS -n 1 > $R/ncu-prefill.csv 2> $R/ncu-prefill.err
  echo "ncu $?"
  python3 - $R/ncu-prefill.csv <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
h = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
hdr = rows[h]
k = {}
for r in rows[h + 1:]:
    d = dict(zip(hdr, r))
    if d.get("Metric Name") in ("Duration", "Compute (SM) Throughput", "Memory Throughput", "DRAM Throughput"):
        k.setdefault(d["ID"], [d["Kernel Name"][:44], d["Grid Size"]]).append(d["Metric Name"][:8] + "=" + d["Metric Value"] + d["Metric Unit"])
for i in sorted(k, key=int): print(" ".join(k[i]))
PY
fi
tar -C /tmp -czf ${OUT:-.}/res.tgz res
