//! Crash safety of `compact`, proven by brute force.
//!
//! Compaction runs on a [`FaultStorage`] that loses power at storage
//! operation N, for every N it reaches, in both fault models (operations
//! persist in order with the one at N torn; or everything up to the last
//! flush plus any subset of the writes since), in both modes (full and
//! quick), on dynamic and differencing VHD and VHDX. After each crash:
//!
//! - the image opens read-only without warnings;
//! - the format's `check` finds no errors (leaked space is allowed);
//! - it reads exactly as before: compaction never changes content;
//! - compacting it again completes, reads the same, checks clean and ends
//!   no larger than the compaction that was not interrupted.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use vhdkit::compact::Mode;
use vhdkit::report::{CheckReport, Severity};
use vhdkit::unstable::chain::Chain;
use vhdkit::{MemStorage, Storage};
use vhdkit::{OpenOptions, VhdBuilder, VhdxBuilder, VirtualDisk};

const MIB: u64 = 1 << 20;
const BS: u64 = MIB;
const BLOCKS: u64 = 16;
const SIZE: u64 = BLOCKS * BS;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fmt {
    Vhd,
    Vhdx,
}

struct Setup {
    name: String,
    fmt: Fmt,
    /// The child image (or the only one), closed.
    base: Vec<u8>,
    /// What it reads as.
    content: Vec<u8>,
    parent: Option<PathBuf>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn no_crash() -> FaultStorage {
    FaultStorage::new(Vec::new(), u64::MAX, CrashMode::Prefix { tear: false }, 0)
}

/// Create an image in memory (`parent`: differencing) and apply `writes`.
fn build(fmt: Fmt, path: &Path, parent: Option<&Path>, writes: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let probe = no_crash();
    let storage: Box<dyn Storage> = Box::new(probe.clone());
    let mut disk: Box<dyn VirtualDisk> = match fmt {
        Fmt::Vhd => {
            let mut b = VhdBuilder::new(SIZE).block_size(BS as u32);
            if let Some(p) = parent {
                b = b.differencing(p);
            }
            Box::new(b.create(storage, Some(path)).unwrap())
        }
        Fmt::Vhdx => {
            let mut b = VhdxBuilder::new(SIZE).block_size(BS as u32);
            if let Some(p) = parent {
                b = b.differencing(p);
            }
            Box::new(b.create(storage, Some(path)).unwrap())
        }
    };
    for (off, data) in writes {
        disk.write_at(data, *off).unwrap();
    }
    if fmt == Fmt::Vhdx && parent.is_none() {
        // Two blocks discarded: their space is free too.
        disk.discarder().unwrap().discard(14 * BS, 2 * BS).unwrap();
    }
    disk.close().unwrap();
    drop(disk);
    probe.durable()
}

fn ext(fmt: Fmt) -> &'static str {
    match fmt {
        Fmt::Vhd => "vhd",
        Fmt::Vhdx => "vhdx",
    }
}

/// Every block written, then blocks 1, 3, ..., 11 zeroed, blocks 13 to
/// 15 zero but for 4 KiB (VHDX: blocks 14 and 15 discarded instead).
fn dynamic_setup(fmt: Fmt) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("d.{}", ext(fmt)));
    let mut content = random_bytes(SIZE as usize, 5);
    let mut writes = vec![(0, content.clone())];
    for b in [1u64, 3, 5, 7, 9, 11] {
        writes.push((b * BS, vec![0u8; BS as usize]));
        content[(b * BS) as usize..((b + 1) * BS) as usize].fill(0);
    }
    writes.push((13 * BS + 4096, vec![0u8; (3 * BS - 4096) as usize]));
    content[(13 * BS + 4096) as usize..].fill(0);
    if fmt == Fmt::Vhdx {
        content[(14 * BS) as usize..].fill(0);
    }
    let base = build(fmt, &path, None, &writes);
    Setup {
        name: format!("dynamic {fmt:?}"),
        fmt,
        base,
        content,
        parent: None,
        path,
        _dir: dir,
    }
}

