#!/usr/bin/env bash
# extract against debugfs: `vhdkit extract IMAGE:1:/ DEST` of an ext4
# partition inside a dynamic VHDX (GPT disk, partition 1), against
# `debugfs -R 'rdump / DEST'` on the partition's raw content, run
# alternately (vhdkit, debugfs, vhdkit, debugfs, ...) so that a machine
# whose speed drifts slows both alike. Two trees: 10,000 small files
# (100 directories of 100 files of 1-8 KiB), and one 1 GiB file. Prints
# per tree the median of the per-pair ratios debugfs time / vhdkit time
# (above 1: vhdkit is faster) and their range, and the median wall-clock
# and CPU (user + system) times. Every extract is checked against the
# source tree (file list and sha256) once.
#
#   benches/extract.sh
#
# PAIRS (default 5) pairs; BENCH_DIR (default /var/tmp/vhdkit-extract,
# about 5 GiB) where images are made; VHDKIT (default
# target/release/vhdkit, built when missing).
set -euo pipefail
pairs=${PAIRS:-5}
work=${BENCH_DIR:-/var/tmp/vhdkit-extract}
vhdkit=${VHDKIT:-target/release/vhdkit}
[ -x "$vhdkit" ] || cargo build --release -q --bin vhdkit
vhdkit=$(realpath "$vhdkit")
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cd "$work"

# Seconds `$@` takes, wall-clock and CPU: "WALL CPU".
timed() {
  /usr/bin/time -f '%e %U %S' -o time.out "$@" >/dev/null
  awk '{ print $1, $2 + $3 }' time.out
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
range() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.2f-%.2f", lo, hi}'; }
# sha256 of every file below $1, by relative path.
sums() { (cd "$1" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 -r sha256sum); }

# The partition `$2` (a tree) in a GPT disk as a dynamic VHDX `$1.vhdx`,
# its raw content kept as `$1.fs` for debugfs.
make_disk() {
  local name=$1 tree=$2 mib=$3
  truncate -s "${mib}M" "$name.fs"
  mkfs.ext4 -q -F -d "$tree" "$name.fs"
  truncate -s "$((mib + 4))M" "$name.raw"
  sgdisk -n 1:2048:+"${mib}M" -t 1:8300 "$name.raw" >/dev/null
  dd if="$name.fs" of="$name.raw" bs=1M seek=1 conv=notrunc,sparse status=none
  "$vhdkit" convert -q -f raw -O vhdx "$name.raw" "$name.vhdx"
  rm -f "$name.raw"
}

echo "making the trees and images ..."
mkdir -p small.src big.src
for d in $(seq 100); do
  mkdir "small.src/d$d"
  for f in $(seq 100); do
    head -c $(((d * 131 + f * 977) % 7168 + 1024)) /dev/urandom >"small.src/d$d/f$f"
  done
done
head -c 1G /dev/urandom >big.src/big.bin
make_disk small small.src 256
make_disk big big.src 1200

for tree in small big; do
  : >"$tree.v.t"
  : >"$tree.d.t"
  sums "$tree.src" >"$tree.want"
  for i in $(seq "$pairs"); do
    rm -rf out && sync
    timed "$vhdkit" extract "$tree.vhdx:1:/" out >>"$tree.v.t"
    [ "$i" = 1 ] && { sums out | cmp -s - "$tree.want" || { echo "vhdkit extract differs" >&2; exit 1; }; }
    rm -rf out && mkdir out && sync
    timed sh -c "debugfs -R 'rdump / out' $tree.fs 2>/dev/null" >>"$tree.d.t"
    [ "$i" = 1 ] && { sums out | cmp -s - "$tree.want" || { echo "debugfs rdump differs" >&2; exit 1; }; }
  done
  rm -rf out
  paste "$tree.v.t" "$tree.d.t" | awk '{ print $3 / $1 }' >"$tree.ratio"
  echo "$tree: debugfs/vhdkit wall-clock ratio median $(median <"$tree.ratio") (range $(range <"$tree.ratio")); median seconds vhdkit $(cut -d' ' -f1 "$tree.v.t" | median) wall $(cut -d' ' -f2 "$tree.v.t" | median) cpu, debugfs $(cut -d' ' -f1 "$tree.d.t" | median) wall $(cut -d' ' -f2 "$tree.d.t" | median) cpu"
done
