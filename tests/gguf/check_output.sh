#!/bin/sh
# check_output.sh: no qmoe command loses a user's file. dump (--raw, --f32), extract and quantize refuse an
# output that is their input (by path, symlink, hard link); write devices in place and never remove them
# (/dev/null-like nodes made with mknod, skipped when not root); refuse a disk too small before any work
# (tmpfs) and clean up when a write fails (RLIMIT_FSIZE), keeping the old output; leave no temp file and the
# old output intact on SIGINT/SIGTERM/SIGHUP mid-quantize; never follow a symlink planted at the temp name;
# `-o -` writes stdout; a repeated option is a usage error. Run from the repo root with QMOE_BIN set.
BIN=${QMOE_BIN:-build}
Q="$BIN/qmoe"
FIX=tests/data/gemma3-270m-slice.gguf
T=$(mktemp -d)
MNT=
cleanup() {
  [ -n "$MNT" ] && umount "$MNT" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT INT TERM
failed=0
ok() { echo "ok $1"; }
bad() { echo "not ok $1: $2"; failed=1; }
cp "$FIX" "$T/in.gguf"
chmod 644 "$T/in.gguf"
sum() { cksum <"$1" 2>/dev/null; }
ORIG=$(sum "$T/in.gguf")
# no_temp DIR: no *.tmp* file left in DIR.
no_temp() { ! ls -a "$1" | grep -q '\.tmp'; }

# --- the output is the input: by path, through a symlink, through a hard link -------------------------
ln -s in.gguf "$T/link.gguf"
ln "$T/in.gguf" "$T/hard.gguf"
for out in "$T/in.gguf" "$T/link.gguf" "$T/hard.gguf"; do
  how=${out##*/}
  for cmd in "dump --raw" "dump --f32" extract quantize; do
    case $cmd in
      dump*) set -- dump "$T/in.gguf" blk.0.ffn_down.weight ${cmd#dump } -o "$out" ;;
      extract) set -- extract "$T/in.gguf" "$out" --all ;;
      quantize) set -- quantize "$T/in.gguf" "$out" q8_0 -j 1 ;;
    esac
    "$Q" "$@" >"$T/out" 2>&1
    rc=$?
    if [ $rc -eq 1 ] && grep -q "is the input file" "$T/out" && [ "$(sum "$T/in.gguf")" = "$ORIG" ] &&
       [ -L "$T/link.gguf" ] && no_temp "$T"; then
      ok "$cmd refuses to write over its input ($how)"
    else
      bad "$cmd refuses to write over its input ($how)" "exit $rc, input $( [ "$(sum "$T/in.gguf")" = "$ORIG" ] && echo intact || echo CHANGED): $(head -c 300 "$T/out")"
      cp "$FIX" "$T/in.gguf"
    fi
  done
done
# The input given through a link, the output by its real path: refused too.
"$Q" quantize "$T/link.gguf" "$T/in.gguf" q8_0 >"$T/out" 2>&1
[ $? -eq 1 ] && [ "$(sum "$T/in.gguf")" = "$ORIG" ] && ok "quantize: input through a link, output by path" ||
  bad "quantize: input through a link, output by path" "$(head -c 300 "$T/out")"
# stdout redirected onto the input (the shell truncates it first, so it is gone: at least no crash, exit 1)
cp "$FIX" "$T/victim.gguf"
"$Q" dump "$T/victim.gguf" output_norm.weight --raw -o - >>"$T/victim.gguf" 2>"$T/out"
[ $? -eq 1 ] && grep -q "standard output" "$T/out" && ok "dump -o - appended onto its input is refused" ||
  bad "dump -o - appended onto its input is refused" "$(head -c 300 "$T/out")"

# --- stdout -------------------------------------------------------------------------------------------
"$Q" dump "$T/in.gguf" blk.0.ffn_down.weight --f32 -o "$T/file.f32" && "$Q" dump "$T/in.gguf" blk.0.ffn_down.weight --f32 -o - >"$T/stdout.f32"
cmp -s "$T/file.f32" "$T/stdout.f32" && [ -s "$T/file.f32" ] && ok "dump -o - writes stdout" || bad "dump -o - writes stdout" "differs"

# --- a good old output is replaced whole, keeping the link that points at it --------------------------
echo "old" >"$T/target.gguf"
ln -s target.gguf "$T/tlink.gguf"
"$Q" extract "$T/in.gguf" "$T/tlink.gguf" --tensor output_norm.weight >"$T/out" 2>&1 &&
  [ -L "$T/tlink.gguf" ] && "$Q" inspect "$T/target.gguf" >/dev/null 2>&1 && no_temp "$T" &&
  ok "an output through a symlink replaces the file it points to" ||
  bad "an output through a symlink replaces the file it points to" "$(head -c 300 "$T/out")"
