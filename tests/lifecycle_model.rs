//! Model-based property test of the image lifecycle (issue 14, acceptance
//! 3): random sequences of write, discard, resize, compact, merge and
//! snapshot (a new differencing child) on VHD and VHDX chains of one to
//! three images, checked against a flat `Vec<u8>` of what the top of the
//! chain must read.
//!
//! Every step closes what it opened, so the next one opens the chain again
//! from its paths. After every step the whole top image is read and
//! compared with the model, its size too, and `check` runs on every image
//! of the chain: no damage, nothing left unchecked, and leaked space only
//! after a quick compact (documented) or a VHD shrink (its unlinked
//! blocks). Images live in `/dev/shm` when
//! it exists.
//!
//! Operations whose outcome depends on the content are predicted from the
//! model and both outcomes are checked: a shrink is refused exactly when
//! the range cut off holds a non-zero byte (these disks have no partition
//! table), a VHD refuses discard, a merge of an image without parent is
//! refused; a refused operation leaves every file of the chain unchanged.
//!
//! The top image is resized whether or not it is differencing (README,
//! `resize`): a differencing image reads its parent up to the smaller of
//! the two sizes and zeros past the parent's end, so the model keeps what
//! each parent reads (a parent's content no longer changes while it has a
//! child). Growing a child is refused (`Unsupported`) exactly when its
//! parent reads a non-zero byte in the range coming into use (from the old
//! size to the smaller of the new size and the parent's); a successful
//! resize leaves the parents' files unchanged. A merge is refused
//! (`Unsupported`) exactly when an image it merges, or the ancestor it
//! writes into, has another size than the top.
//!
//! A failure prints the case (`Debug`, which proptest shrinks) and the trace
//! of the operations as they were resolved against the sizes of the moment.

mod common;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

use common::{Rng, random_bytes};
use vhdkit::compact::Mode;
use vhdkit::merge::MergeOptions;
use vhdkit::report::Severity;
use vhdkit::resize::Target;
use vhdkit::{ErrorKind, OpenOptions, VhdBuilder, VhdxBuilder};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

/// Longest chain the model builds (a snapshot on a chain this long is
/// skipped).
const MAX_CHAIN: usize = 3;

/// Cases per format unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    Vhd,
    Vhdx,
}

impl Fmt {
    fn ext(self) -> &'static str {
        match self {
            Fmt::Vhd => "vhd",
            Fmt::Vhdx => "vhdx",
        }
    }
}

/// Where the bytes of a write come from.
#[derive(Debug, Clone, Copy)]
enum Fill {
    Random(u64),
    Zero,
    Byte(u8),
}

impl Fill {
    fn bytes(self, len: usize) -> Vec<u8> {
        match self {
            Fill::Random(seed) => random_bytes(len, seed),
            Fill::Zero => vec![0u8; len],
            Fill::Byte(b) => vec![b; len],
        }
    }
}

/// A position on the disk, resolved against its size at the time.
#[derive(Debug, Clone, Copy)]
enum Pos {
    /// This fraction (of 65536) of the disk.
    Frac(u16),
    /// Near the start of block `.0` (of the top image), `.1` bytes off.
    Block(u16, i16),
    /// This many bytes before the end.
    End(u32),
}

impl Pos {
    fn resolve(self, size: u64, bs: u64) -> u64 {
        match self {
            Pos::Frac(f) => size * u64::from(f) / 65536,
            Pos::Block(b, d) => {
                let blocks = size.div_ceil(bs);
                (u64::from(b) % (blocks + 1) * bs)
                    .saturating_add_signed(i64::from(d))
                    .min(size)
            }
            Pos::End(back) => size.saturating_sub(u64::from(back)),
        }
    }
}

/// The size a resize asks for.
#[derive(Debug, Clone, Copy)]
enum NewSize {
    /// This many bytes (not always a whole number of sectors).
    Bytes(u64),
    /// The current size plus this many sectors (negative: a shrink).
    Delta(i32),
    /// Just past the last non-zero byte of the model, plus this many
    /// bytes: the smallest shrinks that succeed and the largest that are
    /// refused.
    PastData(i32),
    /// The parent's size (the top's own without parent) plus this many
    /// sectors: a child shrunk below its parent grows back over the
    /// parent's data.
    Parent(i32),
}

