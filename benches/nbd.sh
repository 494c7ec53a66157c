#!/usr/bin/env bash
# vhdkit serve against qemu-nbd, serving the same dynamic VHDX and the same
# raw file from tmpfs (issue 15, acceptance 5):
#   seq  - sequential read of the whole disk with
#          `qemu-img convert -n -f raw nbd+unix://... ` into a null-co target
#   rand - 4 KiB reads with `qemu-img bench` (queue depth 16, a step of
#          about 31 MiB so that consecutive reads land far apart)
# Runs alternate (vhdkit, qemu-nbd) PAIRS times; prints per case the median
# of the time ratios vhdkit/qemu-nbd (below 1: vhdkit faster) and their
# range. Needs a release build, qemu-img and qemu-nbd.
#
#   benches/nbd.sh                 (SIZE=2G PAIRS=5 RAND_COUNT=100000)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-2G}
PAIRS=${PAIRS:-5}
RAND_COUNT=${RAND_COUNT:-100000}
B=${VHDKIT:-$PWD/target/release/vhdkit}
dir=$(mktemp -d /dev/shm/vhdkit-nbd-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Three quarters random data in 1 MiB runs with every fourth run left a
# hole, the last quarter a hole: reads of data and of holes both count.
bytes=$("$B" create -f raw "$dir/probe.raw" "$SIZE" >/dev/null && stat -c %s "$dir/probe.raw")
rm -f "$dir/probe.raw"
mib=$((bytes >> 20))
truncate -s "$bytes" "$dir/disk.raw"
python3 - "$dir/disk.raw" "$mib" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    for i in range(mib * 3 // 4):
        if i % 4 != 3:
            f.seek(i << 20)
            f.write(os.urandom(1 << 20))
PY
"$B" convert -q -f raw -O vhdx "$dir/disk.raw" "$dir/disk.vhdx"

now() { date +%s.%N; }

# start_server KIND IMAGE FMT -> sets URI
start_server() {
  local kind=$1 image=$2 fmt=$3 sock="$dir/$1.sock"
  rm -f "$sock"
  if [ "$kind" = vhdkit ]; then
    "$B" serve --read-only --socket "$sock" --export-name disk -f "$fmt" "$image" >/dev/null &
  else
    qemu-nbd --read-only --persistent --shared=16 -f "$fmt" -x disk -k "$sock" "$image" &
  fi
  pids=($!)
  for _ in $(seq 1 500); do [ -S "$sock" ] && break; sleep 0.01; done
  URI="nbd+unix:///disk?socket=$sock"
}

stop_server() {
  kill "${pids[0]}"
  wait "${pids[0]}" 2>/dev/null || true
  pids=()
}

# run_case CASE IMAGE FMT: one timing in seconds on stdout
run_case() {
  local case=$1 t0 t1
  t0=$(now)
  if [ "$case" = seq ]; then
    qemu-img convert -n -f raw "$URI" --target-image-opts "driver=null-co,size=$bytes" >/dev/null
  else
    qemu-img bench -q -f raw -c "$RAND_COUNT" -d 16 -s 4096 -S 32509952 "$URI" >/dev/null
  fi
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

summary() {
  python3 - "$@" <<'PY'
import statistics, sys
name, vals = sys.argv[1], [float(x) for x in sys.argv[2:]]
a, b = vals[0::2], vals[1::2]
r = sorted(x / y for x, y in zip(a, b))
print(f"{name:12s} vhdkit median {statistics.median(a):.3f}s  qemu-nbd median {statistics.median(b):.3f}s  "
      f"ratio median {statistics.median(r):.3f} range {r[0]:.3f}-{r[-1]:.3f} ({len(r)} pairs)")
PY
}

echo "disk: $SIZE ($bytes bytes) in $dir; $PAIRS pairs; $(nproc) CPUs"
for img in raw vhdx; do
  for case in seq rand; do
    times=()
    for _ in $(seq 1 "$PAIRS"); do
      for kind in vhdkit qemu; do
        start_server "$kind" "$dir/disk.$img" "$img"
        times+=("$(run_case "$case")")
        stop_server
      done
    done
    summary "$img-$case" "${times[@]}"
  done
done
