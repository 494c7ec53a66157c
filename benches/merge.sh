#!/usr/bin/env bash
# merge against a copy: `vhdkit merge` of a 1 GiB child into a 2 GiB
# parent (dynamic VHDX, full of data), against copying the chain to a new
# image, run alternately (merge, copy, merge, copy, ...) on tmpfs so that
# a machine whose speed drifts slows both alike. Prints per baseline the
# median of the per-pair ratios copy time / merge time (above 1: merge is
# faster) and their range, and the median times: wall-clock time, and CPU
# time (user + system, from /usr/bin/time), which a machine busy with
# other work disturbs less.
#
#   benches/merge.sh
#
# Baselines: qemu-img cannot read VHDX (or VHD) differencing chains (it
# refuses a differencing VHDX and reads a differencing VHD as if it had no
# parent), so "qemu-img convert of the chain" is measured on what it would
# have to copy: a flat dynamic VHDX with the chain's content, converted to
# a new VHDX by `qemu-img convert`. The copy vhdkit itself offers,
# `vhdkit convert` of the chain to a new VHDX, is the second baseline.
# PAIRS (default 5) pairs; BENCH_DIR (default /dev/shm/vhdkit-merge)
# where images are made; VHDKIT (default target/release/vhdkit, built
# when missing).
set -euo pipefail
pairs=${PAIRS:-5}
work=${BENCH_DIR:-/dev/shm/vhdkit-merge}
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

echo "making a 2 GiB parent and a 1 GiB child ..."
head -c 2G /dev/urandom >data.raw
"$vhdkit" convert -q -O vhdx data.raw parent.vhdx
head -c 1G /dev/urandom >child.raw
"$vhdkit" create --parent parent.vhdx child.avhdx
"$vhdkit" write child.avhdx --offset 512M --input child.raw --no-children-check
rm -f child.raw data.raw
"$vhdkit" convert -q -O vhdx child.avhdx flat.vhdx
# The pristine chain, copied afresh for every merge (not timed).
mkdir pristine
mv parent.vhdx child.avhdx pristine/

: >merge.t
: >qemu.t
: >convert.t
for i in $(seq "$pairs"); do
  rm -rf run && mkdir run && cp pristine/* run/
  timed "$vhdkit" merge -q run/child.avhdx >>merge.t
  "$vhdkit" compare run/parent.vhdx flat.vhdx >/dev/null
  rm -f out.vhdx
  timed qemu-img convert -f vhdx -O vhdx flat.vhdx out.vhdx >>qemu.t
  rm -f out.vhdx
  rm -rf run && mkdir run && cp pristine/* run/
  timed "$vhdkit" convert -q -O vhdx run/child.avhdx out.vhdx >>convert.t
  rm -f out.vhdx
done

report() {
  local name=$1 file=$2 col what
  for col in 1 2; do
    what=$([ "$col" = 1 ] && echo wall || echo cpu)
    paste "$file" merge.t | awk -v c="$col" '{ print $c / $(c + 2) }' >ratio.t
    cut -d' ' -f"$col" "$file" >a.t
    cut -d' ' -f"$col" merge.t >b.t
    printf '%-30s %-4s ratio %s (range %s); median %s s vs merge %s s\n' \
      "$name / merge:" "$what" "$(median <ratio.t | xargs printf '%.2f')" "$(range <ratio.t)" \
      "$(median <a.t | xargs printf '%.2f')" "$(median <b.t | xargs printf '%.2f')"
  done
}
echo "$pairs pairs, 1 GiB child into a 2 GiB parent (dynamic VHDX, 32 MiB blocks), tmpfs"
report "qemu-img convert (flat copy)" qemu.t
report "vhdkit convert (chain copy)" convert.t
