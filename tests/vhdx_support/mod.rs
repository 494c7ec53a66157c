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

/// A small deterministic generator (xorshift64*), so that failures print
/// a seed that reproduces them.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// How a [`FaultStorage`] decides what survives the crash.
#[derive(Debug, Clone, Copy)]
pub enum CrashMode {
    /// Storage operations persist in order up to the crash; the operation
    /// at the crash point, if a write, persists only its first `k` 512-byte
    /// sectors (`k` random, possibly 0) when `tear` is set.
    Prefix { tear: bool },
    /// Everything before the last flush persists; of the writes since
    /// then, a random subset persists (the system may write back in any
    /// order), and the write at the crash point is torn.
    Subset,
}

/// The atomic unit of the simulated device: writes tear between sectors,
/// never inside one.
pub const DEVICE_SECTOR: usize = 512;

#[derive(Debug, Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug)]
struct FaultState {
    /// What the running program sees (the page cache).
    volatile: Vec<u8>,
    /// What survives the crash.
    durable: Vec<u8>,
    /// Changes since the last flush, not yet in `durable` (subset mode).
    pending: Vec<Pending>,
    /// Storage operations (writes, length changes, flushes) so far.
    count: u64,
    /// Index of the operation at which the power fails.
    crash_at: u64,
    mode: CrashMode,
    rng: Rng,
    crashed: bool,
}

fn apply(image: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write(off, data) => {
            let (s, e) = (*off as usize, *off as usize + data.len());
            if image.len() < e {
                image.resize(e, 0);
            }
            image[s..e].copy_from_slice(data);
        }
        Pending::SetLen(len) => image.resize(*len as usize, 0),
    }
}

/// A fault-injecting storage: it behaves like memory until operation
/// number `crash_at` (counting writes, length changes and flushes from 0),
/// where the power fails: that operation and every later one returns an
/// error, and [`FaultStorage::durable`] holds what a reboot would find.
#[derive(Debug, Clone)]
pub struct FaultStorage(std::sync::Arc<std::sync::Mutex<FaultState>>);

impl FaultStorage {
    pub fn new(image: Vec<u8>, crash_at: u64, mode: CrashMode, seed: u64) -> Self {
        FaultStorage(std::sync::Arc::new(std::sync::Mutex::new(FaultState {
            durable: image.clone(),
            volatile: image,
            pending: Vec::new(),
            count: 0,
            crash_at,
            mode,
            rng: Rng::new(seed),
            crashed: false,
        })))
    }
    /// Storage operations so far.
    pub fn count(&self) -> u64 {
        self.0.lock().unwrap().count
    }
    pub fn crashed(&self) -> bool {
        self.0.lock().unwrap().crashed
    }
    /// The image as it would be found after the crash (or now, with every
    /// pending change persisted, when there was none).
    pub fn durable(&self) -> Vec<u8> {
        let st = self.0.lock().unwrap();
        let mut d = st.durable.clone();
        if !st.crashed {
            for p in &st.pending {
                apply(&mut d, p);
            }
        }
        d
    }

    fn op(&self, p: Option<Pending>) -> std::io::Result<()> {
        let mut guard = self.0.lock().unwrap();
        let st = &mut *guard;
        if st.crashed {
            return Err(std::io::Error::other("simulated power failure"));
        }
        let index = st.count;
        st.count += 1;
        if index == st.crash_at {
            st.crashed = true;
            if let CrashMode::Subset = st.mode {
                let pending = std::mem::take(&mut st.pending);
                for q in &pending {
                    if st.rng.below(2) == 0 {
                        apply(&mut st.durable, q);
                    }
                }
            }
            let tear = matches!(
                st.mode,
                CrashMode::Subset | CrashMode::Prefix { tear: true }
            );
            if let (true, Some(Pending::Write(off, data))) = (tear, &p) {
                let sectors = data.len().div_ceil(DEVICE_SECTOR) as u64;
                let keep = st.rng.below(sectors) as usize * DEVICE_SECTOR;
                if keep > 0 {
                    apply(
                        &mut st.durable,
                        &Pending::Write(*off, data[..keep].to_vec()),
                    );
                }
            }
            return Err(std::io::Error::other("simulated power failure"));
        }
        match (p, st.mode) {
            (None, _) => {
                let pending = std::mem::take(&mut st.pending);
                for q in &pending {
                    apply(&mut st.durable, q);
                }
            }
            (Some(q), CrashMode::Prefix { .. }) => {
                apply(&mut st.volatile, &q);
                apply(&mut st.durable, &q);
            }
            (Some(q), CrashMode::Subset) => {
                apply(&mut st.volatile, &q);
                st.pending.push(q);
            }
        }
        Ok(())
    }
}

impl vhdkit::io::Storage for FaultStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let st = self.0.lock().unwrap();
        let s = offset as usize;
        let src = st
            .volatile
            .get(s..s + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.op(Some(Pending::Write(offset, buf.to_vec())))
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.lock().unwrap().volatile.len() as u64)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.op(Some(Pending::SetLen(len)))
    }
    fn flush(&self) -> std::io::Result<()> {
        self.op(None)
    }
    fn is_writable(&self) -> bool {
        true
    }
}
