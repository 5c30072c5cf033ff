#!/bin/sh
# check_pv.sh: pv validate against the repo's contracts, the valid fixtures and the invalid corpus (each
# invalid file must fail with exactly the first error line it states), plus generated hostile inputs and
# the command line. Prints "ok NAME" / "not ok NAME: why". Run from the repo root with QMOE_BIN set.
#
# Corpus conventions (tests/pv/invalid/):
#   quant/*.yaml, models/*.yaml   validated alone:            pv validate --no-refs FILE
#   stages/*.yaml, recipes/*.yaml  against the valid fixtures: pv validate --refs tests/pv/valid/base FILE
#   Line 1 of each file is "# expect: <the first error line pv prints>"; a file that cannot hold a comment
#   (empty, binary) has it in <name>.expected instead. cases/<dir>/ is validated as a directory, with its
#   expectation in cases/<dir>.expected. The exit status must be 1, or 2 for I/O errors (P001, P002).
#   After changing a message on purpose: sh tests/pv/update_expected.sh, then review the diff.
PV="${QMOE_BIN:-build}/pv"
fails=0
ok() { echo "ok $1"; }
bad() { echo "not ok $1: $2"; fails=$((fails + 1)); }

if [ ! -x "$PV" ]; then
  echo "not ok pv-binary: $PV not built (run ninja)"
  exit 1
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/check_pv.XXXXXX") || exit 1
trap 'chmod -R u+rwx "$TMP" 2>/dev/null; rm -rf "$TMP"' EXIT INT TERM

# expect NAME WANT_STATUS WANT_FIRST_ERROR_LINE ARGS...: runs pv validate ARGS and compares.
expect() {
  name=$1 want_rc=$2 want=$3
  shift 3
  "$PV" validate "$@" >"$TMP/out" 2>"$TMP/err"
  rc=$?
  got=$(grep -m1 -E ': (error|warning)\[' "$TMP/out")
  case "$want" in *": warning["*) ;; *) got=$(grep -m1 ': error\[' "$TMP/out") ;; esac
  if [ "$rc" -ne "$want_rc" ]; then
    bad "$name" "expected exit $want_rc, got $rc: $(head -c 300 "$TMP/out" "$TMP/err" | tr '\n' ' ')"
  elif [ "$got" != "$want" ]; then
    bad "$name" "expected '$want', got '$got'"
  else
    ok "$name"
  fi
}

status_for() { case "$1" in *"error[P001]"* | *"error[P002]"*) echo 2 ;; *) echo 1 ;; esac; }

# --- The repo's own contracts -------------------------------------------------------------------------
"$PV" validate contracts >"$TMP/out" 2>&1
rc=$?
if [ $rc -eq 0 ] && tail -1 "$TMP/out" | grep -qx 'Contracts are valid.' && grep -qx '0 error(s), 0 warning(s)' "$TMP/out"; then
  ok contracts
else
  bad contracts "exit $rc: $(head -c 2000 "$TMP/out")"
fi
"$PV" validate >"$TMP/out2" 2>&1 && cmp -s "$TMP/out" "$TMP/out2" && ok contracts-default-path ||
  bad contracts-default-path "pv validate without a path does not validate contracts/"
if "$PV" validate --format json contracts >"$TMP/json" && python3 -m json.tool "$TMP/json" >/dev/null &&
   python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["valid"] is True and d["errors"] == 0 and d["diagnostics"] == [] and d["files"] > 10 else 1)' "$TMP/json"; then
  ok contracts-json
else
  bad contracts-json "$(head -c 500 "$TMP/json")"
fi
# One file alone: references resolve against its contract root (contracts/quant and contracts/models).
for f in contracts/stages/matvec.yaml contracts/models/qwen3-moe-forward-v1.yaml contracts/quant/q4_k.yaml contracts/recipes/q4_k_m.yaml; do
  "$PV" validate "$f" >"$TMP/out" 2>&1 && ok "single-file $f" || bad "single-file $f" "$(head -c 500 "$TMP/out")"
done