#[derive(Clone)]
enum Op {
    Write {
        at: Pos,
        len: u32,
        fill: Fill,
    },
    /// `Disk::discard`, the call NBD trims use.
    Discard {
        at: Pos,
        len: u32,
    },
    Resize {
        to: NewSize,
        shrink: bool,
    },
    /// Compact the image `level % chain length` (0 is the base).
    Compact {
        level: u8,
        quick: bool,
    },
    /// Merge the top image into the image `1 + levels % (chain length - 1)`
    /// levels up (`--into` when that is not the parent).
    Merge {
        levels: u8,
    },
    /// Create a differencing child over the top with this block size.
    Snapshot {
        block_size: u32,
    },
}

/// One line per operation, also in proptest's `{:#?}`, so that a shrunk
/// case reads as a list of steps.
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Write { at, len, fill } => {
                write!(f, "Write {{ at: {at:?}, len: {len}, fill: {fill:?} }}")
            }
            Op::Discard { at, len } => write!(f, "Discard {{ at: {at:?}, len: {len} }}"),
            Op::Resize { to, shrink } => write!(f, "Resize {{ to: {to:?}, shrink: {shrink} }}"),
            Op::Compact { level, quick } => {
                write!(f, "Compact {{ level: {level}, quick: {quick} }}")
            }
            Op::Merge { levels } => write!(f, "Merge {{ levels: {levels} }}"),
            Op::Snapshot { block_size } => write!(f, "Snapshot {{ block_size: {block_size} }}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    fmt: Fmt,
    /// The logical sector size (VHDX: 512 or 4096; VHD: 512).
    sector: u64,
    size: u64,
    block_size: u32,
    /// Block sizes of the differencing children created at the start,
    /// each after three random writes to the image below it.
    children: Vec<u32>,
    /// Seed of those writes.
    seed: u64,
    ops: Vec<Op>,
}

fn block_sizes(fmt: Fmt) -> Vec<u32> {
    match fmt {
        Fmt::Vhd => vec![4096, 64 << 10, 512 << 10, 2 << 20],
        // VHDX blocks are 1 MiB at least.
        Fmt::Vhdx => vec![1 << 20, 2 << 20, 4 << 20],
    }
}

fn pos_strategy() -> impl Strategy<Value = Pos> {
    prop_oneof![
        3 => any::<u16>().prop_map(Pos::Frac),
        3 => (any::<u16>(), -1500i16..1500).prop_map(|(b, d)| Pos::Block(b, d)),
        1 => (0u32..(3 << 20)).prop_map(Pos::End),
    ]
}

fn fill_strategy() -> impl Strategy<Value = Fill> {
    prop_oneof![
        4 => any::<u64>().prop_map(Fill::Random),
        2 => Just(Fill::Zero),
        1 => any::<u8>().prop_map(Fill::Byte),
    ]
}

fn new_size_strategy() -> impl Strategy<Value = NewSize> {
    prop_oneof![
        2 => prop_oneof![
            (2 * MIB / SECTOR..48 * MIB / SECTOR).prop_map(|s| s * SECTOR),
            MIB..48 * MIB,
        ]
        .prop_map(NewSize::Bytes),
        2 => (-8192i32..8192).prop_map(NewSize::Delta),
        1 => (0i32..(2 << 20)).prop_map(NewSize::PastData),
        1 => (-1024i32..1024).prop_map(NewSize::PastData),
        2 => (-64i32..64).prop_map(NewSize::Parent),
    ]
}

fn op_strategy(fmt: Fmt) -> impl Strategy<Value = Op> {
    let write = (pos_strategy(), 0u32..(3 << 20), fill_strategy())
        .prop_map(|(at, len, fill)| Op::Write { at, len, fill });
    // Zeros from a position to the end (the length is cut at the end): a
    // child hides its parent's tail, can then shrink below the parent's
    // data, and growing it back must be refused.
    let zero_tail = pos_strategy().prop_map(|at| Op::Write {
        at,
        len: u32::MAX,
        fill: Fill::Zero,
    });
    let discard = (pos_strategy(), 0u32..(12 << 20)).prop_map(|(at, len)| Op::Discard { at, len });
    let resize = (new_size_strategy(), prop::bool::weighted(0.8))
        .prop_map(|(to, shrink)| Op::Resize { to, shrink });
    let compact =
        (any::<u8>(), any::<bool>()).prop_map(|(level, quick)| Op::Compact { level, quick });
    let merge = any::<u8>().prop_map(|levels| Op::Merge { levels });
    let snapshot =
        prop::sample::select(block_sizes(fmt)).prop_map(|block_size| Op::Snapshot { block_size });
    prop_oneof![
        8 => write,
        1 => zero_tail,
        3 => discard,
        3 => resize,
        3 => compact,
        2 => merge,
        2 => snapshot,
    ]
}

