#!/usr/bin/env bash
# Builds seed corpora for the fuzz targets in fuzz/corpus/<target>/ from
# images vhdkit and qemu-img write and from the real images in
# ../shared/fixtures/real (when present). VHDX and EVHD files are written in
# the sparse input form (see src/lib.rs: image_bytes) so that a seed of a
# few KiB stands for a file of several MiB. Needs a release build of vhdkit
# (cargo build --release) and qemu-img. The committed corpora are these
# seeds grown by fuzzing and minimized with `cargo fuzz cmin`.
set -euo pipefail
cd "$(dirname "$0")"
B=../target/release/vhdkit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p corpus/open_vhd corpus/open_vhdx corpus/open_evhd corpus/keypair_xml \
  corpus/vhdx_log corpus/write_ops

# The sparse form: records [u32 offset][u16 length][bytes] after a magic,
# one per run of non-zero 512-byte sectors, and a last empty record at the
# file's length.
sparse() {
  python3 - "$1" "$2" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
out = bytearray(b"vhdkSPRS")
i, n = 0, len(data)
while i < n:
    if not any(data[i:i + 512]):
        i += 512
        continue
    j = i
    while j < n and j - i < 65024 and any(data[j:j + 512]):
        j += 512
    j = min(j, n)
    out += struct.pack("<IH", i, j - i) + data[i:j]
    i = j
out += struct.pack("<IH", n, 0)
open(sys.argv[2], "wb").write(out)
PY
}

# VHD: dynamic with small blocks, fixed, differencing.
$B create -t dynamic --block-size 4K --force "$tmp/d.vhd" 64K
$B write "$tmp/d.vhd" --offset 5000 --pattern 0x5a --length 3000
$B create -t fixed --force "$tmp/f.vhd" 8K
$B write "$tmp/f.vhd" --offset 0 --pattern 0x11 --length 512
$B create --parent "$tmp/d.vhd" --block-size 4K --force "$tmp/c.vhd"
$B write "$tmp/c.vhd" --offset 100 --pattern 0x33 --length 700
cp "$tmp"/{d,f,c}.vhd corpus/open_vhd/

