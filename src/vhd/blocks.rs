//! The blocks of a dynamic or differencing VHD: how the BAT describes
//! them to the sparse-layer engine ([`crate::layer`]), and how a write
//! allocates and fills them.

use super::geometry::SECTOR;
use super::{Sparse, VhdDisk, bat};
use crate::damage::Stored;
use crate::disk::is_zero;
use crate::error::{Error, ErrorKind, Result};
use crate::fixed::FixedStruct;
use crate::io::{Storage, io_err};
use crate::layer::{self, BitmapCache, BlockMap, BlockState, MissingBitmap, SectorBits};
use crate::parent::Parent;

/// A sparse VHD as the engine sees it.
pub(crate) struct VhdBlocks<'a> {
    pub(super) disk: &'a VhdDisk,
    pub(super) sparse: &'a Sparse,
}

impl BlockMap for VhdBlocks<'_> {
    const MSB_FIRST: bool = true;
    const FILE: &'static str = "VHD file";

    fn storage(&self) -> &dyn Storage {
        self.disk.storage.as_ref()
    }

    fn block_size(&self) -> u64 {
        self.sparse.block_size
    }

    fn sector_size(&self) -> u64 {
        SECTOR
    }

    fn block(&self, block: u64) -> Result<BlockState> {
        let entry = self.sparse.bat[block as usize];
        let diff = self.disk.is_differencing();
        Ok(if entry == bat::UNUSED {
            if diff {
                BlockState::Parent
            } else {
                BlockState::Zero
            }
        } else {
            let data = self.sparse.block_file_offset(entry) + self.sparse.bitmap_size;
            if diff {
                BlockState::Partial(data)
            } else {
                BlockState::Stored(data)
            }
        })
    }

    /// The whole block, bitmap and data, is named.
    fn stored(&self, block: u64) -> Stored<'_> {
        let entry = self.sparse.bat[block as usize];
        Stored {
            structure: "VHD block",
            block,
            block_offset: self.sparse.block_file_offset(entry),
            block_len: self.sparse.bitmap_size + self.sparse.block_size,
            path: self.disk.path.as_deref(),
            salvage: self.disk.salvage.as_deref(),
            reserved_len: 0,
        }
    }

    /// The whole bitmap, whatever range is asked for: it is one sector or
    /// a few in front of the block's data.
    fn bitmap(
        &self,
        block: u64,
        _first: u64,
        _last: u64,
    ) -> Result<std::result::Result<SectorBits, MissingBitmap<'_>>> {
        let entry = self.sparse.bat[block as usize];
        let off = self.sparse.block_file_offset(entry);
        let mut bm = vec![0u8; self.sparse.bitmap_size as usize];
        match self.disk.storage.read_at(&mut bm, off) {
            Ok(()) => Ok(Ok(SectorBits {
                bytes: bm.into(),
                first: 0,
            })),
            // Without its bitmap nothing of the block can be read: the
            // bitmap comes first, so its data is missing too.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Err(MissingBitmap {
                stored: self.stored(block),
                from: off,
            })),
            Err(e) => Err(io_err("VHD sector bitmap", off)(e)),
        }
    }

    /// The bitmap as far as the file holds it, zeros past its end.
    fn unreadable_bitmap(&self, block: u64) -> Result<Option<SectorBits>> {
        let entry = self.sparse.bat[block as usize];
        Ok(Some(SectorBits {
            bytes: self.disk.read_bitmap(self.sparse, entry)?.into(),
            first: 0,
        }))
    }

    fn parent(&self) -> Option<&Parent> {
        self.disk.parent.as_ref()
    }

    fn cache(&self) -> &BitmapCache {
        &self.disk.bitmap_cache
    }
}

impl VhdDisk {
    /// The sector bitmap of the block at `entry`, zeros where the file
    /// ends before it.
    fn read_bitmap(&self, sparse: &Sparse, entry: u32) -> Result<Vec<u8>> {
        let off = sparse.block_file_offset(entry);
        let mut bm = vec![0u8; sparse.bitmap_size as usize];
        self.storage
            .read_at_or_zero(&mut bm, off)
            .map_err(io_err("VHD sector bitmap", off))?;
        Ok(bm)
    }