# --- Valid fixtures -------------------------------------------------------------------------------------
for d in tests/pv/valid/*/; do
  d=${d%/}
  "$PV" validate "$d" >"$TMP/out" 2>&1 && grep -qx '0 error(s), 0 warning(s)' "$TMP/out" && ok "valid $d" ||
    bad "valid $d" "$(head -c 800 "$TMP/out")"
done

# --- Invalid corpus -------------------------------------------------------------------------------------
for f in tests/pv/invalid/quant/* tests/pv/invalid/stages/* tests/pv/invalid/models/* tests/pv/invalid/recipes/*; do
  case "$f" in *.yaml) ;; *) continue ;; esac
  if [ -f "${f%.yaml}.expected" ]; then
    want=$(head -1 "${f%.yaml}.expected")
  else
    want=$(head -1 "$f" | sed -n 's/^# expect: //p')
  fi
  if [ -z "$want" ]; then
    bad "$f" "states no expected error (line 1 '# expect: ...' or ${f%.yaml}.expected)"
    continue
  fi
  case "$f" in */stages/* | */recipes/*) set -- --refs tests/pv/valid/base ;; *) set -- --no-refs ;; esac
  expect "$f" "$(status_for "$want")" "$want" "$@" "$f"
done
for e in tests/pv/invalid/cases/*.expected; do
  d=${e%.expected}
  want=$(head -1 "$e")
  expect "$d" "$(status_for "$want")" "$want" "$d"
done

# Every error is reported, not only the first.
mkdir -p "$TMP/many/quant"
sed -e 's/^block_bytes: 6/block_bytes: "6"/' -e 's/type: f16,/type: f61,/' -e 's/^description:/descripton:/' \
  tests/pv/valid/base/quant/q8s.yaml >"$TMP/many/quant/q8s.yaml"
"$PV" validate "$TMP/many" >"$TMP/out" 2>&1
n=$(grep -c ': error\[' "$TMP/out")
if [ "$n" -eq 3 ] && grep -qx '3 error(s), 0 warning(s)' "$TMP/out" && ! grep -q 'Contracts are valid' "$TMP/out"; then
  ok all-errors-reported
else
  bad all-errors-reported "expected 3 errors: $(cat "$TMP/out")"
fi
"$PV" validate --format json "$TMP/many" >"$TMP/json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["valid"] is False and d["errors"] == 3 and len(d["diagnostics"]) == 3 and all(x["severity"] == "error" and x["line"] > 0 for x in d["diagnostics"]) else 1)' "$TMP/json" &&
  ok json-errors || bad json-errors "$(head -c 800 "$TMP/json")"
# JSON escapes quotes, backslashes, control characters and bytes that are not UTF-8 in file names.
mkdir -p "$TMP/esc/quant"
printf 'name: "x\\"y\\\\z\\t"\n' >"$TMP/esc/quant/$(printf 'we\"ird\\\001\377').yaml"
"$PV" validate --format json "$TMP/esc" >"$TMP/json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1], encoding="utf-8")); sys.exit(0 if d["errors"] >= 1 else 1)' "$TMP/json" &&
  ok json-escaping || bad json-escaping "$(head -c 800 "$TMP/json")"

# --- Hostile inputs, generated --------------------------------------------------------------------------
mkdir -p "$TMP/gen/quant"
python3 -c 'print("name: " + "[" * 200 + "]" * 200)' >"$TMP/gen/quant/deep.yaml"
expect deep-nesting 1 "$TMP/gen/quant/deep.yaml:1:70: error[Y003]: nesting deeper than 64 levels; contracts are shallow" \
  --no-refs "$TMP/gen/quant/deep.yaml"
python3 -c 'import sys; sys.stdout.write(open(sys.argv[1]).read().replace("description: Four signed 8-bit quants and one f16 scale.", "description: " + "x" * (10 << 20)).replace("name: q8s", "name: big"))' \
  tests/pv/valid/base/quant/q8s.yaml >"$TMP/gen/quant/big.yaml"
expect ten-mb-scalar 1 "$TMP/gen/quant/big.yaml:4:14: error[Y004]: scalar of 10485760 bytes is larger than the 1048576-byte limit" \
  --no-refs "$TMP/gen/quant/big.yaml"
expect missing-path 2 "$TMP/nosuch: error[P001]: cannot read: No such file or directory" "$TMP/nosuch"
expect not-a-directory 2 "$TMP/gen/quant/deep.yaml/x.yaml: error[P001]: cannot read: Not a directory" \
  "$TMP/gen/quant/deep.yaml/x.yaml"
printf 'name: x\n' >"$TMP/gen/quant/locked.yaml"
chmod 000 "$TMP/gen/quant/locked.yaml"
if [ -r "$TMP/gen/quant/locked.yaml" ]; then
  echo "skip unreadable-file: running as root, permissions do not stop reading"
else
  expect unreadable-file 2 "$TMP/gen/quant/locked.yaml: error[P001]: cannot read: Permission denied" \
    --no-refs "$TMP/gen/quant/locked.yaml"
fi
rm -f "$TMP/gen/quant/locked.yaml"
mkdir -p "$TMP/gen/misc"
cp tests/pv/valid/base/quant/q8s.yaml "$TMP/gen/misc/q8s.yaml"
expect kind-unknown-explicit 1 \
  "$TMP/gen/misc/q8s.yaml: error[P003]: cannot tell what kind of contract this is: its directory is not quant/, stages/, models/ or recipes/; move it into one of them (e.g. contracts/quant/)" \
  "$TMP/gen/misc/q8s.yaml"
expect kind-from-keys 0 \
  "$TMP/gen/misc/q8s.yaml: warning[W101]: not under quant/, stages/, models/ or recipes/; read as a quant contract from its keys; move it into quant/" \
  "$TMP/gen/misc"
mkdir -p "$TMP/gen/empty"
expect empty-directory 2 "$TMP/gen/empty: error[P002]: no contract files (*.yaml, *.yml) in this directory" "$TMP/gen/empty"
expect refs-missing 2 "$TMP/nosuch: error[P001]: --refs: cannot read the directory: No such file or directory" \
  --refs "$TMP/nosuch" tests/pv/valid/base/quant/q8s.yaml

# --- docs/contracts.md carries the current key tables -------------------------------------------------
"$PV" schema | sed '/^$/d' >"$TMP/schema"
sed -n '/^<!-- pv schema begin -->$/,/^<!-- pv schema end -->$/p' docs/contracts.md | sed '1d;$d;/^$/d' >"$TMP/doc"
if [ -s "$TMP/schema" ] && cmp -s "$TMP/schema" "$TMP/doc"; then
  ok docs-schema-current
else
  bad docs-schema-current "docs/contracts.md's key tables differ from 'pv schema'; paste its output between the markers"
fi

# --- Command line ---------------------------------------------------------------------------------------
"$PV" --help >"$TMP/out" 2>&1 && grep -q '^usage: pv validate' "$TMP/out" && ok cli-help || bad cli-help "$(cat "$TMP/out")"
"$PV" validate --help >"$TMP/out" 2>&1 && grep -q '^usage: pv validate' "$TMP/out" && ok cli-validate-help || bad cli-validate-help "$(cat "$TMP/out")"
"$PV" schema | grep -q '^| `block_bytes` | int | yes |' && ok cli-schema || bad cli-schema "pv schema prints no key table"
"$PV" --version >"$TMP/out" 2>&1 && grep -qE '^pv \(qmoe\) [0-9]+\.[0-9]+\.[0-9]+$' "$TMP/out" && ok cli-version || bad cli-version "$(cat "$TMP/out")"
for args in "" "frobnicate" "schema extra" "validate --bogus" "validate --format xml" "validate --format" "validate --refs" \
            "validate --refs x --no-refs"; do
  # shellcheck disable=SC2086
  "$PV" $args >"$TMP/out" 2>"$TMP/err"
  rc=$?
  if [ $rc -eq 2 ] && [ ! -s "$TMP/out" ] && head -1 "$TMP/err" | grep -q '^pv: ' && grep -q '^usage: ' "$TMP/err"; then
    ok "cli-usage-error '$args'"
  else
    bad "cli-usage-error '$args'" "exit $rc, stderr: $(head -c 300 "$TMP/err")"
  fi
done

[ $fails -eq 0 ]