/// Parent: data in the even blocks. Child: block 0 rewritten with the
/// parent's data, zeros in blocks 1, 3 (over parent zeros) and 2 (over
/// parent data), data in blocks 4 (whole), 5 and 7 (4 KiB each).
fn differencing_setup(fmt: Fmt) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join(format!("p.{}", ext(fmt)));
    let path = dir.path().join(format!("c.{}", ext(fmt)));
    let mut content = vec![0u8; SIZE as usize];
    for b in (0..BLOCKS).step_by(2) {
        let r = (b * BS) as usize..((b + 1) * BS) as usize;
        content[r].copy_from_slice(&random_bytes(BS as usize, 50 + b));
    }
    let parent_bytes = build(fmt, &parent, None, &[(0, content.clone())]);
    // The parent as a file (the discard `build` does on a dynamic VHDX
    // hits blocks 14 and 15: they read as zeros in it).
    if fmt == Fmt::Vhdx {
        content[(14 * BS) as usize..].fill(0);
    }
    write_raw(&parent, &parent_bytes);
    let writes = vec![
        (0, content[..BS as usize].to_vec()),
        (BS, vec![0u8; BS as usize]),
        (2 * BS, vec![0u8; BS as usize]),
        (3 * BS + 8192, vec![0u8; 4096]),
        (4 * BS, random_bytes(BS as usize, 9)),
        (5 * BS + 4096, random_bytes(4096, 10)),
        (7 * BS + 65536, random_bytes(4096, 11)),
    ];
    for (off, data) in &writes {
        content[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    let base = build(fmt, &path, Some(&parent), &writes);
    Setup {
        name: format!("differencing {fmt:?}"),
        fmt,
        base,
        content,
        parent: Some(parent),
        path,
        _dir: dir,
    }
}

impl Setup {
    fn opts(&self) -> OpenOptions {
        OpenOptions::new().parent_path(self.parent.clone())
    }

    fn compact(&self, storage: Box<dyn Storage>, mode: Mode) -> vhdkit::Result<()> {
        vhdkit::compact::compact_storage(storage, Some(&self.path), &self.opts(), mode).map(|_| ())
    }

    /// Opens without warnings, checks clean, reads as the content.
    fn verify(&self, image: &[u8]) -> Result<(), String> {
        let storage = MemStorage::read_only(image.to_vec());
        let mut report = CheckReport::default();
        match self.fmt {
            Fmt::Vhd => vhdkit::unstable::vhd::check::check(&storage, &mut report, false),
            Fmt::Vhdx => vhdkit::unstable::vhdx::check::check(&storage, &mut report, false),
        }
        .map_err(|e| format!("check: {e}"))?;
        if report.worst() == Some(Severity::Error) {
            return Err(format!("check: {:?}", report.findings));
        }
        let disk = vhdkit::unstable::open_storage(
            Box::new(storage),
            Some(&self.path),
            &self.opts(),
            &Chain::default(),
        )
        .map_err(|e| format!("open: {e}"))?;
        let warnings = disk.info().warnings;
        if !warnings.is_empty() {
            return Err(format!("warnings: {warnings:?}"));
        }
        if read_disk(disk.as_ref()) != self.content {
            return Err("content changed".into());
        }
        Ok(())
    }
}

/// Crash at `crash_at` (`seed` draws what survives), then verify, compact again and verify; returns the
/// operations the run made and the final file size.
fn crash_and_rerun(
    s: &Setup,
    mode: Mode,
    crash_at: u64,
    fault: CrashMode,
    seed: u64,
) -> Result<(u64, u64), String> {
    let ctx = |m: String| {
        format!(
            "{} {mode:?} crash at {crash_at} ({fault:?}, seed {seed}): {m}",
            s.name
        )
    };
    let fs = FaultStorage::new(s.base.clone(), crash_at, fault, seed);
    let r = s.compact(Box::new(fs.clone()), mode);
    if !fs.crashed() {
        r.map_err(|e| ctx(format!("compact failed: {e}")))?;
    }
    let image = fs.durable();
    s.verify(&image)
        .map_err(|m| ctx(format!("after the crash: {m}")))?;
    let again = Arc::new(MemStorage::from_vec(image));
    s.compact(Box::new(again.clone()), mode)
        .map_err(|e| ctx(format!("compacting again: {e}")))?;
    let done = again.to_vec();
    s.verify(&done)
        .map_err(|m| ctx(format!("after compacting again: {m}")))?;
    Ok((fs.count(), done.len() as u64))
}

fn crash_everywhere(s: &Setup, mode: Mode) -> usize {
    let (total, size) = crash_and_rerun(s, mode, u64::MAX, CrashMode::Prefix { tear: false }, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    if mode == Mode::Full {
        assert!(
            size < s.base.len() as u64,
            "{}: {} -> {size}",
            s.name,
            s.base.len()
        );
    }
    let mut points = 0;
    let mut failures = Vec::new();
    // Which writes since the last flush survive is drawn at random:
    // several draws per crash point in the subset model.
    for crash_at in 0..total {
        let faults = [
            (CrashMode::Prefix { tear: true }, 1),
            (CrashMode::Subset, 2),
            (CrashMode::Subset, 3),
            (CrashMode::Subset, 4),
        ];
        for (fault, seed) in faults {
            points += 1;
            match crash_and_rerun(s, mode, crash_at, fault, crash_at * 8 + seed) {
                Ok((_, n)) if n > size => failures.push(format!(
                    "{} {mode:?} crash at {crash_at} ({fault:?}): ends at {n} bytes, not {size}",
                    s.name
                )),
                Ok(_) => {}
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {points} crash states failed:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    points
}

fn both_modes(s: &Setup, at_least: usize) {
    let full = crash_everywhere(s, Mode::Full);
    let quick = crash_everywhere(s, Mode::Quick);
    println!("{}: {full} crash states compacting, {quick} quick", s.name);
    assert!(
        full >= at_least && quick >= 6,
        "{}: only {full} and {quick} crash states",
        s.name
    );
}

#[test]
fn dynamic_vhd_compaction_survives_a_crash_at_every_storage_operation() {
    both_modes(&dynamic_setup(Fmt::Vhd), 40);
}

#[test]
fn differencing_vhd_compaction_survives_a_crash_at_every_storage_operation() {
    both_modes(&differencing_setup(Fmt::Vhd), 20);
}

#[test]
fn dynamic_vhdx_compaction_survives_a_crash_at_every_storage_operation() {
    both_modes(&dynamic_setup(Fmt::Vhdx), 40);
}

#[test]
fn differencing_vhdx_compaction_survives_a_crash_at_every_storage_operation() {
    both_modes(&differencing_setup(Fmt::Vhdx), 20);
}

/// A dynamic VHD of `blocks` blocks of `bs` bytes, blocks `data..`
/// written (and blocks 0 to `data` written then zeroed), then grown to
/// `grown` bytes the way vhdkit did before it moved blocks out of the
/// table's way: the BAT written anew past the blocks, so a compaction
/// must move it back down to cut the file.
fn moved_bat_setup(bs: u64, blocks: u64, data: u64, grown: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.vhd");
    let old = blocks * bs;
    let probe = no_crash();
    let mut disk = VhdBuilder::new(old)
        .block_size(bs as u32)
        .create(Box::new(probe.clone()), Some(&path))
        .unwrap();
    let mut content = random_bytes(old as usize, 21);
    disk.write_at(&content, 0).unwrap();
    content[..(data * bs) as usize].fill(0);
    disk.write_at(&content[..(data * bs) as usize], 0).unwrap();
    disk.close().unwrap();
    drop(disk);
    // A grow of an older vhdkit: the table, with room for the new
    // entries, written anew past the blocks (its old space left behind).
    let mut img = probe.durable();
    let h = 512;
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap());
    let table = be64(&img[h + 16..h + 24]) as usize;
    let old_n = u32::from_be_bytes(img[h + 28..h + 32].try_into().unwrap()) as usize;
    let new_n = grown.div_ceil(bs) as usize;
    let mut raw = img[table..table + old_n * 4].to_vec();
    raw.resize(new_n * 4, 0xff);
    raw.resize((new_n * 4).div_ceil(512) * 512, 0xff);
    let footer = img.split_off(img.len() - 512);
    let at = img.len() as u64;
    img.extend_from_slice(&raw);
    img.extend_from_slice(&footer);
    img[h + 16..h + 24].copy_from_slice(&at.to_be_bytes());
    img[h + 28..h + 32].copy_from_slice(&(new_n as u32).to_be_bytes());
    img[h + 36..h + 40].fill(0);
    let sum = img[h..h + 1024].iter().fold(0u32, |a, &b| a + u32::from(b));
    img[h + 36..h + 40].copy_from_slice(&(!sum).to_be_bytes());
    let probe = FaultStorage::new(img, u64::MAX, CrashMode::Prefix { tear: false }, 0);
    let storage: Arc<dyn Storage> = Arc::new(probe.clone());
    vhdkit::resize::resize_storage(
        storage,
        None,
        vhdkit::report::Format::Vhd,
        vhdkit::resize::Target::Size(grown),
        false,
        &OpenOptions::new(),
    )
    .unwrap();
    content.resize(grown as usize, 0);
    Setup {
        name: format!("dynamic VHD of {bs}-byte blocks, BAT moved by a grow"),
        fmt: Fmt::Vhd,
        base: probe.durable(),
        content,
        parent: None,
        path,
        _dir: dir,
    }
}

/// Compacting `s` leaves an image that checks fully clean (no leaked
/// space either) and is no larger than a fresh image (footer copy,
/// header, a table of `table` bytes, `kept` blocks of `span` bytes,
/// footer) plus one block; then the crash test in both modes.
fn moved_bat_compacts_and_survives(s: &Setup, table: u64, kept: u64, span: u64) {
    let at = u64::from_be_bytes(s.base[512 + 16..512 + 24].try_into().unwrap());
    assert!(at > 0x600 + table, "{}: table at {at:#x}", s.name);
    let image = Arc::new(MemStorage::from_vec(s.base.clone()));
    s.compact(Box::new(image.clone()), Mode::Full).unwrap();
    let done = image.to_vec();
    let mut report = CheckReport::default();
    vhdkit::unstable::vhd::check::check(&MemStorage::read_only(done.clone()), &mut report, false)
        .unwrap();
    assert!(
        report.findings.is_empty(),
        "{}: {:?}",
        s.name,
        report.findings
    );
    s.verify(&done).unwrap();
    let fresh = 512 + 1024 + table + kept * span + 512;
    assert!(
        done.len() as u64 <= fresh + span,
        "{}: {} bytes, a fresh image is {fresh}",
        s.name,
        done.len()
    );
    both_modes(s, 20);
}

#[test]
fn vhd_with_a_moved_bat_compacts_to_a_fresh_layout_and_survives_a_crash_everywhere() {
    // 16 blocks of 64 KiB, 3 with data, grown to 256 entries (2 sectors):
    // the blocks move down, then the table into the space they left.
    let s = moved_bat_setup(64 << 10, 16, 13, 16 * MIB);
    moved_bat_compacts_and_survives(&s, 1024, 3, (64 << 10) + 512);
}

#[test]
fn vhd_bat_that_fits_only_in_its_own_space_moves_down_through_the_end() {
    // 1152 blocks of 4 KiB (a 9-sector table), the last with data, grown
    // to 1280 entries (10 sectors): the block moves into the old table's
    // 9 sectors, and only the grown table's own space makes the 10 below
    // it, so it moves to the end of the file first and then down.
    let s = moved_bat_setup(4096, 1152, 1151, 1280 * 4096);
    moved_bat_compacts_and_survives(&s, 5120, 1, 4096 + 512);
}
