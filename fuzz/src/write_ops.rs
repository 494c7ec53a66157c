//! The `write_ops` target: a sequence of write, zero, discard, flush and
//! reopen operations on a new VHD, VHDX or EVHD (dynamic or differencing),
//! checked against a flat model of the disk after every step.
//!
//! A failing input's `Debug` form is Rust source for the same scenario:
//! paste it into `write_ops::run(&...)` to reproduce.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use vhdkit::CipherId;
use vhdkit::Discard;
use vhdkit::EvhdDisk;
use vhdkit::MemStorage;
use vhdkit::VhdBuilder;
use vhdkit::VhdxBuilder;
use vhdkit::unstable::chain::Chain;
use vhdkit::unstable::vhd::VhdDisk;
use vhdkit::unstable::vhdx::VhdxDisk;
use vhdkit::{OpenOptions, VirtualDisk};

const MIB: u64 = 1 << 20;
/// Most operations one scenario runs.
const MAX_OPS: usize = 48;

/// What is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Kind {
    VhdDynamic,
    VhdDifferencing,
    VhdxDynamic,
    Vhdx4kDynamic,
    VhdxDifferencing,
    EvhdGcm,
    EvhdGcmSiv,
}

impl Kind {
    /// Virtual size and block size.
    fn shape(self) -> (u64, u64) {
        match self {
            Kind::VhdDynamic | Kind::VhdDifferencing => (256 << 10, 4096),
            Kind::VhdxDynamic | Kind::Vhdx4kDynamic | Kind::VhdxDifferencing => (4 * MIB, MIB),
            Kind::EvhdGcm | Kind::EvhdGcmSiv => (160 << 10, 4096),
        }
    }
}

/// One step. Offsets and lengths are taken modulo the disk's size.
#[derive(Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Step {
    /// Write `len` bytes of a pattern seeded by `seed` at `offset`.
    Write {
        offset: u32,
        len: u16,
        seed: u8,
    },
    /// Write `len` zero bytes at `offset`.
    Zero {
        offset: u32,
        len: u16,
    },
    /// Discard whole blocks (VHDX); the other formats write zeros.
    Discard {
        offset: u32,
        len: u32,
    },
    Flush,
    /// Flush, close and open again; the image must check clean.
    Reopen,
}

/// A whole scenario.
#[derive(Clone, PartialEq, Eq, Arbitrary)]
pub struct Scenario {
    pub kind: Kind,
    pub steps: Vec<Step>,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Step::Write { offset, len, seed } => write!(
                f,
                "Step::Write {{ offset: {offset:#x}, len: {len}, seed: {seed} }}"
            ),
            Step::Zero { offset, len } => {
                write!(f, "Step::Zero {{ offset: {offset:#x}, len: {len} }}")
            }
            Step::Discard { offset, len } => {
                write!(f, "Step::Discard {{ offset: {offset:#x}, len: {len:#x} }}")
            }
            Step::Flush => write!(f, "Step::Flush"),
            Step::Reopen => write!(f, "Step::Reopen"),
        }
    }
}

impl fmt::Debug for Scenario {
    /// Rust source that builds the same scenario.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Scenario {{")?;
        writeln!(f, "    kind: Kind::{:?},", self.kind)?;
        writeln!(f, "    steps: vec![")?;
        for s in self.steps.iter().take(MAX_OPS) {
            writeln!(f, "        {s:?},")?;
        }
        write!(f, "    ],\n}}")
    }
}

/// The fixed test key (it protects nothing).
fn key() -> Arc<vhdkit::PrivateKey> {
    super::test_key()
}

/// Parent images, made once per process in a temporary folder.
struct Parents {
    dir: PathBuf,
    vhd: PathBuf,
    vhdx: PathBuf,
}

/// The parent's content: a pattern with a hole of zeros.
fn parent_content(size: u64) -> Vec<u8> {
    let mut v: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8 | 1).collect();
    let q = (size / 4) as usize;
    v[q..2 * q].fill(0);
    v
}

fn parents() -> &'static Parents {
    static P: OnceLock<Parents> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vhdkit-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary folder");
        let vhd = dir.join("parent.vhd");
        let vhdx = dir.join("parent.vhdx");
        let (size, bs) = Kind::VhdDifferencing.shape();
        let mut d =
            vhdkit::unstable::vhd::create(&vhd, VhdBuilder::new(size).block_size(bs as u32))
                .expect("create the VHD parent");
        d.write_at(&parent_content(size), 0).expect("write");
        d.flush().expect("flush");
        let (size, bs) = Kind::VhdxDifferencing.shape();
        let mut d =
            vhdkit::unstable::vhdx::create(&vhdx, VhdxBuilder::new(size).block_size(bs as u32))
                .expect("create the VHDX parent");
        d.write_at(&parent_content(size), 0).expect("write");
        d.close().expect("close");
        Parents { dir, vhd, vhdx }
    })
}