rm -f "$T/target.gguf" "$T/tlink.gguf" "$T/file.f32" "$T/stdout.f32"

# --- device outputs ------------------------------------------------------------------------------------
if [ "$(id -u)" = 0 ] && mknod "$T/null" c 1 3 2>/dev/null && mknod "$T/full" c 1 7 2>/dev/null &&
   (echo x >"$T/null") 2>/dev/null; then
  for cmd in dump extract quantize; do
    for dev in null full; do
      case $cmd in
        dump) "$Q" dump "$T/in.gguf" blk.0.ffn_down.weight --raw -o "$T/$dev" >"$T/out" 2>&1 ;;
        extract) "$Q" extract "$T/in.gguf" "$T/$dev" --all >"$T/out" 2>&1 ;;
        quantize) "$Q" quantize "$T/in.gguf" "$T/$dev" q8_0 -j 1 >"$T/out" 2>&1 ;;
      esac
      rc=$?
      want=0
      [ $dev = full ] && want=1
      if [ $rc -eq $want ] && [ -c "$T/$dev" ] && no_temp "$T"; then
        ok "$cmd -o a $dev device: exit $want, the device node is kept"
      else
        bad "$cmd -o a $dev device: exit $want, the device node is kept" "exit $rc, node $(ls -l "$T/$dev" 2>&1): $(head -c 200 "$T/out")"
        rm -f "$T/$dev"
        mknod "$T/$dev" c 1 $([ $dev = null ] && echo 3 || echo 7)
      fi
    done
  done
  grep -q "No space left on device" "$T/out" && ok "a full device names the error" || bad "a full device names the error" "$(head -c 200 "$T/out")"
else
  echo "skip device outputs: not root, mknod refused or a nodev file system (device nodes cannot be used here)"
fi

# --- a full disk ---------------------------------------------------------------------------------------
mkdir -p "$T/mnt"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=64k tmpfs "$T/mnt" 2>/dev/null; then
  MNT="$T/mnt"
  echo "good old output" >"$MNT/out.gguf"
  for cmd in dump extract quantize; do
    case $cmd in
      dump) "$Q" dump "$T/in.gguf" token_embd.weight --f32 -o "$MNT/out.gguf" >"$T/out" 2>&1 ;;
      extract) "$Q" extract "$T/in.gguf" "$MNT/out.gguf" --all >"$T/out" 2>&1 ;;
      quantize) "$Q" quantize "$T/in.gguf" "$MNT/out.gguf" q8_0 -j 1 >"$T/out" 2>&1 ;;
    esac
    rc=$?
    if [ $rc -eq 1 ] && grep -q "bytes free" "$T/out" && [ "$(cat "$MNT/out.gguf")" = "good old output" ] && no_temp "$MNT"; then
      ok "$cmd to a disk too small is refused before any work, the old output kept"
    else
      bad "$cmd to a disk too small is refused before any work, the old output kept" "exit $rc: $(head -c 300 "$T/out")"
    fi
  done
  umount "$MNT" && MNT=
else
  echo "skip full disk (tmpfs): mount -t tmpfs is not allowed here"
fi
# A write that fails part way (RLIMIT_FSIZE: the file may not grow past 64 KiB) removes the temp file.
echo "good old output" >"$T/old.gguf"
for cmd in dump extract quantize; do
  case $cmd in
    dump) (ulimit -f 128 && exec "$Q" dump "$T/in.gguf" token_embd.weight --f32 -o "$T/old.gguf") >"$T/out" 2>&1 ;;
    extract) (ulimit -f 128 && exec "$Q" extract "$T/in.gguf" "$T/old.gguf" --all) >"$T/out" 2>&1 ;;
    quantize) (ulimit -f 128 && exec "$Q" quantize "$T/in.gguf" "$T/old.gguf" q8_0 -j 1) >"$T/out" 2>&1 ;;
  esac
  rc=$?
  if [ $rc -eq 1 ] && grep -q "cannot write" "$T/out" && [ "$(cat "$T/old.gguf")" = "good old output" ] && no_temp "$T"; then
    ok "$cmd: a write that fails (file size limit) leaves no temp file and the old output"
  else
    bad "$cmd: a write that fails (file size limit) leaves no temp file and the old output" "exit $rc: $(head -c 300 "$T/out"; ls "$T")"
  fi
