//! Sector bitmaps of differencing disks: one 1 MiB block per chunk, one
//! bit per logical sector of the chunk's payload blocks, least-significant
//! bit first (bit 0 of byte 0 is the chunk's first sector; [MS-VHDX] 2.5.1.2).
//! A set bit means the sector is stored in this file, a clear one that it
//! comes from the parent.

/// Whether bit `bit` is set.
pub fn get(bitmap: &[u8], bit: u64) -> bool {
    bitmap[(bit / 8) as usize] & (1 << (bit % 8)) != 0
}

/// Set (or clear) bits `[start, end)`.
pub fn set_range(bitmap: &mut [u8], start: u64, end: u64, value: bool) {
    let mut b = start;
    while b < end {
        if b.is_multiple_of(8) && end - b >= 8 {
            // Whole bytes at once.
            let n = ((end - b) / 8) as usize;
            let first = (b / 8) as usize;
            bitmap[first..first + n].fill(if value { 0xff } else { 0 });
            b += n as u64 * 8;
            continue;
        }
        let (byte, mask) = ((b / 8) as usize, 1u8 << (b % 8));
        if value {
            bitmap[byte] |= mask;
        } else {
            bitmap[byte] &= !mask;
        }
        b += 1;
    }
}

/// Whether every bit of `[start, end)` is set.
pub fn all_set(bitmap: &[u8], start: u64, end: u64) -> bool {
    let mut b = start;
    while b < end {
        if b.is_multiple_of(8) && end - b >= 8 {
            let n = ((end - b) / 8) as usize;
            let first = (b / 8) as usize;
            if bitmap[first..first + n].iter().any(|&x| x != 0xff) {
                return false;
            }
            b += n as u64 * 8;
            continue;
        }
        if !get(bitmap, b) {
            return false;
        }
        b += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_set_clear_and_test_lsb_first() {
        let mut bm = vec![0u8; 8];
        set_range(&mut bm, 3, 21, true);
        assert_eq!(bm[..3], [0b1111_1000, 0xff, 0b0001_1111]);
        assert!(all_set(&bm, 3, 21) && !all_set(&bm, 2, 21) && !all_set(&bm, 3, 22));
        set_range(&mut bm, 8, 16, false);
        assert_eq!(bm[..3], [0b1111_1000, 0, 0b0001_1111]);
        assert!(get(&bm, 3) && !get(&bm, 2) && !get(&bm, 8));
    }
}
