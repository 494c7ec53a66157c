//! GUID byte layouts.
//!
//! VHD stores its unique ids as 16 bytes read in order (RFC 4122 layout);
//! VHDX stores GUIDs in the Microsoft mixed-endian layout whose first three
//! fields are little-endian ([MS-DTYP] 2.3.4.2).

use uuid::Uuid;

/// A GUID stored as plain big-endian bytes (VHD).
pub fn from_be_bytes(b: [u8; 16]) -> Uuid {
    Uuid::from_bytes(b)
}

/// A GUID stored in the Microsoft mixed-endian layout (VHDX).
pub fn from_ms_bytes(b: [u8; 16]) -> Uuid {
    Uuid::from_bytes_le(b)
}

/// The Microsoft mixed-endian bytes of a GUID (VHDX).
pub fn to_ms_bytes(u: Uuid) -> [u8; 16] {
    u.to_bytes_le()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_endian_round_trip() {
        // [MS-VHDX] parent locator type GUID B04AEFB7-D19E-4A81-B789-25B8E9445913.
        let b = [
            0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a, 0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44,
            0x59, 0x13,
        ];
        let u = from_ms_bytes(b);
        assert_eq!(u.to_string(), "b04aefb7-d19e-4a81-b789-25b8e9445913");
        assert_eq!(to_ms_bytes(u), b);
    }
}
