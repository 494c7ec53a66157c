//! Parent locator entries of a differencing VHD: where the parent's path is
//! stored and in which encoding (VHD specification, "Parent Locator Entry").

use binrw::binrw;
use serde::Serialize;

use crate::error::Result;
use crate::io::{Storage, read_struct};

/// Size of one entry in the dynamic header.
pub const ENTRY_SIZE: u64 = 24;
/// Absolute Windows path, UTF-16LE.
pub const PLATFORM_W2KU: u32 = u32::from_be_bytes(*b"W2ku");
/// Relative Windows path, UTF-16LE.
pub const PLATFORM_W2RU: u32 = u32::from_be_bytes(*b"W2ru");
/// Deprecated absolute Windows path (single-byte characters).
pub const PLATFORM_WI2K: u32 = u32::from_be_bytes(*b"Wi2k");
/// Deprecated relative Windows path (single-byte characters).
pub const PLATFORM_WI2R: u32 = u32::from_be_bytes(*b"Wi2r");
/// Mac OS alias blob (not a path; not decoded). Listed to complete the
/// table of platform codes ([VHD] "Parent Locator Entries"); nothing reads it.
#[allow(dead_code)]
pub const PLATFORM_MAC: u32 = u32::from_be_bytes(*b"Mac ");
/// Mac OS X file URL, UTF-8.
pub const PLATFORM_MACX: u32 = u32::from_be_bytes(*b"MacX");
/// Longest locator data we read. Windows paths are at most 32767 UTF-16
/// units; anything longer is damage.
pub const MAX_LOCATOR_DATA: u32 = 65_536;

/// One entry as stored, big-endian.
#[binrw]
#[brw(big)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParentLocatorEntry {
    /// Platform code: how the data is encoded.
    pub platform_code: u32,
    /// Space reserved for the data (Windows writes bytes, the spec says sectors).
    pub platform_data_space: u32,
    /// Length of the data in bytes.
    pub platform_data_length: u32,
    /// Reserved.
    pub reserved: u32,
    /// Absolute file offset of the data.
    pub platform_data_offset: u64,
}

/// A decoded locator, for `info` and for finding the parent.
#[derive(Debug, Clone, Serialize)]
pub struct Locator {
    /// Platform code as text ("W2ru").
    pub platform: String,
    /// Space reserved, as stored.
    pub data_space: u32,
    /// Data length in bytes.
    pub data_length: u32,
    /// File offset of the data.
    pub data_offset: u64,
    /// The decoded path, when the encoding is one we read.
    pub path: Option<String>,
    /// Whether the path is relative to the child's folder.
    pub relative: bool,
}

impl ParentLocatorEntry {
    /// Whether the entry is in use.
    pub fn is_used(&self) -> bool {
        self.platform_code != 0
    }

    /// Read and decode the entry's data. Data is located by offset and length
    /// only, since writers disagree on the unit of `platform_data_space`.
    pub fn decode(&self, storage: &dyn Storage) -> Result<Locator> {
        let platform = super::footer::printable(&self.platform_code.to_be_bytes());
        let relative = matches!(self.platform_code, PLATFORM_W2RU | PLATFORM_WI2R);
        let mut loc = Locator {
            platform,
            data_space: self.platform_data_space,
            data_length: self.platform_data_length,
            data_offset: self.platform_data_offset,
            path: None,
            relative,
        };
        let len = self.platform_data_length;
        let file_len = storage.len().unwrap_or(0);
        let fits = self
            .platform_data_offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= file_len);
        if len == 0 || len > MAX_LOCATOR_DATA || !fits {
            return Ok(loc);
        }
        let mut data = vec![0u8; len as usize];
        read_struct(
            storage,
            "VHD parent locator data",
            &mut data,
            self.platform_data_offset,
        )?;
        loc.path = match self.platform_code {
            PLATFORM_W2KU | PLATFORM_W2RU => Some(utf16le(&data)),
            PLATFORM_WI2K | PLATFORM_WI2R => Some(
                String::from_utf8_lossy(&data)
                    .trim_end_matches('\0')
                    .to_string(),
            ),
            PLATFORM_MACX => {
                let s = String::from_utf8_lossy(&data)
                    .trim_end_matches('\0')
                    .to_string();
                Some(file_url_path(&s))
            }
            _ => None,
        };
        Ok(loc)
    }
}

/// A `file://` URL (RFC 2396, as MacX locators hold) for the absolute
/// path `path`: every byte outside the unreserved characters and `/` is
/// percent-encoded.
pub fn file_url(path: &str) -> String {
    let mut url = String::from("file://");
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~!*'()".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The path of a MacX locator's `file://` URL (`file:///p`,
/// `file://localhost/p`), percent-decoded; anything else as it is.
pub fn file_url_path(url: &str) -> String {
    let Some(rest) = url.strip_prefix("file://") else {
        return url.to_string();
    };
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    let b = rest.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// UTF-16LE bytes to a string, stopping at the first NUL.
pub fn utf16le(data: &[u8]) -> String {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// A string as UTF-16LE bytes.
pub fn to_utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_round_trip() {
        let p = "/srv/vm images/%50 é.vhd";
        let u = file_url(p);
        assert_eq!(u, "file:///srv/vm%20images/%2550%20%C3%A9.vhd");
        assert_eq!(file_url_path(&u), p);
        assert_eq!(file_url_path("file://localhost/a%2Fb"), "/a/b");
        assert_eq!(file_url_path("/plain"), "/plain");
    }
}
