#!/bin/sh
# check_cli.sh: the `qmoe` command's behaviour around its file subcommands: help texts, usage errors (exit 2),
# a bad tensor name listing near matches, rows out of range, row slices that match whole-tensor dumps, and
# inspect's table against the fixture's known tensors. Run from the repository root with QMOE_BIN set.
BIN=${QMOE_BIN:-build}
Q="$BIN/qmoe"
FIX=tests/data/gemma3-270m-slice.gguf
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT INT TERM
failed=0
# expect NAME STATUS SUBSTRING -- COMMAND...: the command exits with STATUS and its output holds SUBSTRING.
expect() {
  name=$1 want=$2 sub=$3
  shift 4
  "$@" >"$T/out" 2>&1
  rc=$?
  if [ "$rc" -ne "$want" ]; then
    echo "not ok $name: exit $rc, want $want: $(head -c 300 "$T/out" | tr '\n' ' ')"
    failed=1
  elif ! grep -qF -- "$sub" "$T/out"; then
    echo "not ok $name: output lacks '$sub': $(head -c 300 "$T/out" | tr '\n' ' ')"
    failed=1
  elif grep -q -e Sanitizer -e "runtime error" "$T/out"; then
    echo "not ok $name: sanitizer report"
    failed=1
  else
    echo "ok $name"
  fi
}

expect "qmoe --help lists the commands" 0 "quantize   re-encode" -- "$Q" --help
expect "qmoe without a command is a usage error" 2 "usage: qmoe COMMAND" -- "$Q"
expect "unknown command" 2 "unknown command 'frobnicate'" -- "$Q" frobnicate
for c in inspect dump extract quantize; do
  expect "qmoe $c --help" 0 "usage: qmoe $c" -- "$Q" "$c" --help
done
expect "qmoe help dump" 0 "usage: qmoe dump" -- "$Q" help dump
expect "inspect without a file" 2 "missing FILE.gguf" -- "$Q" inspect
expect "inspect a missing file" 1 "cannot open" -- "$Q" inspect "$T/nope.gguf"
expect "inspect lists a tensor" 0 "blk.0.ffn_down.weight       Q6_K     [2048, 128]" -- "$Q" inspect "$FIX"
expect "inspect abbreviates long arrays" 0 "... (248 more)]" -- "$Q" inspect "$FIX"
expect "inspect --json" 0 '"name": "blk.17.ffn_down.weight", "type": "Q6_K", "type_id": 14, "shape": [2048, 128]' -- "$Q" inspect --json "$FIX"
expect "dump needs --f32 or --raw" 2 "exactly one of --f32 and --raw" -- "$Q" dump "$FIX" output_norm.weight -o "$T/x"
expect "dump a misspelled tensor lists near matches" 1 "did you mean: blk.0.attn_output.weight" -- \
  "$Q" dump "$FIX" blk.0.attn_outptu.weight --f32 -o "$T/x"
expect "dump rows out of range" 1 "rows 100..200 are out of range: the tensor has 128 rows" -- \
  "$Q" dump "$FIX" blk.0.ffn_down.weight --rows 100..200 --f32 -o "$T/x"
expect "dump a bad row range" 1 "bad row range 'x..3'" -- "$Q" dump "$FIX" blk.0.ffn_down.weight --rows x..3 --f32 -o "$T/x"
expect "dump an empty row range" 1 "is empty" -- "$Q" dump "$FIX" blk.0.ffn_down.weight --rows 5..5 --f32 -o "$T/x"
[ -e "$T/x" ] && { echo "not ok failed dump leaves no output file"; failed=1; } || echo "ok failed dump leaves no output file"

# Rows 3..7 dumped alone equal bytes 3*row..7*row of the whole dump, for --f32 and --raw, on each type.
for t in blk.0.ffn_down.weight blk.0.attn_output.weight token_embd.weight blk.0.attn_k.weight; do
  for mode in f32 raw; do
    "$Q" dump "$FIX" "$t" --$mode -o "$T/all" && "$Q" dump "$FIX" "$t" --rows 3..7 --$mode -o "$T/part" &&
      "$Q" dump "$FIX" "$t" --rows 3 --$mode -o "$T/one"
    size=$(wc -c <"$T/all")
    rows=$("$Q" inspect --json "$FIX" | grep -o "\"name\": \"$t\"[^}]*" | sed 's/.*"shape": \[[0-9]*, \([0-9]*\)\].*/\1/')
    row=$((size / rows))
    if dd if="$T/all" bs="$row" skip=3 count=4 2>/dev/null | cmp -s - "$T/part" &&
       dd if="$T/all" bs="$row" skip=3 count=1 2>/dev/null | cmp -s - "$T/one" && [ "$(wc -c <"$T/part")" -eq $((4 * row)) ]; then
      echo "ok dump $t --rows slices match the whole ($mode)"
    else
      echo "not ok dump $t --rows slices match the whole ($mode)"
      failed=1
    fi
  done
done

# extract: a row slice of a row slice holds the same bytes as dumping those rows.
"$Q" extract "$FIX" "$T/e.gguf" --tensor blk.0.ffn_down.weight:10..20 --tensor output_norm.weight >"$T/out" 2>&1
"$Q" dump "$T/e.gguf" blk.0.ffn_down.weight --raw -o "$T/a" 2>>"$T/out"
"$Q" dump "$FIX" blk.0.ffn_down.weight --rows 10..20 --raw -o "$T/b" 2>>"$T/out"
if cmp -s "$T/a" "$T/b" && [ -s "$T/a" ]; then echo "ok extract row slice"; else echo "not ok extract row slice: $(head -c 300 "$T/out")"; failed=1; fi
expect "extract shapes a slice [ne0, rows]" 0 '"shape": [2048, 10]' -- "$Q" inspect --json "$T/e.gguf"
expect "extract an unknown tensor" 1 "no tensor 'nope' in" -- "$Q" extract "$FIX" "$T/f.gguf" --tensor nope
expect "extract needs tensors" 2 "give --tensor" -- "$Q" extract "$FIX" "$T/f.gguf"
# The output of quantize does not depend on the thread count.
"$Q" quantize "$FIX" "$T/j1.gguf" q8_0 -j 1 >"$T/out" 2>&1 && "$Q" quantize "$FIX" "$T/j3.gguf" q8_0 --threads 3 >>"$T/out" 2>&1
if cmp -s "$T/j1.gguf" "$T/j3.gguf" && [ -s "$T/j1.gguf" ]; then echo "ok quantize -j 1 and -j 3 write the same file"
else echo "not ok quantize -j 1 and -j 3 write the same file: $(head -c 300 "$T/out")"; failed=1; fi
expect "quantize rejects -j 0" 2 "needs a number of threads" -- "$Q" quantize "$FIX" "$T/q.gguf" q8_0 -j 0
expect "quantize an unknown type" 2 "TYPE 'q3_x' is not a qtype" -- "$Q" quantize "$FIX" "$T/q.gguf" q3_x
[ -e "$T/f.gguf" ] || [ -e "$T/q.gguf" ] && { echo "not ok failed commands leave no output"; failed=1; } || echo "ok failed commands leave no output"
exit $failed
