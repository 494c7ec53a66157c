//! The blocks of a VHDX as its BAT describes them to the sparse-layer
//! engine ([`crate::layer`]): payload states, block offsets checked against
//! the regions, and sector bitmaps (in memory when a write changed them).

use super::{VhdxDisk, bat};
use crate::damage::Stored;
use crate::error::Result;
use crate::io::{Storage, io_err};
use crate::layer::{BitmapCache, BlockMap, BlockState, MissingBitmap, SectorBits};
use crate::parent::Parent;

impl BlockMap for VhdxDisk {
    const MSB_FIRST: bool = false;
    const FILE: &'static str = "VHDX file";

    fn storage(&self) -> &dyn Storage {
        &self.storage
    }

    fn block_size(&self) -> u64 {
        self.s.layout.block_size
    }

    fn sector_size(&self) -> u64 {
        self.s.layout.sector_size
    }

    fn block(&self, block: u64) -> Result<BlockState> {
        let l = &self.s.layout;
        let idx = l.payload_index(block);
        let diff = self.s.metadata.has_parent;
        Ok(match bat::state(self.s.bat[idx as usize]) {
            bat::PAYLOAD_FULLY_PRESENT => {
                BlockState::Stored(self.stored_offset(idx, l.block_size)?)
            }
            bat::PAYLOAD_NOT_PRESENT if diff => BlockState::Parent,
            bat::PAYLOAD_NOT_PRESENT
            | bat::PAYLOAD_UNDEFINED
            | bat::PAYLOAD_ZERO
            | bat::PAYLOAD_UNMAPPED => BlockState::Zero,
            bat::PAYLOAD_PARTIALLY_PRESENT if diff => {
                BlockState::Partial(self.stored_offset(idx, l.block_size)?)
            }
            st => {
                return Err(self
                    .s
                    .corrupt_entry(idx, format!("payload block {block} has invalid state {st}")));
            }
        })
    }

    fn stored(&self, block: u64) -> Stored<'_> {
        let l = &self.s.layout;
        self.stored_block(l.payload_index(block), block, l.block_size, false)
    }

    fn bitmap(
        &self,
        block: u64,
        first: u64,
        last: u64,
    ) -> Result<std::result::Result<SectorBits, MissingBitmap<'_>>> {
        Ok(match self.bitmap_bits(block, first, last)? {
            Ok((bytes, shift)) => Ok(SectorBits {
                bytes: bytes.into(),
                first: first - shift,
            }),
            Err(at) => {
                let l = &self.s.layout;
                let chunk = block / l.chunk_ratio;
                let bidx = l.bitmap_index(chunk);
                Err(MissingBitmap {
                    stored: self.stored_block(bidx, chunk, bat::BITMAP_BLOCK_SIZE, true),
                    from: at,
                })
            }
        })
    }

    /// A sector bitmap past the end of the file: the block is shown as
    /// stored as far as the table says (reading it reports the damage).
    fn unreadable_bitmap(&self, _block: u64) -> Result<Option<SectorBits>> {
        Ok(None)
    }

    fn parent(&self) -> Option<&Parent> {
        self.parent.as_ref()
    }

    fn cache(&self) -> &BitmapCache {
        &self.bitmap_cache
    }
}

impl VhdxDisk {
    /// File offset of the block of BAT entry `index`, checked.
    pub(super) fn block_offset(&self, index: u64, size: u64) -> Result<u64> {
        match self.s.block_problem(index, size) {
            None => Ok(bat::file_offset(self.s.bat[index as usize])),
            Some(p) => Err(self.s.corrupt_entry(index, p)),
        }
    }

    /// File offset of the stored block of BAT entry `index` for reading
    /// it: checked like [`Self::block_offset`], except that a block past
    /// the end of the file is left to [`Stored::read`], which names it.
    fn stored_offset(&self, index: u64, size: u64) -> Result<u64> {
        let off = bat::file_offset(self.s.bat[index as usize]);
        if off >= self.s.file_len {
            return Ok(off);
        }
        self.block_offset(index, size)
    }

    /// What a read of the block of BAT entry `index` names when the file
    /// does not hold it: payload block `block`, or the sector bitmap block
    /// of chunk `block`.
    fn stored_block(&self, index: u64, block: u64, size: u64, bitmap: bool) -> Stored<'_> {
        Stored {
            structure: if bitmap {
                "VHDX sector bitmap block"
            } else {
                "VHDX payload block"
            },
            block,
            block_offset: bat::file_offset(self.s.bat[index as usize]),
            block_len: size,
            path: self.path.as_deref(),
            salvage: self.salvage.as_deref(),
            reserved_len: self.session.as_ref().map_or(0, |s| s.next_free),
        }
    }

    /// The sector-bitmap bits of payload block `block` for sectors
    /// `[first, last)` of the block, as (bytes, bit index of `first`), or
    /// `Err(offset)` when the file ends before them (at `offset`).
    #[allow(clippy::type_complexity)]
    fn bitmap_bits(
        &self,
        block: u64,
        first: u64,
        last: u64,
    ) -> Result<std::result::Result<(Vec<u8>, u64), u64>> {
        let l = &self.s.layout;
        let chunk = block / l.chunk_ratio;
        let idx = l.bitmap_index(chunk);
        let entry = self.s.bat[idx as usize];
        if bat::state(entry) != bat::BITMAP_PRESENT {
            return Err(self.s.corrupt_entry(
                idx,
                format!(
                    "payload block {block} is partially present but its sector bitmap has state {}",
                    bat::state(entry)
                ),
            ));
        }
        let base = self.stored_offset(idx, bat::BITMAP_BLOCK_SIZE)?;
        let bit0 = (block % l.chunk_ratio) * l.sectors_per_block() + first;
        let bit1 = (block % l.chunk_ratio) * l.sectors_per_block() + last;
        let byte0 = bit0 / 8;
        let byte1 = bit1.div_ceil(8);
        let mut bits = vec![0u8; (byte1 - byte0) as usize];
        match self.bitmaps.get(&chunk) {
            Some(bm) => bits.copy_from_slice(&bm[byte0 as usize..byte1 as usize]),
            None => {
                let at = base.saturating_add(byte0);
                match self.storage.read_at(&mut bits, at) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        let reserved = self.session.as_ref().map_or(0, |s| s.next_free);
                        if at.saturating_add(bits.len() as u64) > reserved {
                            return Ok(Err(at));
                        }
                        // A bitmap block reserved by this write session.
                        self.storage
                            .read_at_or_zero(&mut bits, at)
                            .map_err(io_err("VHDX sector bitmap", at))?;
                    }
                    Err(e) => return Err(io_err("VHDX sector bitmap", at)(e)),
                }
            }
        }
        Ok(Ok((bits, bit0 - byte0 * 8)))
    }
}
