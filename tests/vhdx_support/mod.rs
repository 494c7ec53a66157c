//! Helpers shared by the VHDX integration tests: fixtures, oracles, hashing.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use vhdkit::{OpenOptions, VirtualDisk};

/// `../shared/fixtures/real` beside the crate, if present.
pub fn real_fixtures() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/real");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent", p.display());
        None
    }
}

/// Decompress `gz` into `dir`, returning the path of the result.
pub fn gunzip(gz: &Path, dir: &Path) -> PathBuf {
    let name = gz.file_stem().expect("file name");
    let out = dir.join(name);
    let data = Command::new("gzip")
        .arg("-dc")
        .arg(gz)
        .output()
        .expect("run gzip");
    assert!(data.status.success(), "gzip -dc {} failed", gz.display());
    std::fs::write(&out, data.stdout).expect("write decompressed image");
    out
}

/// Whether an external tool is usable: when it is not, skip with a printed
/// reason, except under CI (env `CI` set), where a missing oracle fails.
pub fn have_tool(name: &str, probe: &mut Command) -> bool {
    let ok = probe.output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{name} is required under CI but is not usable");
        }
        eprintln!("skipping: {name} is not installed");
    }
    ok
}

/// qemu-img, the oracle for VHDX images.
pub fn have_qemu_img() -> bool {
    have_tool("qemu-img", Command::new("qemu-img").arg("--version"))
}

/// Run a command, panicking with its output on failure.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of a file.
pub fn file_sha256(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).expect("read file"))
}

/// The whole virtual disk's content.
pub fn read_all(disk: &dyn VirtualDisk) -> Vec<u8> {
    let size = usize::try_from(disk.virtual_size()).expect("size");
    let mut out = vec![0u8; size];
    for (i, chunk) in out.chunks_mut(4 << 20).enumerate() {
        disk.read_at(chunk, (i * (4 << 20)) as u64)
            .unwrap_or_else(|e| panic!("read at {:#x}: {e}", i * (4 << 20)));
    }
    out
}

/// Open read-only.
pub fn open(path: &Path) -> Box<dyn VirtualDisk> {
    vhdkit::open(path, &OpenOptions::new())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Deterministic test content of `mib` MiB: every third MiB zero, the
/// rest pseudo-random.
pub fn pattern(mib: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; mib << 20];
    let mut x = seed | 1;
    for (i, m) in v.chunks_mut(1 << 20).enumerate() {
        if i % 3 == 1 {
            continue;
        }
        for b in m.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    v
}

/// Little-endian helpers for patching images.
pub fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// Little-endian u64 at `o`.
pub fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// CRC-32C of `b` with the 4 bytes at `field` taken as zero.
pub fn crc_without(b: &[u8], field: usize) -> u32 {
    vhdkit::checksum::crc32c_with_zeroed_field(b, field)
}

/// Parsed positions of a VHDX file, found independently of the library.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Offset of the current header.
    pub header: usize,
    pub log_offset: u64,
    pub log_length: u64,
    pub bat_offset: u64,
    pub metadata_offset: u64,
}

/// Find the current header, the log, the BAT and the metadata region.
pub fn layout(file: &[u8]) -> Layout {
    let h1 = 64 << 10;
    let h2 = 128 << 10;
    let valid = |o: usize| {
        &file[o..o + 4] == b"head" && crc_without(&file[o..o + 4096], 4) == u32_at(file, o + 4)
    };
    let header = match (valid(h1), valid(h2)) {
        (true, true) if u64_at(file, h2 + 8) > u64_at(file, h1 + 8) => h2,
        (true, _) => h1,
        (false, true) => h2,
        _ => panic!("no valid header"),
    };
    let rt = 192 << 10;
    assert_eq!(&file[rt..rt + 4], b"regi");
    let n = u32_at(file, rt + 8) as usize;
    let mut bat = 0;
    let mut meta = 0;
    for i in 0..n {
        let e = rt + 16 + i * 32;
        let g = uuid::Uuid::from_bytes_le(file[e..e + 16].try_into().unwrap()).to_string();
        match g.as_str() {
            "2dc27766-f623-4200-9d64-115e9bfd4a08" => bat = u64_at(file, e + 16),
            "8b7ca206-4790-4b9a-b8fe-575f050f886e" => meta = u64_at(file, e + 16),
            _ => {}
        }
    }
    Layout {
        header,
        log_offset: u64_at(file, header + 72),
        log_length: u64::from(u32_at(file, header + 68)),
        bat_offset: bat,
        metadata_offset: meta,
    }
}