/// The disk under test, by format (discard is VHDX's alone).
enum Disk {
    Vhd(Box<VhdDisk>),
    Vhdx(Box<VhdxDisk>),
    Evhd(Box<EvhdDisk>),
}

impl Disk {
    fn as_dyn(&mut self) -> &mut dyn VirtualDisk {
        match self {
            Disk::Vhd(d) => d.as_mut(),
            Disk::Vhdx(d) => d.as_mut(),
            Disk::Evhd(d) => d.as_mut(),
        }
    }
}

/// One scenario's image, in memory, and what it needs to reopen.
struct Image {
    kind: Kind,
    mem: Arc<MemStorage>,
    path: PathBuf,
    parent: Option<PathBuf>,
}

impl Image {
    /// A new image of `kind`, opened read-write. Each kind is created once
    /// per process and copied afterwards: an EVHD copy keeps its wrapped
    /// master key, so reopening it skips the (slow, instrumented) RSA
    /// private operation after the first time.
    fn create(kind: Kind) -> (Image, Disk) {
        static PRISTINE: [OnceLock<Vec<u8>>; 7] = [const { OnceLock::new() }; 7];
        let p = parents();
        let (path, parent) = match kind {
            Kind::VhdDynamic => (p.dir.join("child.vhd"), None),
            Kind::VhdDifferencing => (p.dir.join("child.vhd"), Some(p.vhd.clone())),
            Kind::VhdxDifferencing => (p.dir.join("child.vhdx"), Some(p.vhdx.clone())),
            Kind::VhdxDynamic | Kind::Vhdx4kDynamic => (p.dir.join("child.vhdx"), None),
            Kind::EvhdGcm | Kind::EvhdGcmSiv => (PathBuf::new(), None),
        };
        let bytes = PRISTINE[kind as usize].get_or_init(|| {
            let mem = Arc::new(MemStorage::new());
            let mut disk = Self::create_in(kind, Box::new(mem.clone()), &path, parent.as_deref());
            disk.as_dyn().close().expect("close the new image");
            drop(disk);
            mem.to_vec()
        });
        let image = Image {
            kind,
            mem: Arc::new(MemStorage::from_vec(bytes.clone())),
            path,
            parent,
        };
        let disk = image.reopen();
        (image, disk)
    }

    fn create_in(
        kind: Kind,
        storage: Box<dyn vhdkit::Storage>,
        path: &Path,
        parent: Option<&Path>,
    ) -> Disk {
        let (size, bs) = kind.shape();
        match kind {
            Kind::VhdDynamic | Kind::VhdDifferencing => {
                let b = match parent {
                    Some(p) => VhdBuilder::new(0).differencing(p),
                    None => VhdBuilder::new(size),
                };
                let d = b.block_size(bs as u32).create(storage, Some(path));
                Disk::Vhd(Box::new(d.expect("create VHD")))
            }
            Kind::VhdxDynamic | Kind::Vhdx4kDynamic | Kind::VhdxDifferencing => {
                let b = match (parent, kind) {
                    (Some(p), _) => VhdxBuilder::new(0).differencing(p),
                    (None, Kind::Vhdx4kDynamic) => VhdxBuilder::new(size).logical_sector_size(4096),
                    (None, _) => VhdxBuilder::new(size),
                };
                let d = b.block_size(bs as u32).create(storage, Some(path));
                Disk::Vhdx(Box::new(d.expect("create VHDX")))
            }
            Kind::EvhdGcm | Kind::EvhdGcmSiv => {
                let cipher = if kind == Kind::EvhdGcm {
                    CipherId::Aes256Gcm
                } else {
                    CipherId::Aes256GcmSiv
                };
                let d = vhdkit::EvhdBuilder::new(size)
                    .block_size(bs)
                    .cipher(cipher)
                    .recipient(key().public().clone(), "fuzz")
                    .signer(key().clone())
                    .create(storage, None)
                    .expect("create EVHD");
                Disk::Evhd(Box::new(d))
            }
        }
    }

    fn opts(&self) -> OpenOptions {
        OpenOptions::new()
            .writable(true)
            .parent_path(self.parent.clone())
            .key(key())
    }

    fn reopen(&self) -> Disk {
        let storage = Box::new(self.mem.clone());
        let path = Some(self.path.clone());
        let (opts, chain) = (self.opts(), Chain::default());
        match self.kind {
            Kind::VhdDynamic | Kind::VhdDifferencing => Disk::Vhd(Box::new(
                VhdDisk::open(storage, path, &opts, &chain).expect("reopen VHD"),
            )),
            Kind::EvhdGcm | Kind::EvhdGcmSiv => Disk::Evhd(Box::new(
                EvhdDisk::open(storage, None, &opts).expect("reopen EVHD"),
            )),
            _ => Disk::Vhdx(Box::new(
                VhdxDisk::open(storage, path, &opts, &chain).expect("reopen VHDX"),
            )),
        }
    }

