#!/bin/sh
# check_hostile.sh: every file of the hostile GGUF corpus (tests/gguf/hostile, listed with the message it
# must give in EXPECT and EXPECT.fuzz) makes `qmoe inspect` fail cleanly: exit status 1, the expected message
# naming the file and a byte offset, no sanitizer report. A valid file must still pass.
# Run from the repository root; QMOE_BIN is the build directory (build or build/san).
BIN=${QMOE_BIN:-build}
DIR=tests/gguf/hostile
out=$(mktemp)
trap 'rm -f "$out"' EXIT INT TERM
failed=0

if "$BIN/qmoe" inspect tests/data/gemma3-270m-slice.gguf >"$out" 2>&1; then
  echo "ok valid fixture is accepted"
else
  echo "not ok valid fixture is accepted: $(head -c 300 "$out")"
  failed=1
fi

for list in "$DIR/EXPECT" "$DIR/EXPECT.fuzz"; do
  [ -f "$list" ] || continue
  # Lines: FILE<TAB>SUBSTRING; '#' starts a comment.
  while IFS='	' read -r file expect; do
    case "$file" in ''|'#'*) continue ;; esac
    path="$DIR/$file"
    if [ ! -f "$path" ]; then
      echo "not ok hostile $file: missing (regenerate with python3 tests/gguf/make_hostile.py)"
      failed=1
      continue
    fi
    "$BIN/qmoe" inspect "$path" >/dev/null 2>"$out"
    rc=$?
    msg=$(head -c 600 "$out" | tr '\n' ' ')
    if [ "$rc" -ne 1 ]; then
      echo "not ok hostile $file: exit status $rc (want 1): $msg"
      failed=1
    elif grep -q -e "Sanitizer" -e "runtime error" "$out"; then
      echo "not ok hostile $file: sanitizer report: $msg"
      failed=1
    elif ! grep -qF -- "$expect" "$out"; then
      echo "not ok hostile $file: message lacks '$expect': $msg"
      failed=1
    elif ! grep -qF -- "$path" "$out" || ! grep -q "offset [0-9]" "$out"; then
      echo "not ok hostile $file: message does not name the file and a byte offset: $msg"
      failed=1
    else
      echo "ok hostile $file"
    fi
  done <"$list"
done
exit $failed