# VHDX: the smallest that exist are a few MiB (1 MiB alignment); libFuzzer
# reads them up to -max_len, which still covers headers, regions and metadata.
$B create -f vhdx --block-size 1M --force "$tmp/d.vhdx" 4M
$B write "$tmp/d.vhdx" --offset 1M --pattern 0x22 --length 4096
qemu-img create -q -f vhdx -o subformat=dynamic,log_size=1M "$tmp/q.vhdx" 4M
for f in d q; do sparse "$tmp/$f.vhdx" "corpus/open_vhdx/$f.vhdx.sparse"; done
real=../../shared/fixtures/real
if [ -d "$real" ]; then
  for gz in "$real"/*/*.vhdx.gz "$real"/*/*.avhdx.gz "$real"/*/*.vhd.gz; do
    [ -e "$gz" ] || continue
    name=$(basename "$gz" .gz)
    gunzip -c "$gz" > "$tmp/$name"
    # Only the small ones: the sparse form caps files at 64 MiB.
    [ "$(stat -c %s "$tmp/$name")" -le $((64 << 20)) ] || continue
    case $name in
      *.vhdx | *.avhdx) sparse "$tmp/$name" "corpus/open_vhdx/$name.sparse" ;;
      *.vhd) sparse "$tmp/$name" "corpus/open_vhd/$name.sparse" ;;
    esac
  done
  # Seeds past the fuzzing runs' -max_len (256 KiB) would only be cut.
  find corpus/open_vhd corpus/open_vhdx -name '*.sparse' -size +256k -delete
fi

# EVHD addressed to the fixed test key.
$B key public test-key.xml -o "$tmp/pub.xml" --force
head -c 65536 /dev/urandom > "$tmp/r.raw"
$B convert -q --force -O evhd --block-size 4K --recipient "$tmp/pub.xml" "$tmp/r.raw" "$tmp/e.evhd"
sparse "$tmp/e.evhd" corpus/open_evhd/e.evhd.sparse
# The same in the sealed form (src/evhd_seal.rs): the target re-seals what
# the fuzzer changed with the test key, so mutations pass the CRCs and MACs.
{ printf vhdkSEAL; tail -c +9 corpus/open_evhd/e.evhd.sparse; } > corpus/open_evhd/e.evhd.sealed
# A signed one (the private test key as recipient signs every commit): the
# target re-signs it, so mutations also get past the signature checks.
$B convert -q --force -O evhd --block-size 4K --recipient test-key.xml "$tmp/r.raw" "$tmp/s.evhd"
sparse "$tmp/s.evhd" "$tmp/s.evhd.sparse"
{ printf vhdkSEAL; tail -c +9 "$tmp/s.evhd.sparse"; } > corpus/open_evhd/s.evhd.signed.sealed

# Structured targets: a few random inputs to start from.
for i in 1 2 3 4; do
  head -c 256 /dev/urandom > "corpus/vhdx_log/random-$i"
  head -c 256 /dev/urandom > "corpus/write_ops/random-$i"
done

# Key files: the test key, its public half, PEM forms.
cp test-key.xml "$tmp/pub.xml" corpus/keypair_xml/
$B key export-pem test-key.xml -o corpus/keypair_xml/key.pem --force
$B key export-pem test-key.xml --public -o corpus/keypair_xml/pub.pem --force
# Partition tables (sgdisk, sfdisk) with small file systems in them, as
# raw disks in the sparse form; the GPT seed's backup sits at its 8 MiB end.
mkdir -p corpus/partitions
if command -v sgdisk >/dev/null && command -v sfdisk >/dev/null && command -v mkfs.fat >/dev/null; then
  truncate -s 8M "$tmp/g.raw"
  sgdisk -n1:2048:+2M -t1:ef00 -c1:ESP -n2:0:+2M -t2:8300 -n3:0:0 -t3:0700 "$tmp/g.raw" >/dev/null
  mkfs.fat -F 12 -n ESP -C "$tmp/f.fat" 2048 >/dev/null
  dd if="$tmp/f.fat" of="$tmp/g.raw" bs=512 seek=2048 conv=notrunc status=none
  mke2fs -q -t ext4 -L root "$tmp/e.ext" 2048
  dd if="$tmp/e.ext" of="$tmp/g.raw" bs=512 seek=6144 conv=notrunc status=none
  sparse "$tmp/g.raw" corpus/partitions/gpt.sparse
  truncate -s 8M "$tmp/m.raw"
  printf ',1024,c\n,,E\n,512,L\n,512,S\n' |
    sfdisk -q "$tmp/m.raw"
  sparse "$tmp/m.raw" corpus/partitions/mbr-logical.sparse
  head -c 512 "$tmp/m.raw" > corpus/partitions/mbr-sector
  sparse "$tmp/f.fat" corpus/partitions/bare-fat.sparse
fi
# Small bare file systems with a few files, for fs_list (sparse form).
mkdir -p corpus/fs_list
if command -v mkfs.fat >/dev/null && command -v mcopy >/dev/null && command -v mke2fs >/dev/null; then
  mkdir -p "$tmp/tree/dir/sub"
  printf 'hello\n' > "$tmp/tree/a.txt"
  head -c 3000 /dev/zero | tr '\0' x > "$tmp/tree/dir/b.bin"
  printf 'deep\n' > "$tmp/tree/dir/sub/c"
  ln -s ../a.txt "$tmp/tree/dir/link"
  mke2fs -q -t ext4 -d "$tmp/tree" "$tmp/s.ext4" 1024
  sparse "$tmp/s.ext4" corpus/fs_list/ext4.sparse
  mke2fs -q -t ext2 -d "$tmp/tree" "$tmp/s.ext2" 256
  sparse "$tmp/s.ext2" corpus/fs_list/ext2.sparse
  mkfs.fat -F 12 -C "$tmp/s.fat" 512 >/dev/null
  mcopy -s -i "$tmp/s.fat" "$tmp/tree/a.txt" "$tmp/tree/dir" ::/ 2>/dev/null || true
  sparse "$tmp/s.fat" corpus/fs_list/fat12.sparse
fi
if command -v mkntfs >/dev/null && command -v ntfscp >/dev/null; then
  truncate -s 2M "$tmp/s.ntfs"
  mkntfs -q -F "$tmp/s.ntfs" >/dev/null 2>&1
  ntfscp "$tmp/s.ntfs" "$tmp/tree/a.txt" a.txt >/dev/null 2>&1
  ntfscp -N ads "$tmp/s.ntfs" "$tmp/tree/dir/sub/c" a.txt >/dev/null 2>&1
  sparse "$tmp/s.ntfs" corpus/fs_list/ntfs.sparse
fi
# NBD client sessions (handshakes, options, requests).
python3 nbd-seeds.py corpus/nbd_server
echo "seeds in fuzz/corpus/"