    pub(super) fn ensure_writable(&self) -> Result<()> {
        crate::disk::ensure_writable(self.storage.as_ref(), &self.warnings, self.parent.as_ref())
    }

    /// Append a new block: footer at the new end first, made durable
    /// before the bitmap overwrites the old footer (otherwise a crash could
    /// leave the file ending in a bitmap), then the bitmap. The caller
    /// writes the data and links the block into the BAT last.
    fn allocate_block(&mut self) -> Result<u32> {
        let diff = self.is_differencing();
        let sparse = self.sparse.as_mut().expect("sparse");
        let start = sparse.next_free;
        let entry = u32::try_from(start / SECTOR)
            .ok()
            .filter(|&e| e != bat::UNUSED)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    "the file has grown past the 2 TiB that VHD block offsets can address",
                )
            })?;
        let new_end = start + sparse.bitmap_size + sparse.block_size;
        let fb = self.footer.to_bytes();
        self.storage
            .write_at(&fb, new_end)
            .map_err(io_err("VHD footer", new_end))?;
        if self.barriers {
            self.storage.flush().map_err(io_err("VHD file", 0))?;
        }
        // Dynamic disks mark every sector present (the block reads as
        // zeros until written); differencing disks start with none present.
        let fill = if diff { 0x00 } else { 0xff };
        let bm = vec![fill; sparse.bitmap_size as usize];
        self.storage
            .write_at(&bm, start)
            .map_err(io_err("VHD sector bitmap", start))?;
        sparse.next_free = new_end;
        Ok(entry)
    }

    fn link_block(&mut self, block: usize, entry: u32) -> Result<()> {
        if self.barriers {
            self.storage.flush().map_err(io_err("VHD file", 0))?;
        }
        let sparse = self.sparse.as_mut().expect("sparse");
        let off = bat::entry_offset(sparse.header.table_offset, block);
        self.storage
            .write_at(&entry.to_be_bytes(), off)
            .map_err(io_err("VHD block allocation table", off))?;
        sparse.bat[block] = entry;
        Ok(())
    }

    /// Write `data` into block `block` at `in_off` (sector-aligned for
    /// differencing disks).
    fn write_block(&mut self, block: usize, in_off: u64, data: &[u8]) -> Result<()> {
        let diff = self.is_differencing();
        let sparse = self.sparse.as_ref().expect("sparse");
        let mut entry = sparse.bat[block];
        let fresh = entry == bat::UNUSED;
        if fresh {
            if !diff && is_zero(data) {
                return Ok(());
            }
            entry = self.allocate_block()?;
        }
        let sparse = self.sparse.as_ref().expect("sparse");
        let base = sparse.block_file_offset(entry);
        let data_off = base + sparse.bitmap_size + in_off;
        self.storage
            .write_at(data, data_off)
            .map_err(io_err("VHD block", data_off))?;
        if diff {
            let mut bm = self.read_bitmap(sparse, entry)?;
            let first = in_off / SECTOR;
            let last = (in_off + data.len() as u64).div_ceil(SECTOR);
            let mut changed = false;
            for s in first..last {
                let (byte, mask) = ((s / 8) as usize, 0x80u8 >> (s % 8));
                if bm[byte] & mask == 0 {
                    bm[byte] |= mask;
                    changed = true;
                }
            }
            if changed {
                // In a linked block, sectors must not become present
                // before their data is durable, or a crash would expose
                // stale bytes in place of the parent's.
                if !fresh && self.barriers {
                    self.storage.flush().map_err(io_err("VHD file", 0))?;
                }
                self.storage
                    .write_at(&bm, base)
                    .map_err(io_err("VHD sector bitmap", base))?;
            }
        }
        if fresh {
            self.link_block(block, entry)?;
        }
        Ok(())
    }

    /// Write `buf` at `offset` of a sparse disk, block by block.
    pub(super) fn write_sparse(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let Some(bs) = self.sparse.as_ref().map(|s| s.block_size) else {
            return Ok(());
        };
        layer::write_blocks(
            self,
            |d| &d.bitmap_cache,
            bs,
            buf,
            offset,
            |d, b, at, data| d.write_block(b as usize, at, data),
        )
    }
}