done
# A missing output directory is refused before any work.
"$Q" quantize "$T/in.gguf" "$T/nodir/out.gguf" q8_0 >"$T/out" 2>&1
[ $? -eq 1 ] && grep -q "does not exist" "$T/out" && ok "a missing output directory is refused" ||
  bad "a missing output directory is refused" "$(head -c 300 "$T/out")"

# --- signals mid-quantize ------------------------------------------------------------------------------
# A 48 MB f32 model takes seconds to quantize to q6_k on one thread; the signal comes once the temp file exists.
python3 - "$T/big.gguf" <<'EOF'
import sys
import numpy as np
import gguf
w = gguf.GGUFWriter(sys.argv[1], "test")
rng = np.random.default_rng()
for i in range(3):
    w.add_tensor(f"blk.{i}.ffn_up.weight", rng.standard_normal((1024, 4096)).astype(np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
EOF
for sig in INT TERM HUP; do
  echo "good old output" >"$T/sig.gguf"
  # A background job of a non-interactive shell starts with SIGINT ignored (and qmoe then leaves it so): restore
  # the default disposition, as an interactive shell's job would have it.
  python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
    "$Q" quantize "$T/big.gguf" "$T/sig.gguf" q6_k --threads 1 >"$T/out" 2>&1 &
  pid=$!
  i=0
  while [ $i -lt 600 ] && ! ls "$T" | grep -q 'sig\.gguf\.tmp'; do sleep 0.01; i=$((i + 1)); done
  sleep 0.2
  kill -$sig $pid
  wait $pid 2>/dev/null
  rc=$?
  if [ $rc -gt 128 ] && no_temp "$T" && [ "$(cat "$T/sig.gguf")" = "good old output" ]; then
    ok "SIG$sig mid-quantize: no temp file left, the old output intact"
  else
    bad "SIG$sig mid-quantize: no temp file left, the old output intact" "exit $rc (waited $i), files: $(ls "$T" | tr '\n' ' ')"
  fi
done

# --- a symlink planted at the temp name is not followed ------------------------------------------------
echo "victim" >"$T/victim"
rm -f "$T/p.gguf"
sh -c 'ln -s "$1/victim" "$1/p.gguf.tmp$$" && exec "$2" quantize "$1/in.gguf" "$1/p.gguf" q8_0 -j 1' sh "$T" "$Q" >"$T/out" 2>&1
rc=$?
if [ $rc -eq 0 ] && [ "$(cat "$T/victim")" = "victim" ] && ls "$T" | grep -q '^p\.gguf\.tmp[0-9]*$' &&
   "$Q" inspect "$T/p.gguf" >/dev/null 2>&1; then
  ok "a symlink planted at the temp name is not followed (O_EXCL)"
else
  bad "a symlink planted at the temp name is not followed (O_EXCL)" "exit $rc, victim '$(cat "$T/victim")': $(head -c 300 "$T/out")"
fi

# --- repeated options ----------------------------------------------------------------------------------
# rep NAME ARGS...: a usage error (exit 2) naming the repeated option.
rep() {
  name=$1
  shift
  "$Q" "$@" >"$T/out" 2>&1
  rc=$?
  [ $rc -eq 2 ] && grep -q "twice\|exactly one" "$T/out" && ok "repeated option: $name" || bad "repeated option: $name" "exit $rc: $(head -c 200 "$T/out")"
}
rep "dump -o a -o b" dump "$T/in.gguf" output_norm.weight --raw -o "$T/a" -o "$T/b"
rep "dump --rows twice" dump "$T/in.gguf" output_norm.weight --raw --rows 0 --rows=0 -o "$T/a"
rep "dump --raw --raw" dump "$T/in.gguf" output_norm.weight --raw --raw -o "$T/a"
rep "dump --f32 --raw" dump "$T/in.gguf" output_norm.weight --f32 --raw -o "$T/a"
rep "extract --all --all" extract "$T/in.gguf" "$T/a" --all --all
rep "extract --max-array twice" extract "$T/in.gguf" "$T/a" --all --max-array 1 --max-array 2
rep "quantize -j and --threads" quantize "$T/in.gguf" "$T/a" q8_0 -j 1 --threads 2
rep "quantize --verbatim-names twice" quantize "$T/in.gguf" "$T/a" q8_0 --verbatim-names --verbatim-names
rep "inspect --json --json" inspect --json --json "$T/in.gguf"
rep "inspect --full --full" inspect --full --full "$T/in.gguf"
[ -e "$T/a" ] || [ -e "$T/b" ] && bad "usage errors write nothing" "$(ls "$T")" || ok "usage errors write nothing"
exit $failed
