//! Checksums used by the on-disk formats.

/// VHD checksum: one's complement of the byte sum of `bytes`, skipping the
/// four bytes of the checksum field at `field` (they count as zero).
pub fn vhd_checksum(bytes: &[u8], field: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// CRC-32C (Castagnoli) of `bytes` with the four bytes at `field` taken as zero,
/// as [MS-VHDX] checksums are defined.
pub fn crc32c_with_zeroed_field(bytes: &[u8], field: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..field]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &bytes[field + 4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhd_checksum_skips_field() {
        let mut b = [1u8; 16];
        b[4..8].copy_from_slice(&[0xff; 4]);
        assert_eq!(vhd_checksum(&b, 4), !12u32);
    }

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 B.4: 32 bytes of zeros -> 0x8a9136aa.
        assert_eq!(crc32c_with_zeroed_field(&[0u8; 32], 8), 0x8a91_36aa);
    }
}
