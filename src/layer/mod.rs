//! The sparse-layer engine: read, map and copy-on-write of VHD and VHDX
//! written once.
//!
//! A format describes each block of its table through [`BlockMap`]: zeros,
//! from the parent, stored whole at a file offset, or partly stored with a
//! sector bitmap saying which sectors. The engine does the rest: it splits
//! ranges at block boundaries, reads stored bytes through
//! [`crate::damage::Stored`] (a block past the end of the file fails closed,
//! or under salvage reads as zeros and is logged), falls through to the
//! parent, builds the allocation map, and widens differencing writes to the
//! units their bitmaps mark. Sector bitmaps are kept in one bounded
//! [`BitmapCache`] per image.

mod cache;

use std::sync::Arc;

pub(crate) use cache::BitmapCache;

use crate::damage::Stored;
use crate::disk::{Extent, ExtentKind, ExtentList, block_pieces, presence_runs};
use crate::error::Result;
use crate::io::{Storage, io_err};
use crate::parent::Parent;

/// Where the bytes of one block are, as the block table says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockState {
    /// Reads as zeros without being stored.
    Zero,
    /// Not stored here: read from the parent (zeros without one).
    Parent,
    /// Stored whole; the block's first byte is at this file offset.
    Stored(u64),
    /// Partly stored at this file offset: the sector bitmap says which
    /// sectors are here, the others come from the parent.
    Partial(u64),
}

/// Bits of a block's sector bitmap.
#[derive(Debug, Clone)]
pub(crate) struct SectorBits {
    /// The bitmap bytes, in the format's bit order.
    pub bytes: Arc<[u8]>,
    /// The sector (within the block) of the first bit of `bytes[0]`.
    pub first: u64,
}

/// A sector bitmap the file does not hold: what to name when reading
/// through it fails, and where the file's missing bytes start.
pub(crate) struct MissingBitmap<'a> {
    /// The structure holding the bitmap.
    pub stored: Stored<'a>,
    /// File offset from which the bitmap is missing.
    pub from: u64,
}

/// What a format tells the engine about its blocks.
pub(crate) trait BlockMap {
    /// Whether a bitmap byte holds its first sector in its most significant
    /// bit (VHD) rather than its least significant one (VHDX).
    const MSB_FIRST: bool;
    /// The file's name in errors about its length ("VHD file").
    const FILE: &'static str;

    /// The image file.
    fn storage(&self) -> &dyn Storage;
    /// Bytes per block.
    fn block_size(&self) -> u64;
    /// Bytes per bit of the sector bitmap.
    fn sector_size(&self) -> u64;
    /// The state of block `block`, its offset checked.
    fn block(&self, block: u64) -> Result<BlockState>;
    /// What a read of block `block`'s stored bytes names if the file does
    /// not hold them.
    fn stored(&self, block: u64) -> Stored<'_>;
    /// The bitmap bits of the partly stored block `block` for its sectors
    /// `[first, last)` (at least), or what is missing when the file ends
    /// before them.
    #[allow(clippy::type_complexity)]
    fn bitmap(
        &self,
        block: u64,
        first: u64,
        last: u64,
    ) -> Result<std::result::Result<SectorBits, MissingBitmap<'_>>>;
    /// For the allocation map, the bitmap of `block` when the file ends
    /// before it: the bits as far as they can be read (`Some`), or `None`
    /// to show the whole block as stored (reading it reports the damage).
    fn unreadable_bitmap(&self, block: u64) -> Result<Option<SectorBits>>;
    /// The parent, for a differencing image.
    fn parent(&self) -> Option<&Parent>;
    /// The image's bitmap cache.
    fn cache(&self) -> &BitmapCache;
}

impl SectorBits {
    /// Whether sector `s` of the block is present (stored here).
    fn present<M: BlockMap + ?Sized>(&self, s: u64) -> bool {
        let Some(b) = s.checked_sub(self.first) else {
            return false;
        };
        let mask = if M::MSB_FIRST {
            0x80u8 >> (b % 8)
        } else {
            1u8 << (b % 8)
        };
        self.bytes
            .get((b / 8) as usize)
            .is_some_and(|x| x & mask != 0)
    }
}

