#!/usr/bin/env python3
"""Seed inputs for the nbd_server fuzz target: what well-behaved and
slightly broken clients send (client flags, options, requests with
payloads), written to fuzz/corpus/nbd_server/. Run by make-seeds.sh."""
import hashlib
import os
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus/nbd_server")
os.makedirs(out, exist_ok=True)


def opt(o, data=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(data)) + data


def name(n):
    return struct.pack(">I", len(n)) + n


def go(n, infos=(3,)):
    return name(n) + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)


def meta(n, queries):
    return name(n) + struct.pack(">I", len(queries)) + b"".join(name(q) for q in queries)


def req(kind, off, length, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, kind, cookie, off, length) + payload


flags = struct.pack(">I", 3)
structured = opt(8) + opt(10, meta(b"rw", [b"base:allocation"]))
requests = (
    req(0, 0, 4096)
    + req(1, 512, 1024, payload=b"\xab" * 1024)
    + req(1, 3, 5, flags=1, payload=b"hello")
    + req(6, 8192, 16384, flags=2)
    + req(6, 0, 65536)
    + req(4, 0, 65536)
    + req(7, 0, 65536, flags=8)
    + req(7, 4096, 60000)
    + req(0, 30000, 8000, flags=4)
    + req(3, 0, 0)
    + req(5, 0, 4096)
    + req(0, 65536, 512)
    + req(2, 0, 0)
)
seeds = {
    "go-structured": flags + structured + opt(7, go(b"rw")) + requests,
    "go-simple": flags + opt(7, go(b"rw", ())) + requests,
    "export-name": flags + opt(1, b"rw") + requests,
    "read-only": flags + structured + opt(10, meta(b"ro", [b"base:"])) + opt(7, go(b"ro")) + requests,
    "options": flags + opt(3) + opt(6, go(b"", (0, 1, 2, 3))) + opt(5) + opt(9, meta(b"rw", []))
    + opt(8) + opt(9, meta(b"", [b"base:", b"x-y:z"])) + opt(99, b"junk") + opt(2),
    "bad-go": flags + opt(7, b"\x00\x00\x01\x00rw") + opt(7, go(b"nonesuch")) + opt(7, go(b"rw")) + req(0, 0, 1),
}
for k, v in seeds.items():
    with open(os.path.join(out, hashlib.sha1(v).hexdigest()), "wb") as f:
        f.write(v)
print(f"{len(seeds)} nbd_server seeds in {out}")