fn case_strategy(fmt: Fmt) -> impl Strategy<Value = Case> {
    (
        // 8 to 32 MiB, not always a whole number of blocks.
        (8 * MIB / SECTOR..=32 * MIB / SECTOR).prop_map(|s| s * SECTOR),
        prop::sample::select(block_sizes(fmt)),
        // Half the cases start with the base alone.
        prop_oneof![
            Just(Vec::new()),
            prop::collection::vec(prop::sample::select(block_sizes(fmt)), 1..MAX_CHAIN),
        ],
        any::<u64>(),
        prop::collection::vec(op_strategy(fmt), 1..24),
        prop::sample::select(match fmt {
            Fmt::Vhd => vec![SECTOR],
            Fmt::Vhdx => vec![SECTOR, 4096],
        }),
    )
        .prop_map(
            move |(size, block_size, children, seed, ops, sector)| Case {
                fmt,
                sector,
                size: size.div_ceil(sector) * sector,
                block_size,
                children,
                seed,
                ops,
            },
        )
}

/// One image of the chain.
#[derive(Debug)]
struct Image {
    path: PathBuf,
    block_size: u64,
    /// Whether `check` may report leaked space: only after an operation
    /// documented to leave it, until a full compact of the image.
    leak_ok: bool,
    /// What the image reads, kept once it is a parent (empty for the top:
    /// its content is [`World::model`]).
    reads: Vec<u8>,
}

/// The chain on disk and the model of what its top reads.
struct World {
    fmt: Fmt,
    /// The logical sector size: sizes are rounded up to it.
    sector: u64,
    dir: tempfile::TempDir,
    /// Base first.
    chain: Vec<Image>,
    model: Vec<u8>,
    /// Numbers the image files, so that no name is reused.
    next_name: usize,
    /// The operations as they were resolved, for the failure message.
    trace: Vec<String>,
}

type Step = Result<(), String>;