/// Read from the parent, or zeros when there is none.
pub(crate) fn parent_read(parent: Option<&Parent>, buf: &mut [u8], offset: u64) -> Result<()> {
    match parent {
        Some(p) => p.read_at(buf, offset),
        None => {
            buf.fill(0);
            Ok(())
        }
    }
}

/// The bits of partly stored `block` covering `[in_off, in_off + len)`:
/// the whole block's bitmap from the cache or the file (then cached), or,
/// when the file does not hold all of it, just the bits the range needs.
#[allow(clippy::type_complexity)]
fn sector_bits<M: BlockMap + ?Sized>(
    m: &M,
    block: u64,
    in_off: u64,
    len: u64,
) -> Result<std::result::Result<SectorBits, MissingBitmap<'_>>> {
    if let Some(bytes) = m.cache().get(block) {
        return Ok(Ok(SectorBits { bytes, first: 0 }));
    }
    let ss = m.sector_size();
    let whole = m.block_size() / ss;
    if let Ok(bits) = m.bitmap(block, 0, whole)? {
        m.cache().insert(block, bits.bytes.clone());
        return Ok(Ok(bits));
    }
    m.bitmap(block, in_off / ss, (in_off + len).div_ceil(ss))
}

/// Runs of equal presence over `[in_off, in_off + len)` of partly stored
/// `block`, as (start in block, length, present), or what is missing.
#[allow(clippy::type_complexity)]
fn runs<M: BlockMap + ?Sized>(
    m: &M,
    block: u64,
    in_off: u64,
    len: u64,
) -> Result<std::result::Result<Vec<(u64, u64, bool)>, MissingBitmap<'_>>> {
    Ok(sector_bits(m, block, in_off, len)?
        .map(|bits| presence_runs(in_off, len, m.sector_size(), |s| bits.present::<M>(s))))
}

/// Fill `buf` with the virtual bytes at `offset` (checked by the caller).
pub(crate) fn read<M: BlockMap + ?Sized>(m: &M, buf: &mut [u8], offset: u64) -> Result<()> {
    for p in block_pieces(offset, buf.len() as u64, m.block_size()) {
        read_block(
            m,
            p.block,
            p.in_block,
            &mut buf[p.done..p.done + p.len],
            p.pos,
        )?;
    }
    Ok(())
}

/// Read `out` from block `block` at `in_off` inside it; `vpos` is the
/// virtual offset of `out[0]`. Stored bytes the file does not hold are an
/// error, or under salvage zeros that are logged.
fn read_block<M: BlockMap + ?Sized>(
    m: &M,
    block: u64,
    in_off: u64,
    out: &mut [u8],
    vpos: u64,
) -> Result<()> {
    match m.block(block)? {
        BlockState::Zero => {
            out.fill(0);
            Ok(())
        }
        BlockState::Parent => parent_read(m.parent(), out, vpos),
        BlockState::Stored(data) => {
            m.stored(block)
                .read(m.storage(), out, data.saturating_add(in_off), vpos)
        }
        BlockState::Partial(data) => {
            let runs = match runs(m, block, in_off, out.len() as u64)? {
                Ok(runs) => runs,
                Err(missing) => {
                    // Which sectors are present is unknown: the range
                    // cannot be read, from this file or the parent.
                    out.fill(0);
                    let file_len = m.storage().len().map_err(io_err(M::FILE, 0))?;
                    return missing.stored.missing(
                        missing.from.max(file_len),
                        file_len,
                        vpos,
                        out.len() as u64,
                    );
                }
            };
            let stored = m.stored(block);
            for (start, len, present) in runs {
                let piece = &mut out[(start - in_off) as usize..(start - in_off + len) as usize];
                let at = vpos + (start - in_off);
                if present {
                    stored.read(m.storage(), piece, data.saturating_add(start), at)?;
                } else {
                    parent_read(m.parent(), piece, at)?;
                }
            }
            Ok(())
        }
    }
}