    /// Findings of the format's checker on the closed image.
    fn check(&self) -> vhdkit::CheckReport {
        let mut r = vhdkit::CheckReport::default();
        let done = match self.kind {
            Kind::VhdDynamic | Kind::VhdDifferencing => {
                vhdkit::unstable::vhd::check::check(self.mem.as_ref(), &mut r, false)
            }
            Kind::EvhdGcm | Kind::EvhdGcmSiv => {
                vhdkit::unstable::evhd::check::check(Box::new(self.mem.clone()), &[key()], &mut r)
            }
            _ => vhdkit::unstable::vhdx::check::check(self.mem.as_ref(), &mut r, false),
        };
        done.expect("the checker runs");
        r
    }
}

fn read(disk: &mut Disk, offset: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    disk.as_dyn()
        .read_at(&mut v, offset)
        .expect("reading a range of the disk");
    v
}

/// `(offset, len)` inside a disk of `size` bytes, len at least 1.
fn clamp(offset: u64, len: u64, size: u64) -> (u64, u64) {
    let offset = offset % size;
    (offset, 1 + len % (size - offset))
}

/// Prints the scenario as Rust source if a check fails while it lives.
struct Reproducer<'a>(&'a Scenario);

impl Drop for Reproducer<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("write_ops reproducer:\n{:?}", self.0);
        }
    }
}

/// Run `s` and check the disk against the model after every step.
pub fn run(s: &Scenario) {
    let _reproducer = Reproducer(s);
    let (size, block) = s.kind.shape();
    let (image, mut disk) = Image::create(s.kind);
    let mut model = match image.parent {
        Some(_) => parent_content(size),
        None => vec![0u8; size as usize],
    };
    for (i, step) in s.steps.iter().take(MAX_OPS).enumerate() {
        let (lo, hi) = match *step {
            Step::Write { offset, len, seed } => {
                let (o, n) = clamp(u64::from(offset), u64::from(len), size);
                let data: Vec<u8> = (0..n).map(|i| seed.wrapping_add((i % 251) as u8)).collect();
                disk.as_dyn().write_at(&data, o).expect("write");
                model[o as usize..(o + n) as usize].copy_from_slice(&data);
                (o, o + n)
            }
            Step::Zero { offset, len } => {
                let (o, n) = clamp(u64::from(offset), u64::from(len), size);
                disk.as_dyn()
                    .write_at(&vec![0; n as usize], o)
                    .expect("write zeros");
                model[o as usize..(o + n) as usize].fill(0);
                (o, o + n)
            }
            Step::Discard { offset, len } => {
                let (o, n) = clamp(u64::from(offset), u64::from(len), size);
                if let Disk::Vhdx(d) = &mut disk {
                    // Whole blocks inside the range; the last block counts
                    // whole when the range reaches the end of the disk.
                    let first = o.div_ceil(block) * block;
                    let last = if o + n == size {
                        size
                    } else {
                        (o + n) / block * block
                    };
                    let freed = d.discard(o, n).expect("discard");
                    assert_eq!(freed, last.saturating_sub(first), "bytes discarded");
                    if first < last {
                        model[first as usize..last as usize].fill(0);
                    }
                } else {
                    disk.as_dyn()
                        .write_at(&vec![0; n as usize], o)
                        .expect("write zeros");
                    model[o as usize..(o + n) as usize].fill(0);
                }
                (o, o + n)
            }
            Step::Flush => {
                disk.as_dyn().flush().expect("flush");
                (0, 0)
            }
            Step::Reopen => {
                disk.as_dyn().close().expect("close");
                drop(disk);
                let report = image.check();
                assert_eq!(
                    report.exit_code(),
                    0,
                    "step {i}: check after close: {:?}",
                    report.findings
                );
                disk = image.reopen();
                (0, size)
            }
        };
        // The touched range and a block either side read as the model.
        let a = lo.saturating_sub(block);
        let b = (hi + block).min(size);
        assert!(
            read(&mut disk, a, b - a) == model[a as usize..b as usize],
            "step {i} ({step:?}): content differs from the model in {a:#x}..{b:#x}"
        );
    }
    disk.as_dyn().close().expect("close");
    drop(disk);
    let mut disk = image.reopen();
    assert!(
        read(&mut disk, 0, size) == model,
        "content differs from the model after the last reopen"
    );
}

/// Decode a scenario from fuzzer bytes and run it.
pub fn run_bytes(data: &[u8]) {
    if let Ok(s) = Scenario::arbitrary_take_rest(Unstructured::new(data)) {
        run(&s);
    }
}

/// Where the parents live (for the fuzz README and for cleanup by hand).
pub fn parent_dir() -> &'static Path {
    &parents().dir
}
