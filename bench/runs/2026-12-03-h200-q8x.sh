#!/bin/bash
# exp = 49e410c's router plus qmoe_q8_block<P> in _qrows.cu (the loads of P passes issued before any is rounded,
# P chosen per kernel by the QMOE_Q8X_{MV,GU}{2,4} / QMOE_Q8X_DN{2,3,6} defines, 1 by default: main's code); not
# kept, so not in the tree. Branch exp against main (7f3984c) in one run: the q8 rounding of x with several passes' loads in flight
# (QMOE_Q8X_* experiments: MV matvec, GU gate+up, DN moe_down, with the passes per trip), and the router asking
# for its weights before the grid wait. Correctness of exp first (parity, router NaN, graphs; parity again under
# the experiments), then q8 decode alternated; then Nsight Compute source counters of exp's moe_down and gate+up.
cd "$(dirname "$0")/../.."
N=resq8x; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
tar -C .dev -xJf .dev/gpu.tar.xz; tar -C .dev -xJf .dev/exp.tar.xz
A=.dev/gpu; B=.dev/exp
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env QMOE_TEST_REQUIRE_BACKEND=1 "$@" timeout 200 $B/tests/$t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
t1 parity test_parity_cuda
t1 router_nan test_router_nan
t1 cuda_graph test_cuda_graph
t1 parity-x test_parity_cuda QMOE_CUDA_DEFINES=QMOE_Q8X_DN6,QMOE_Q8X_GU2,QMOE_Q8X_MV2
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
Q="--backend cuda --acc q8 -p 64 -n 64 --repeats 3 --json"
run main-stages timeout 100 $A/qmoe bench -m $M $Q --stages
run exp-stages timeout 100 $B/qmoe bench -m $M $Q --stages
run main-a timeout 60 $A/qmoe bench -m $M $Q
run exp-a timeout 60 $B/qmoe bench -m $M $Q
run exp-dn6 QMOE_CUDA_DEFINES=QMOE_Q8X_DN6 timeout 60 $B/qmoe bench -m $M $Q
run exp-dn3 QMOE_CUDA_DEFINES=QMOE_Q8X_DN3 timeout 60 $B/qmoe bench -m $M $Q
run exp-dn2gm QMOE_CUDA_DEFINES=QMOE_Q8X_DN2,QMOE_Q8X_GU2,QMOE_Q8X_MV2 timeout 60 $B/qmoe bench -m $M $Q
run exp-dn6gm-stages QMOE_CUDA_DEFINES=QMOE_Q8X_DN6,QMOE_Q8X_GU2,QMOE_Q8X_MV2 timeout 100 $B/qmoe bench -m $M $Q --stages
run main-b timeout 60 $A/qmoe bench -m $M $Q
run exp-b timeout 60 $B/qmoe bench -m $M $Q
run exp-dn6gm-b QMOE_CUDA_DEFINES=QMOE_Q8X_DN6,QMOE_Q8X_GU2,QMOE_Q8X_MV2 timeout 60 $B/qmoe bench -m $M $Q
QMOE_NO_GRAPH=1 timeout 120 ncu --cache-control all --clock-control none --import-source no \
    -k regex:'^qmoe_(moe_down__q6_k__q8|moe_gate_up_swiglu__q4_k__q8)$' --launch-skip 4 --launch-count 2 \
    --section WarpStateStats --section SourceCounters --section InstructionStats -o /tmp/src \
    $B/qmoe run -m $M --backend cuda --acc q8 --tokens 5 -n 2 > $R/ncu.out 2> $R/ncu.err
echo "ncu $?"
ncu -i /tmp/src.ncu-rep --page source --csv --print-source sass 2> $R/ncu-src.err | xz > $R/ncu-src.csv.xz
ncu -i /tmp/src.ncu-rep --page details --csv 2>> $R/ncu-src.err > $R/ncu-details.csv
ls -la $R; save