/// The allocation map of `[offset, end)` (inside the disk) as maximal runs.
pub(crate) fn map<M: BlockMap + ?Sized>(m: &M, offset: u64, end: u64) -> Result<Vec<Extent>> {
    let mut list = ExtentList::default();
    for p in block_pieces(offset, end.saturating_sub(offset), m.block_size()) {
        let (block, in_off, pos, n) = (p.block, p.in_block, p.pos, p.len as u64);
        match m.block(block)? {
            BlockState::Zero => list.push(pos, n, ExtentKind::Zero, None),
            BlockState::Parent => list.push(pos, n, ExtentKind::Parent, None),
            BlockState::Stored(data) => {
                list.push(pos, n, ExtentKind::Data, Some(data.saturating_add(in_off)));
            }
            BlockState::Partial(data) => {
                let runs = match runs(m, block, in_off, n)? {
                    Ok(runs) => runs,
                    Err(_) => match m.unreadable_bitmap(block)? {
                        Some(bits) => {
                            presence_runs(in_off, n, m.sector_size(), |s| bits.present::<M>(s))
                        }
                        None => vec![(in_off, n, true)],
                    },
                };
                for (s, len, present) in runs {
                    let vpos = pos - in_off + s;
                    if present {
                        list.push(vpos, len, ExtentKind::Data, Some(data.saturating_add(s)));
                    } else {
                        list.push(vpos, len, ExtentKind::Parent, None);
                    }
                }
            }
        }
    }
    Ok(list.into_vec())
}

/// Copy-on-write for a differencing layer whose sectors become present in
/// units of `unit` bytes: the write of `buf` at `offset` widened to whole
/// units (within `size`), the widened edges filled with what they read as
/// now (possibly from the parent) through `read`. `None` when the write is
/// whole units already.
pub(crate) fn widen(
    read: impl Fn(&mut [u8], u64) -> Result<()>,
    size: u64,
    unit: u64,
    buf: &[u8],
    offset: u64,
) -> Result<Option<(Vec<u8>, u64)>> {
    let end = offset + buf.len() as u64;
    let a = offset / unit * unit;
    let b = (end.div_ceil(unit) * unit).min(size);
    if a == offset && end == b {
        return Ok(None);
    }
    let mut merged = vec![0u8; (b - a) as usize];
    let head_end = (a + unit).min(b);
    if a < offset {
        read(&mut merged[..(head_end - a) as usize], a)?;
    }
    let tail = (end - 1) / unit * unit;
    if end < b && (a == offset || tail >= head_end) {
        read(&mut merged[(tail - a) as usize..], tail)?;
    }
    merged[(offset - a) as usize..(end - a) as usize].copy_from_slice(buf);
    Ok(Some((merged, a)))
}

