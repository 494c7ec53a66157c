#!/usr/bin/env bash
# Builds small seed corpora for the fuzz targets in fuzz/corpus/<target>/
# (not committed: rebuild them with this script). Needs a release build of
# vhdkit (cargo build --release) and qemu-img.
set -euo pipefail
cd "$(dirname "$0")"
B=../target/release/vhdkit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p corpus/open_vhd corpus/open_vhdx corpus/open_evhd corpus/keypair_xml

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
cp "$tmp"/{d,q}.vhdx corpus/open_vhdx/

# EVHD addressed to the fixed test key.
$B key public test-key.xml -o "$tmp/pub.xml" --force
head -c 65536 /dev/urandom > "$tmp/r.raw"
$B convert -q --force -O evhd --block-size 4K --recipient "$tmp/pub.xml" "$tmp/r.raw" "$tmp/e.evhd"
cp "$tmp/e.evhd" corpus/open_evhd/

# Key files: the test key, its public half, PEM forms.
cp test-key.xml "$tmp/pub.xml" corpus/keypair_xml/
$B key export-pem test-key.xml -o corpus/keypair_xml/key.pem --force
$B key export-pem test-key.xml --public -o corpus/keypair_xml/pub.pem --force
echo "seeds in fuzz/corpus/"