fn err(what: &str) -> impl Fn(vhdkit::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl World {
    fn new(case: &Case) -> Result<World, String> {
        // Memory-backed when the system has it: every step syncs its files,
        // which on a loaded disk makes the run slow, and the model tests
        // the library's logic, not the file system.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .map_err(|e| e.to_string())?;
        let mut w = World {
            fmt: case.fmt,
            sector: case.sector,
            dir,
            chain: Vec::new(),
            model: vec![0u8; case.size as usize],
            next_name: 0,
            trace: Vec::new(),
        };
        w.trace.push(format!(
            "create {:?} base of {:#x} bytes, blocks of {:#x}, sectors of {}",
            case.fmt, case.size, case.block_size, case.sector
        ));
        let path = w.new_path();
        let mut disk = match case.fmt {
            Fmt::Vhd => vhdkit::create_vhd(
                &path,
                VhdBuilder::new(case.size).block_size(case.block_size),
            ),
            Fmt::Vhdx => vhdkit::create_vhdx(
                &path,
                VhdxBuilder::new(case.size)
                    .block_size(case.block_size)
                    .logical_sector_size(case.sector as u32),
            ),
        }
        .map_err(err("create"))?;
        disk.close().map_err(err("close after create"))?;
        w.chain.push(Image {
            path,
            block_size: u64::from(case.block_size),
            leak_ok: false,
            reads: Vec::new(),
        });
        Ok(w)
    }

    fn new_path(&mut self) -> PathBuf {
        self.next_name += 1;
        self.dir
            .path()
            .join(format!("img{}.{}", self.next_name, self.fmt.ext()))
    }

    fn top(&self) -> &Image {
        self.chain.last().expect("the chain is never empty")
    }

    /// What the top's parent reads, if the top has one.
    fn parent(&self) -> Option<&[u8]> {
        let n = self.chain.len();
        (n > 1).then(|| self.chain[n - 2].reads.as_slice())
    }

    fn size(&self) -> u64 {
        self.model.len() as u64
    }

    fn open_top(&self) -> Result<vhdkit::Disk, String> {
        vhdkit::open(&self.top().path, &OpenOptions::new().writable(true))
            .map_err(err("open writable"))
    }

    /// The bytes of every file of the chain, to show that a refused
    /// operation changed none.
    fn files(&self) -> Vec<Vec<u8>> {
        self.chain
            .iter()
            .map(|i| std::fs::read(&i.path).unwrap_or_default())
            .collect()
    }

    fn unchanged(&self, before: &[Vec<u8>], what: &str) -> Step {
        if self.files() != before {
            return Err(format!(
                "{what} was refused but changed a file of the chain"
            ));
        }
        Ok(())
    }

    /// Run one operation on the chain and the model, then verify.
    fn step(&mut self, op: &Op) -> Step {
        match *op {
            Op::Write { at, len, fill } => {
                let off = at.resolve(self.size(), self.top().block_size);
                let len = u64::from(len).min(self.size() - off) as usize;
                self.trace
                    .push(format!("write {off:#x}+{len:#x} of {fill:?}"));
                let data = fill.bytes(len);
                let mut disk = self.open_top()?;
                disk.write_at(&data, off).map_err(err("write"))?;
                disk.close().map_err(err("close after write"))?;
                self.model[off as usize..off as usize + len].copy_from_slice(&data);
            }
            Op::Discard { at, len } => {
                let size = self.size();
                let bs = self.top().block_size;
                let off = at.resolve(size, bs);
                let len = u64::from(len).min(size - off);
                self.trace.push(format!("discard {off:#x}+{len:#x}"));
                let before = self.files();
                let mut disk = self.open_top()?;
                let r = disk.discard(off, len);
                disk.close().map_err(err("close after discard"))?;
                match self.fmt {
                    Fmt::Vhd => match r {
                        Err(e) if e.kind() == ErrorKind::Unsupported => {
                            self.unchanged(&before, "a VHD discard")?
                        }
                        other => return Err(format!("VHD discard: {other:?}, not refused")),
                    },
                    Fmt::Vhdx => {
                        let got = r.map_err(err("discard"))?;
                        // Whole blocks inside the range; the last block is
                        // whole when the range reaches the end of the disk.
                        let end = off + len;
                        let first = off.div_ceil(bs) * bs;
                        let last = if end == size { size } else { end / bs * bs };
                        let want = last.saturating_sub(first);
                        if len > 0 && got != want {
                            return Err(format!("discard returned {got:#x}, the model {want:#x}"));
                        }
                        if first < last {
                            self.model[first as usize..last as usize].fill(0);
                        }
                    }
                }
            }
            Op::Resize { to, shrink } => self.resize(to, shrink)?,
            Op::Compact { level, quick } => {
                let i = usize::from(level) % self.chain.len();
                let mode = if quick { Mode::Quick } else { Mode::Full };
                self.trace.push(format!("compact level {i} {mode:?}"));
                vhdkit::compact::compact(&self.chain[i].path, &OpenOptions::new(), mode)
                    .map_err(err("compact"))?;
                // A quick compact punches holes where the blocks it unlinks
                // were and keeps the file's length (README, `compact`):
                // that space is referenced by nothing until a full compact.
                self.chain[i].leak_ok = mode == Mode::Quick;
            }
            Op::Merge { levels } => self.merge(levels)?,
            Op::Snapshot { block_size } => {
                if self.chain.len() >= MAX_CHAIN {
                    self.trace.push("snapshot skipped (chain full)".into());
                    return Ok(());
                }
                let parent = self.top().path.clone();
                let path = self.new_path();
                self.trace.push(format!(
                    "snapshot {} over {} with blocks of {block_size:#x}",
                    name(&path),
                    name(&parent)
                ));
                let size = self.size();
                let mut disk = match self.fmt {
                    Fmt::Vhd => vhdkit::create_vhd(
                        &path,
                        VhdBuilder::new(size)
                            .differencing(&parent)
                            .block_size(block_size),
                    ),
                    Fmt::Vhdx => vhdkit::create_vhdx(
                        &path,
                        VhdxBuilder::new(size)
                            .differencing(&parent)
                            .block_size(block_size),
                    ),
                }
                .map_err(err("create child"))?;
                disk.close().map_err(err("close after create"))?;
                self.chain.last_mut().expect("chain").reads = self.model.clone();
                self.chain.push(Image {
                    path,
                    block_size: u64::from(block_size),
                    leak_ok: false,
                    reads: Vec::new(),
                });
            }
        }
        self.verify()
    }

    fn resize(&mut self, to: NewSize, shrink: bool) -> Step {
        let old = self.size();
        let asked = match to {
            NewSize::Bytes(b) => b,
            NewSize::Delta(d) => old
                .saturating_add_signed(i64::from(d) * SECTOR as i64)
                .max(MIB),
            NewSize::PastData(d) => {
                let end = self
                    .model
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |i| i + 1);
                (end as u64).saturating_add_signed(i64::from(d)).max(MIB)
            }
            NewSize::Parent(d) => self
                .parent()
                .map_or(old, |p| p.len() as u64)
                .saturating_add_signed(i64::from(d) * SECTOR as i64)
                .max(MIB),
        };
        // The size is rounded up to whole logical sectors.
        let new = asked.div_ceil(self.sector) * self.sector;
        // A grown child must read zeros where it comes into use: refused
        // where its parent shows data there (it was shrunk below it).
        let parent_shows = |p: &[u8]| {
            let end = new.min(p.len() as u64);
            end > old && p[old as usize..end as usize].iter().any(|&b| b != 0)
        };
        let refusal = if self.parent().is_some_and(parent_shows) {
            Some(("a grow over the parent's data", ErrorKind::Unsupported))
        } else if new < old && !shrink {
            Some(("a shrink without shrink", ErrorKind::InvalidArgument))
        } else if new < old && self.model[new as usize..].iter().any(|&b| b != 0) {
            Some(("a shrink over non-zero data", ErrorKind::InvalidArgument))
        } else {
            None
        };
        self.trace.push(format!(
            "resize {old:#x} -> {asked:#x} (shrink {shrink}){}: {}",
            self.parent().map_or(String::new(), |p| format!(
                " over a parent of {:#x}",
                p.len()
            )),
            refusal.map_or("succeeds".to_string(), |(r, _)| format!("refused as {r}"))
        ));
        let before = self.files();
        let path = self.top().path.clone();
        let r = vhdkit::resize::resize(&path, Target::Size(asked), shrink, &OpenOptions::new());
        match (r, refusal) {
            (Ok(done), None) => {
                if (done.old_size, done.new_size) != (old, new) {
                    return Err(format!("resize reports {done:?}"));
                }
                let n = self.chain.len();
                if self.files()[..n - 1] != before[..n - 1] {
                    return Err("the resize of the top changed a parent's file".into());
                }
                if new < old && self.fmt == Fmt::Vhd {
                    // src/vhd/resize.rs: the blocks of the entries a shrink
                    // unlinks become leaked space.
                    self.chain.last_mut().expect("chain").leak_ok = true;
                }
                self.model.resize(new as usize, 0);
            }
            (Err(e), Some((_, kind))) if e.kind() == kind => {
                self.unchanged(&before, "the resize")?
            }
            (r, _) => return Err(format!("resize: {r:?}, the model expected {refusal:?}")),
        }
        Ok(())
    }

    fn merge(&mut self, levels: u8) -> Step {
        let n = self.chain.len();
        let top = self.top().path.clone();
        if n == 1 {
            self.trace.push("merge of the base: refused".into());
            let before = self.files();
            match vhdkit::merge::merge(&top, &MergeOptions::new(), &mut |_| {}) {
                Ok(r) => return Err(format!("merge of an image without parent: {r:?}")),
                Err(_) => self.unchanged(&before, "the merge of the base")?,
            }
            return Ok(());
        }
        let up = 1 + usize::from(levels) % (n - 1);
        let ancestor = n - 1 - up;
        let into = self.chain[ancestor].path.clone();
        // Every image merged and the ancestor need the top's size.
        let other_size = self.chain[ancestor..n - 1]
            .iter()
            .find(|i| i.reads.len() as u64 != self.size());
        self.trace.push(format!(
            "merge {} into {}{}: {}",
            name(&top),
            name(&into),
            if up > 1 { " (--into)" } else { "" },
            other_size.map_or("succeeds".to_string(), |i| format!(
                "refused, {} has {:#x} bytes",
                name(&i.path),
                i.reads.len()
            ))
        ));
        let opts = MergeOptions::new().into_ancestor((up > 1).then(|| into.clone()));
        if other_size.is_some() {
            let before = self.files();
            return match vhdkit::merge::merge(&top, &opts, &mut |_| {}) {
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    self.unchanged(&before, "the merge of images of other sizes")
                }
                r => Err(format!(
                    "merge: {r:?}, the model expected a refusal for the sizes"
                )),
            };
        }
        let report = vhdkit::merge::merge(&top, &opts, &mut |_| {}).map_err(err("merge"))?;
        let merged: Vec<PathBuf> = self.chain[ancestor + 1..]
            .iter()
            .rev()
            .map(|i| i.path.clone())
            .collect();
        if report.removed != merged {
            return Err(format!(
                "merge removed {:?}, not {merged:?}",
                report.removed
            ));
        }
        if let Some(p) = merged.iter().find(|p| p.exists()) {
            return Err(format!("merged image {} still exists", p.display()));
        }
        self.chain.truncate(ancestor + 1);
        self.chain[ancestor].reads = Vec::new();
        Ok(())
    }

    /// Whether `img`'s check may report leaked space in `structure`: its
    /// own, or a parent's (`in parent PATH: ...`, repeated for each level).
    fn leak_ok(&self, img: &Image, structure: &str) -> bool {
        let ok = |i: &Image| i.leak_ok;
        // A parent's parent is prefixed twice: the innermost names the image.
        let mut rest = structure;
        let mut image = img;
        while let Some(r) = rest.strip_prefix("in parent ") {
            let Some(i) = self
                .chain
                .iter()
                .find(|i| r.starts_with(&format!("{}: ", i.path.display())))
            else {
                return false;
            };
            rest = &r[i.path.display().to_string().len() + 2..];
            image = i;
        }
        ok(image)
    }

    /// Compare the whole top with the model and check every image.
    fn verify(&self) -> Step {
        let disk = vhdkit::open(&self.top().path, &OpenOptions::new()).map_err(err("open"))?;
        if disk.virtual_size() != self.size() {
            return Err(format!(
                "virtual size {:#x}, the model {:#x}",
                disk.virtual_size(),
                self.size()
            ));
        }
        let mut all = vec![0u8; self.model.len()];
        disk.read_at(&mut all, 0).map_err(err("read"))?;
        drop(disk);
        if all != self.model {
            let first = all.iter().zip(&self.model).position(|(a, b)| a != b);
            let first = first.unwrap_or(0) as u64;
            let last = all.iter().zip(&self.model).rposition(|(a, b)| a != b);
            return Err(format!(
                "content differs from the model in {first:#x}..={:#x}",
                last.unwrap_or(0)
            ));
        }
        for img in &self.chain {
            let r = vhdkit::check(&img.path, &OpenOptions::new(), false)
                .map_err(err(&format!("check {}", name(&img.path))))?;
            let bad: Vec<_> = r
                .findings
                .iter()
                .filter(|f| match f.severity {
                    Severity::Info => false,
                    Severity::Leak => !self.leak_ok(img, &f.structure),
                    Severity::Error => true,
                })
                .collect();
            if !bad.is_empty() || !r.not_checked.is_empty() {
                return Err(format!(
                    "check {}: findings {bad:?}, not checked {:?}",
                    name(&img.path),
                    r.not_checked
                ));
            }
        }
        Ok(())
    }
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The steps that build the case's starting chain: for each child, three
/// random writes to the image below it, then the child.
fn setup(case: &Case) -> Vec<Op> {
    let mut rng = Rng::new(case.seed);
    let mut ops = Vec::new();
    for &block_size in &case.children {
        for _ in 0..3 {
            ops.push(Op::Write {
                at: Pos::Frac(rng.below(65536) as u16),
                len: rng.below(2 << 20) as u32,
                fill: Fill::Random(rng.next_u64()),
            });
        }
        ops.push(Op::Snapshot { block_size });
    }
    ops
}

fn run(case: &Case) -> Result<(), TestCaseError> {
    let mut trace = Vec::new();
    let r = World::new(case).and_then(|mut w| {
        let r = w.verify().and_then(|()| {
            setup(case)
                .iter()
                .chain(&case.ops)
                .try_for_each(|op| w.step(op))
        });
        trace = std::mem::take(&mut w.trace);
        r
    });
    r.map_err(|e| TestCaseError::fail(format!("{e}\nafter these steps:\n  {}", trace.join("\n  "))))
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        // Each step reopens and checks the chain: bound the shrinking.
        max_shrink_time: 120_000,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn vhd_chain_matches_the_model(case in case_strategy(Fmt::Vhd)) {
        run(&case)?;
    }

    #[test]
    fn vhdx_chain_matches_the_model(case in case_strategy(Fmt::Vhdx)) {
        run(&case)?;
    }
}
