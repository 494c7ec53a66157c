//! CHS disk geometry, computed as the VHD specification (appendix "CHS
//! calculation") prescribes.

use serde::Serialize;

/// Sector size of a VHD in bytes; the format knows no other.
pub const SECTOR: u64 = 512;

/// The largest geometry a footer can hold: 65535 cylinders, 16 heads, 255
/// sectors per track. Readers that derive the size from CHS (qemu for
/// creators it does not know) take this value to mean "use current_size".
pub const MAX_GEOMETRY: Geometry = Geometry {
    cylinders: 65535,
    heads: 16,
    sectors_per_track: 255,
};

/// Cylinders, heads and sectors per track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Geometry {
    /// Cylinder count.
    pub cylinders: u16,
    /// Heads per cylinder.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

impl Geometry {
    /// The geometry of a disk of `size` bytes (rounds down, caps at the maximum).
    pub fn for_size(size: u64) -> Geometry {
        let max_sectors = 65535u64 * 16 * 255;
        let total = (size / SECTOR).min(max_sectors);
        let (spt, heads, cyl_times_heads);
        if total >= 65535 * 16 * 63 {
            spt = 255u64;
            heads = 16u64;
            cyl_times_heads = total / spt;
        } else {
            let mut s = 17u64;
            let mut cth = total / s;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                cth = total / s;
            }
            if cth >= h * 1024 {
                s = 63;
                h = 16;
                cth = total / s;
            }
            spt = s;
            heads = h;
            cyl_times_heads = cth;
        }
        Geometry {
            cylinders: (cyl_times_heads / heads) as u16,
            heads: heads as u8,
            sectors_per_track: spt as u8,
        }
    }

    /// The geometry to store for a disk of exactly `size` bytes: the computed
    /// one when it describes the size exactly, otherwise `MAX_GEOMETRY`, so
    /// that CHS-based readers do not see a truncated disk.
    pub fn to_store(size: u64) -> Geometry {
        let g = Geometry::for_size(size);
        if g.size() == size { g } else { MAX_GEOMETRY }
    }

    /// Bytes addressed by this geometry.
    pub fn size(&self) -> u64 {
        u64::from(self.cylinders)
            * u64::from(self.heads)
            * u64::from(self.sectors_per_track)
            * SECTOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_geometries() {
        // dissect/fixed.vhd: 10 MiB, CHS gives 10479616 bytes.
        assert_eq!(Geometry::for_size(10 * 1024 * 1024).size(), 10_479_616);
        // dfvfs/fat-differential.vhd: 4 MiB, CHS gives 4177920 bytes.
        assert_eq!(Geometry::for_size(4 * 1024 * 1024).size(), 4_177_920);
        assert_eq!(Geometry::for_size(u64::MAX), MAX_GEOMETRY);
    }

    #[test]
    fn stored_geometry_is_exact_or_max() {
        let g = Geometry::for_size(10 * 1024 * 1024);
        assert_eq!(Geometry::to_store(g.size()), g);
        assert_eq!(Geometry::to_store(10 * 1024 * 1024), MAX_GEOMETRY);
    }
}
