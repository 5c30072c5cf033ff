#!/bin/sh
# check_graph_run.sh: `qmoe run` on the tiny model with the Vulkan backend gives the same tokens when each
# position runs as one recorded graph (the default) and stage by stage (QMOE_NO_GRAPH=1), greedy, over a
# prefill and a decode. Run from the repository root with QMOE_BIN=build (or build/san).
BIN=${QMOE_BIN:-build}
MODEL=build/models/tiny.gguf
for f in "$BIN/qmoe" "$MODEL"; do
  if [ ! -e "$f" ]; then echo "not ok graph_run: $f is missing (run ninja)"; exit 1; fi
done

run() { # extra environment assignments, then prints the generated ids
  env "$@" "$BIN/qmoe" run -m "$MODEL" --backend vulkan -p "hello" -n 16 --ignore-eos --json 2>"$err"
}
err=$(mktemp)
trap 'rm -f "$err"' EXIT
graph=$(run QMOE_NO_GRAPH=0); rc=$?
if [ $rc != 0 ] && grep -q 'no Vulkan \(loader\|device\)\|no usable Vulkan device' "$err"; then
  if [ -n "$QMOE_TEST_REQUIRE_BACKEND" ]; then
    echo "not ok graph_run: $(tail -1 "$err") (QMOE_TEST_REQUIRE_BACKEND is set)"; exit 1
  fi
  echo "skip graph_run: $(tail -1 "$err")"; exit 0
fi
if [ $rc != 0 ]; then echo "not ok graph_run: with graphs, exit $rc: $(tail -3 "$err")"; exit 1; fi
nograph=$(run QMOE_NO_GRAPH=1); rc=$?
if [ $rc != 0 ]; then echo "not ok graph_run: with QMOE_NO_GRAPH=1, exit $rc: $(tail -3 "$err")"; exit 1; fi

ids_g=$(printf '%s\n' "$graph" | grep -o '"ids":\[[0-9,]*\]')
ids_n=$(printf '%s\n' "$nograph" | grep -o '"ids":\[[0-9,]*\]')
n=$(printf '%s\n' "$ids_g" | tr ',' '\n' | grep -c '[0-9]')
if [ -n "$ids_g" ] && [ "$n" = 16 ] && [ "$ids_g" = "$ids_n" ]; then
  echo "ok graph_run"
else
  echo "not ok graph_run: 16 tokens expected alike; with graphs $ids_g, with QMOE_NO_GRAPH=1 $ids_n"; exit 1
fi
