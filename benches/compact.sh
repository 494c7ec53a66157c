#!/usr/bin/env bash
# Compaction against a copy: a 2 GiB dynamic VHDX whose blocks all hold
# data, then half of them (every other block) zeroed, is compacted in place
# with `vhdkit compact` (A) and copied with `qemu-img convert -O vhdx` to a
# new file (B), alternately A B A B ... on tmpfs, each A on a fresh copy of
# the image (the copy is not timed). Prints the median of the per-pair
# ratios B time / A time (above 1: compact is faster) with their range, the
# median times, the median CPU time (user + system) of each, which a
# loaded machine disturbs less than elapsed time (both tools run several
# threads), and the file sizes each produces (and a fresh `vhdkit convert`
# of the same content, for scale).
#
# The image is dense: `vhdkit write` stores the zeros, as a guest zeroing
# its disk leaves them. The copy each A works on is made with
# `cp --sparse=$COPY_SPARSE`: by default (never) the copy is as dense as the
# image qemu-img reads, and compact reads every zero; with always, cp turns
# the zeroed blocks into holes (as a file system that passes discards
# through would) and compact finds them without reading them, while
# qemu-img still reads the dense image.
#
#   benches/compact.sh            PAIRS (default 5), SIZE_MIB (default 2048),
#                                 BENCH_DIR (default /dev/shm/vhdkit-compact),
#                                 COPY_SPARSE (default never; or always)
set -euo pipefail
pairs=${PAIRS:-5}
size_mib=${SIZE_MIB:-2048}
copy_sparse=${COPY_SPARSE:-never}
work=${BENCH_DIR:-/dev/shm/vhdkit-compact}
here=$(cd "$(dirname "$0")/.." && pwd)
(cd "$here" && cargo build --release -q --bin vhdkit)
v="$here/target/release/vhdkit"
command -v qemu-img >/dev/null || { echo "qemu-img is not installed" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cd "$work"

# Every MiB random, so that no block reads as zeros before the zeroing.
python3 - base.raw "$size_mib" <<'PY'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(11)
with open(path, "wb") as f:
    for _ in range(mib):
        f.write(rnd.randbytes(1 << 20))
PY
$v convert -q -O vhdx base.raw base.vhdx
rm base.raw
block=$($v info --json base.vhdx | python3 -c 'import json,sys; print(json.load(sys.stdin)["block_size"])')
blocks=$(( size_mib * 1048576 / block ))
for ((b = 1; b < blocks; b += 2)); do
  $v write --no-children-check base.vhdx --offset $(( b * block )) --pattern 0 --length "$block"
done
echo "image: $size_mib MiB dynamic VHDX, $blocks blocks of $(( block >> 20 )) MiB, every other one zeroed; copies made with cp --sparse=$copy_sparse"

# "elapsed cpu" seconds of one command.
timed() {
  /usr/bin/time -f "%e %U %S" -o t.out "$@" >/dev/null
  awk '{printf "%s %.2f", $1, $2 + $3}' t.out
}
a_times=() b_times=() a_cpu=() b_cpu=()
for ((i = 0; i < pairs; i++)); do
  cp --sparse="$copy_sparse" base.vhdx a.vhdx
  sync
  read -r e c <<<"$(timed "$v" compact a.vhdx)"
  a_times+=("$e") a_cpu+=("$c")
  a_size=$(stat -c %s a.vhdx)
  rm -f a.vhdx b.vhdx
  read -r e c <<<"$(timed qemu-img convert -O vhdx base.vhdx b.vhdx)"
  b_times+=("$e") b_cpu+=("$c")
  b_size=$(stat -c %s b.vhdx)
  rm -f b.vhdx
done
$v convert -q base.vhdx fresh.vhdx
fresh_size=$(stat -c %s fresh.vhdx)
python3 - "${a_times[*]}" "${b_times[*]}" "${a_cpu[*]}" "${b_cpu[*]}" "$(stat -c %s base.vhdx)" "$a_size" "$b_size" "$fresh_size" <<'PY'
import statistics, sys
a = list(map(float, sys.argv[1].split()))
b = list(map(float, sys.argv[2].split()))
ac = list(map(float, sys.argv[3].split()))
bc = list(map(float, sys.argv[4].split()))
before, a_size, b_size, fresh = map(int, sys.argv[5:9])
r = [y / x for x, y in zip(a, b)]
print(f"vhdkit compact (in place)     median {statistics.median(a):.3f} s  ({min(a):.3f}..{max(a):.3f})")
print(f"qemu-img convert -O vhdx      median {statistics.median(b):.3f} s  ({min(b):.3f}..{max(b):.3f})")
print(f"time ratio qemu / compact     median {statistics.median(r):.2f}x  (range {min(r):.2f}..{max(r):.2f}x, {len(r)} pairs)")
print(f"CPU time (user + system)      compact {statistics.median(ac):.2f} s, qemu-img {statistics.median(bc):.2f} s")
mib = lambda n: f"{n / 1048576:.1f} MiB ({n} bytes)"
print(f"file size before              {mib(before)}")
print(f"after vhdkit compact          {mib(a_size)}")
print(f"qemu-img convert output       {mib(b_size)}")
print(f"fresh vhdkit convert          {mib(fresh)}")
print(f"size ratio compact / qemu     {a_size / b_size:.3f}")
PY