/// Write `buf` at `offset` of `disk` block by block through
/// `write_block(disk, block, offset in block, bytes)`, dropping each
/// block's bitmap from the cache `cache(disk)` first.
pub(crate) fn write_blocks<T: ?Sized>(
    disk: &mut T,
    cache: fn(&T) -> &BitmapCache,
    block_size: u64,
    buf: &[u8],
    offset: u64,
    mut write_block: impl FnMut(&mut T, u64, u64, &[u8]) -> Result<()>,
) -> Result<()> {
    for p in block_pieces(offset, buf.len() as u64, block_size) {
        cache(disk).invalidate(p.block);
        write_block(disk, p.block, p.in_block, &buf[p.done..p.done + p.len])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_fills_partial_units_from_the_current_content() {
        let disk: Vec<u8> = (0..64u8).collect();
        let read = |b: &mut [u8], o: u64| {
            b.copy_from_slice(&disk[o as usize..o as usize + b.len()]);
            Ok(())
        };
        assert!(widen(read, 64, 8, &[0xff; 16], 8).unwrap().is_none());
        let (m, a) = widen(read, 64, 8, &[0xff; 4], 10).unwrap().unwrap();
        assert_eq!(a, 8);
        assert_eq!(m, [8, 9, 0xff, 0xff, 0xff, 0xff, 14, 15]);
        let (m, a) = widen(read, 64, 8, &[0xee; 12], 6).unwrap().unwrap();
        assert_eq!(a, 0);
        assert_eq!(m.len(), 24);
        assert_eq!(&m[..6], &[0, 1, 2, 3, 4, 5]);
        assert_eq!(&m[6..18], &[0xee; 12]);
        assert_eq!(&m[18..], &[18, 19, 20, 21, 22, 23]);
        // The last unit is cut at the end of the disk.
        let (m, a) = widen(read, 60, 8, &[0xdd; 2], 57).unwrap().unwrap();
        assert_eq!((a, m.len()), (56, 4));
        assert_eq!(m, [56, 0xdd, 0xdd, 59]);
    }

    #[test]
    fn sector_bits_follow_the_format_bit_order() {
        // Bit 0 of the first byte is sector 8 here.
        let bits = SectorBits {
            bytes: Arc::from(vec![0b1000_0001u8, 0b0000_0010]),
            first: 8,
        };
        type Vhdx = crate::vhdx::VhdxDisk;
        type Vhd = crate::vhd::VhdBlocks<'static>;
        let lsb: Vec<u64> = (0..40).filter(|&s| bits.present::<Vhdx>(s)).collect();
        assert_eq!(lsb, [8, 15, 17]);
        let msb: Vec<u64> = (0..40).filter(|&s| bits.present::<Vhd>(s)).collect();
        assert_eq!(msb, [8, 15, 22]);
    }

    /// A read caches a block's bitmap; a later write to the block must not
    /// leave it stale, in VHD (bitmap in front of the block) and VHDX
    /// (bitmap in its chunk's block, changed through the log).
    #[test]
    fn reads_after_writes_see_the_new_bitmap() {
        use crate::VirtualDisk;
        let dir = tempfile::tempdir().unwrap();
        let size = 8 << 20;
        for fmt in ["vhd", "vhdx"] {
            let parent = dir.path().join(format!("p.{fmt}"));
            let child = dir.path().join(format!("c.{fmt}"));
            let mut p: Box<dyn VirtualDisk> = match fmt {
                "vhd" => Box::new(
                    crate::vhd::create(&parent, crate::vhd::VhdBuilder::new(size)).unwrap(),
                ),
                _ => Box::new(
                    crate::vhdx::create(&parent, crate::vhdx::VhdxBuilder::new(size)).unwrap(),
                ),
            };
            p.write_at(&vec![0x11; size as usize], 0).unwrap();
            p.close().unwrap();
            drop(p);
            let mut c: Box<dyn VirtualDisk> = match fmt {
                "vhd" => Box::new(
                    crate::vhd::create(
                        &child,
                        crate::vhd::VhdBuilder::new(size).differencing(&parent),
                    )
                    .unwrap(),
                ),
                _ => Box::new(
                    crate::vhdx::create(
                        &child,
                        crate::vhdx::VhdxBuilder::new(size).differencing(&parent),
                    )
                    .unwrap(),
                ),
            };
            c.write_at(&[0x22; 4096], 4096).unwrap();
            let mut got = vec![0u8; 64 << 10];
            c.read_at(&mut got, 0).unwrap();
            assert!(got[..4096].iter().all(|&b| b == 0x11), "{fmt}");
            assert!(got[4096..8192].iter().all(|&b| b == 0x22), "{fmt}");
            c.write_at(&[0x33; 4096], 32 << 10).unwrap();
            c.read_at(&mut got, 0).unwrap();
            assert!(got[4096..8192].iter().all(|&b| b == 0x22), "{fmt}");
            assert!(got[8192..32 << 10].iter().all(|&b| b == 0x11), "{fmt}");
            assert!(
                got[32 << 10..36 << 10].iter().all(|&b| b == 0x33),
                "{fmt}: stale bitmap"
            );
            c.close().unwrap();
        }
    }
}
