//! Differencing chains built with vhdkit for the merge tests, with a flat
//! model of what each level reads.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use vhdkit::{VhdBuilder, VhdxBuilder};

use crate::common::Rng;

pub const MIB: u64 = 1 << 20;
/// Virtual size of every chain: eight blocks of 1 MiB.
pub const SIZE: u64 = 8 * MIB;
pub const BLOCK: u32 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vhd,
    Vhdx,
}

impl Kind {
    pub fn ext(self, top: bool) -> &'static str {
        match (self, top) {
            (Kind::Vhd, _) => "vhd",
            (Kind::Vhdx, false) => "vhdx",
            (Kind::Vhdx, true) => "avhdx",
        }
    }
    /// qemu-img's name of the format.
    pub fn qemu(self) -> &'static str {
        match self {
            Kind::Vhd => "vpc",
            Kind::Vhdx => "vhdx",
        }
    }
}

/// A chain on disk: `paths[0]` is the child, the last the base. `views[i]`
/// is what `paths[i]` reads (with its parents).
pub struct Chain {
    pub kind: Kind,
    pub paths: Vec<PathBuf>,
    pub views: Vec<Vec<u8>>,
}

fn create(kind: Kind, path: &Path, parent: Option<&Path>) -> vhdkit::Disk {
    match (kind, parent) {
        (Kind::Vhd, None) => {
            vhdkit::create_vhd(path, VhdBuilder::new(SIZE).dynamic().block_size(BLOCK))
        }
        (Kind::Vhd, Some(p)) => {
            vhdkit::create_vhd(path, VhdBuilder::new(0).differencing(p).block_size(BLOCK))
        }
        (Kind::Vhdx, None) => vhdkit::create_vhdx(path, VhdxBuilder::new(SIZE).block_size(BLOCK)),
        (Kind::Vhdx, Some(p)) => {
            vhdkit::create_vhdx(path, VhdxBuilder::new(0).differencing(p).block_size(BLOCK))
        }
    }
    .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Write random data (and, for differencing VHDX levels, a discard) into
/// `disk`, applying it to `model`.
fn fill(
    disk: &mut vhdkit::Disk,
    model: &mut [u8],
    r: &mut Rng,
    level: usize,
    base: bool,
    writes: usize,
) {
    let sectors = SIZE / 512;
    for i in 0..writes {
        // Busy levels write small runs only, apart from one another.
        let pick = if writes > 16 && !base {
            0
        } else {
            (i + level) % 4
        };
        let (off, len) = match pick {
            // A few sectors: partially present blocks.
            0 => {
                let len = (1 + r.below(24)) * 512;
                (r.below(sectors - len / 512) * 512, len)
            }
            // Across a block boundary.
            1 => {
                let b = 1 + r.below(SIZE / MIB - 1);
                let before = (1 + r.below(32)) * 4096;
                (b * MIB - before, before + (1 + r.below(32)) * 4096)
            }
            // A whole block.
            2 => (r.below(SIZE / MIB) * MIB, MIB),
            // All zeros: a stored run that reads as zeros.
            _ => {
                let len = (1 + r.below(8)) * 4096;
                let off = r.below(SIZE / 4096 - 8) * 4096;
                disk.write_at(&vec![0u8; len as usize], off).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
                continue;
            }
        };
        let mut data = vec![0u8; len as usize];
        r.fill(&mut data);
        disk.write_at(&data, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    if !base && disk.info().format == vhdkit::Format::Vhdx {
        // A whole block discarded in a differencing VHDX reads as zeros
        // (ZERO state), not from the parent.
        let b = r.below(SIZE / MIB);
        disk.discard(b * MIB, MIB).unwrap();
        model[(b * MIB) as usize..((b + 1) * MIB) as usize].fill(0);
    }
}

/// A chain of `levels` images (base included) in `dir`, named
/// `base.EXT`, `l1.EXT`, ... with the child last created.
pub fn build(dir: &Path, kind: Kind, levels: usize, seed: u64) -> Chain {
    build_named(dir, kind, levels, seed, "")
}

/// [`build`] with `writes` writes of a few sectors each into each level
/// above the base: many small runs for the merge to copy.
pub fn build_busy(dir: &Path, kind: Kind, levels: usize, seed: u64, writes: usize) -> Chain {
    build_with(dir, kind, levels, seed, "", writes)
}

/// [`build`] with `prefix` before each level's name.
pub fn build_named(dir: &Path, kind: Kind, levels: usize, seed: u64, prefix: &str) -> Chain {
    build_with(dir, kind, levels, seed, prefix, 8)
}

fn build_with(
    dir: &Path,
    kind: Kind,
    levels: usize,
    seed: u64,
    prefix: &str,
    writes: usize,
) -> Chain {
    let mut r = Rng::new(seed);
    let mut paths_up: Vec<PathBuf> = Vec::new();
    let mut views_up: Vec<Vec<u8>> = Vec::new();
    let mut model = vec![0u8; SIZE as usize];
    for level in 0..levels {
        let top = level + 1 == levels;
        let name = if level == 0 {
            format!("{prefix}base.{}", kind.ext(false))
        } else {
            format!("{prefix}l{level}.{}", kind.ext(top))
        };
        let path = dir.join(name);
        let mut disk = create(kind, &path, paths_up.last().map(PathBuf::as_path));
        let n = if level == 0 { 12 } else { writes };
        fill(&mut disk, &mut model, &mut r, level, level == 0, n);
        disk.close().unwrap();
        paths_up.push(path);
        views_up.push(model.clone());
    }
    paths_up.reverse();
    views_up.reverse();
    Chain {
        kind,
        paths: paths_up,
        views: views_up,
    }
}

/// A differencing image of `kind` over `parent` at `path` with a little
/// data of its own.
pub fn sibling(kind: Kind, path: &Path, parent: &Path) {
    let mut d = create(kind, path, Some(parent));
    d.write_at(&[0x77; 4096], 3 * MIB).unwrap();
    d.close().unwrap();
}

/// The whole virtual disk of `path` read through vhdkit.
pub fn vhdkit_view(path: &Path) -> Vec<u8> {
    let d = vhdkit::open(path, &vhdkit::OpenOptions::new())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    crate::common::read_disk(d.as_virtual_disk())
}
