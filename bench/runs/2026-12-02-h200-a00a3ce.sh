#!/bin/bash
cd "$(dirname "$0")/.."
R=/tmp/res; mkdir -p $R
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; command -v ncu nsys; } | tee $R/env.txt
M=/tmp/m.gguf
$B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1; echo "make-model $?"
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['prefill_chunk'],d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'])" 2>&1|tail -1)"; }
run cuda-stages timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run vulkan-stages timeout 150 $B/qmoe bench -m $M --backend vulkan -p 8 -n 16 --repeats 3 --stages --json
# ncu: a one-token forward (decode-shaped kernels), embed + first 2 layers, caches not flushed, clocks not locked
QMOE_NO_GRAPH=1 timeout 200 ncu --cache-control none --clock-control none --launch-count 40 --section SpeedOfLight --section LaunchStats --section Occupancy --csv \
    $B/qmoe run -m $M --backend cuda --tokens 5 -n 2 > $R/ncu-decode.csv 2> $R/ncu-decode.err
echo "ncu $?"
python3 - $R/ncu-decode.csv <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
h = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
hdr = rows[h]
k = {}
for r in rows[h + 1:]:
    d = dict(zip(hdr, r))
    if d.get("Metric Name") in ("Duration", "Compute (SM) Throughput", "Memory Throughput", "DRAM Throughput", "Registers Per Thread", "Achieved Occupancy"):
        k.setdefault(d["ID"], [d["Kernel Name"][:40], d["Grid Size"], d["Block Size"]]).append(d["Metric Name"][:8] + "=" + d["Metric Value"])
for i in sorted(k, key=int): print(" ".join(k[i]))
PY
if command -v nsys > /dev/null; then
  timeout 120 nsys profile -o $R/decode --force-overwrite true $B/qmoe bench -m $M --backend cuda -p 8 -n 16 --repeats 1 > $R/nsys.log 2>&1; echo "nsys $?"
  nsys stats --report cuda_gpu_kern_sum $R/decode.nsys-rep 2>/dev/null | head -40
fi
tar -C /tmp -czf ${OUT:-.}/res.tgz res
