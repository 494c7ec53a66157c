#!/usr/bin/env bash
# Before/after: the same workloads through two revisions of vhdkit, run
# alternately (old, new, old, new, ...) on the same inputs on tmpfs, so a
# machine whose speed drifts slows both alike. Prints, per workload, the
# median of the per-pair ratios old time / new time (above 1: the new
# revision is faster) and their range, and the median times.
#
#   benches/revisions.sh OLD_TREE [NEW_TREE]     (NEW_TREE defaults to .)
#
# OLD_TREE is a checkout of the older revision, e.g.
#   git worktree add /tmp/old <commit> --detach
# Each tree is built in release mode (the CLI and examples/strided_reads.rs,
# copied into the old tree when it lacks it). Workloads are what a user
# runs: CLI conversions between every format (EVHD with a 2048-bit key),
# differencing chains to raw, and 4 KiB strided reads through the library
# (examples/strided_reads.rs) on a dynamic VHDX and a differencing VHD.
# PAIRS (default 5) pairs per workload; SIZE_MIB (default 1024) source size;
# BENCH_DIR (default /dev/shm/vhdkit-revisions) where images are made.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,19p "$0"; exit 1; }
old=$(realpath "$1")
new=$(realpath "${2:-.}")
pairs=${PAIRS:-5}
size_mib=${SIZE_MIB:-1024}
work=${BENCH_DIR:-/dev/shm/vhdkit-revisions}
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

for side in old new; do
  tree=${!side}
  if [ ! -e "$tree/examples/strided_reads.rs" ]; then
    mkdir -p "$tree/examples"
    cp "$new/examples/strided_reads.rs" "$tree/examples/"
  fi
  (cd "$tree" && cargo build --release -q --bin vhdkit --example strided_reads)
  cp "$tree/target/release/vhdkit" "$work/$side-vhdkit"
  cp "$tree/target/release/examples/strided_reads" "$work/$side-reads"
done
echo "old: $(cd "$old" && git describe --always --dirty 2>/dev/null || echo "$old")"
echo "new: $(cd "$new" && git describe --always --dirty 2>/dev/null || echo "$new")"

# Inputs, made once with the new binary and read by both.
python3 - "$work/mixed.raw" "$size_mib" <<'PY'
import os, random, sys
# 1 MiB pieces: half random, an eighth text, the rest zeros.
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
text = (b"The quick brown fox jumps over the lazy dog. " * 23302)[: 1 << 20]
with open(path, "wb") as f:
    for i in range(mib):
        k = i % 8
        if k in (0, 2, 4, 6):
            f.write(rnd.randbytes(1 << 20))
        elif k == 1:
            f.write(text)
        else:
            f.seek(1 << 20, os.SEEK_CUR)
    f.truncate(mib << 20)
PY
v="$work/new-vhdkit"
cd "$work"
$v convert -q -O vhd mixed.raw src.vhd
$v convert -q -O vhdx mixed.raw src.vhdx
$v keygen --bits 2048 -o k.xml >/dev/null
$v convert -q -O evhd --recipient k.xml mixed.raw src.evhd
for fmt in vhd vhdx; do
  $v create --parent src.$fmt child.$fmt >/dev/null
  # Writes of 64 KiB every 3 MiB + 512: partly stored blocks, sector bitmaps.
  step=$(( 3 * 1048576 + 512 ))
  for ((off = 0; off + 65536 < size_mib * 1048576; off += step * 8)); do
    $v write --no-children-check child.$fmt --offset "$off" --pattern 0x5a --length 65536 2>/dev/null
  done
done

workloads=(
  "raw -> dynamic VHD|convert -q --force -O vhd mixed.raw OUT"
  "dynamic VHD -> raw|convert -q --force -O raw src.vhd OUT"
  "raw -> dynamic VHDX|convert -q --force -O vhdx mixed.raw OUT"
  "dynamic VHDX -> raw|convert -q --force -O raw src.vhdx OUT"
  "raw -> EVHD|convert -q --force -O evhd --recipient k.xml mixed.raw OUT"
  "EVHD -> raw|convert -q --force -O raw --key k.xml src.evhd OUT"
  "VHD child -> raw|convert -q --force -O raw child.vhd OUT"
  "VHDX child -> raw|convert -q --force -O raw child.vhdx OUT"
  "4K strided reads, VHDX|READS src.vhdx 200000"
  "4K strided reads, VHD child|READS child.vhd 200000"
)

# Seconds one run of workload $2 by revision $1 takes.
run_once() {
  local side=$1 cmd=$2 out="$work/out.$1" t0 t1
  rm -f "$out"
  local -a argv
  read -r -a argv <<<"${cmd//OUT/$out}"
  t0=$(date +%s.%N)
  if [ "${argv[0]}" = READS ]; then
    "$work/$side-reads" "${argv[@]:1}" >/dev/null
  else
    "$work/$side-vhdkit" "${argv[@]}" >/dev/null
  fi
  t1=$(date +%s.%N)
  rm -f "$out"
  echo "$t0 $t1" | awk '{printf "%.6f\n", $2 - $1}'
}

printf '%-28s %10s %10s %8s %17s\n' workload "old (s)" "new (s)" ratio "range"
for w in "${workloads[@]}"; do
  name=${w%%|*}
  cmd=${w#*|}
  run_once new "$cmd" >/dev/null # warm the page cache for both
  olds=() news=()
  for ((i = 0; i < pairs; i++)); do
    olds+=("$(run_once old "$cmd")")
    news+=("$(run_once new "$cmd")")
  done
  python3 - "$name" "${olds[*]}" "${news[*]}" <<'PY'
import statistics, sys
name, olds, news = sys.argv[1], list(map(float, sys.argv[2].split())), list(map(float, sys.argv[3].split()))
ratios = [o / n for o, n in zip(olds, news)]
print(f"{name:<28} {statistics.median(olds):>10.3f} {statistics.median(news):>10.3f} "
      f"{statistics.median(ratios):>7.2f}x {min(ratios):>7.2f}..{max(ratios):.2f}x")
PY
done
