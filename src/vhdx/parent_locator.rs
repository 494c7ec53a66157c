//! The parent locator metadata item of a differencing VHDX: key/value pairs
//! in UTF-16LE naming the parent ([MS-VHDX] 2.6.2.6).

use std::io::Cursor;

use binrw::{BinRead, BinWrite, binrw};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::guid::{from_ms_bytes, to_ms_bytes};

/// The VHDX locator type, B04AEFB7-D19E-4A81-B789-25B8E9445913.
pub const VHDX_LOCATOR_TYPE: Uuid = Uuid::from_u128(0xB04AEFB7_D19E_4A81_B789_25B8E9445913);
/// Size of the locator header.
pub const HEADER_SIZE: usize = 20;
/// Size of one key/value entry.
pub const ENTRY_SIZE: usize = 12;
/// Key naming the parent's DataWriteGuid.
pub const KEY_PARENT_LINKAGE: &str = "parent_linkage";
/// Key of the parent path relative to the child's folder.
pub const KEY_RELATIVE_PATH: &str = "relative_path";
/// Key of the parent path on its volume (`\\?\Volume{GUID}\...`).
pub const KEY_VOLUME_PATH: &str = "volume_path";
/// Key of the absolute Windows path of the parent.
pub const KEY_ABSOLUTE_WIN32_PATH: &str = "absolute_win32_path";

/// The locator header as stored.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatorHeader {
    /// Locator type GUID.
    pub locator_type: [u8; 16],
    /// Reserved.
    pub reserved: u16,
    /// Number of key/value entries.
    pub key_value_count: u16,
}

/// One key/value entry as stored: offsets from the start of the item.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyValueEntry {
    /// Offset of the key.
    pub key_offset: u32,
    /// Offset of the value.
    pub value_offset: u32,
    /// Key length in bytes.
    pub key_length: u16,
    /// Value length in bytes.
    pub value_length: u16,
}

/// The decoded locator.
#[derive(Debug, Clone)]
pub struct ParentLocator {
    /// The locator type.
    pub locator_type: Uuid,
    /// The pairs, in stored order.
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// Decode the item's bytes (`offset` is its file offset, for errors).
    pub fn parse(item: &[u8], offset: u64) -> Result<ParentLocator> {
        const S: &str = "VHDX parent locator";
        let mut c = Cursor::new(item);
        let h = LocatorHeader::read(&mut c)
            .map_err(|e| Error::corrupt(S, offset, format!("cannot decode: {e}")))?;
        let locator_type = from_ms_bytes(h.locator_type);
        if locator_type != VHDX_LOCATOR_TYPE {
            return Err(Error::unsupported(
                S,
                offset,
                format!("locator type {locator_type} is not the VHDX type {VHDX_LOCATOR_TYPE}"),
            ));
        }
        let count = usize::from(h.key_value_count);
        if HEADER_SIZE + count * ENTRY_SIZE > item.len() {
            return Err(Error::corrupt(
                S,
                offset + 18,
                format!("{count} entries do not fit in the {}-byte item", item.len()),
            ));
        }
        let text = |off: u32, len: u16, what: &str, at: u64| -> Result<String> {
            let start = off as usize;
            let end = start + usize::from(len);
            if end > item.len() || !len.is_multiple_of(2) {
                return Err(Error::corrupt(
                    S,
                    at,
                    format!(
                        "{what} at {off:#x}+{len:#x} lies outside the {:#x}-byte item or has an odd length",
                        item.len()
                    ),
                ));
            }
            let units: Vec<u16> = item[start..end]
                .chunks_exact(2)
                .map(|p| u16::from_le_bytes([p[0], p[1]]))
                .collect();
            Ok(String::from_utf16_lossy(&units))
        };
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let at = offset + (HEADER_SIZE + i * ENTRY_SIZE) as u64;
            let e = KeyValueEntry::read(&mut c)
                .map_err(|e| Error::corrupt(S, at, format!("cannot decode: {e}")))?;
            let k = text(e.key_offset, e.key_length, "key", at)?;
            let v = text(e.value_offset, e.value_length, "value", at)?;
            entries.push((k, v));
        }
        Ok(ParentLocator {
            locator_type,
            entries,
        })
    }

    /// A VHDX locator holding `entries` in order.
    pub fn new(entries: Vec<(String, String)>) -> ParentLocator {
        ParentLocator {
            locator_type: VHDX_LOCATOR_TYPE,
            entries,
        }
    }

    /// Encode the item: header, key/value entries, then the UTF-16LE keys
    /// and values they point at. Fails when a key or value exceeds the
    /// 65535 bytes its length field can hold.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
        let mut strings = Vec::new();
        let mut table = Vec::new();
        let mut next = (HEADER_SIZE + self.entries.len() * ENTRY_SIZE) as u32;
        for (k, v) in &self.entries {
            let (kb, vb) = (utf16(k), utf16(v));
            let too_long = |b: &[u8]| {
                u16::try_from(b.len()).map_err(|_| {
                    Error::invalid_argument(format!(
                        "parent locator entry {k:?} is longer than 65535 bytes"
                    ))
                })
            };
            let entry = KeyValueEntry {
                key_offset: next,
                value_offset: next + kb.len() as u32,
                key_length: too_long(&kb)?,
                value_length: too_long(&vb)?,
            };
            next += (kb.len() + vb.len()) as u32;
            table.push(entry);
            strings.extend_from_slice(&kb);
            strings.extend_from_slice(&vb);
        }
        let mut c = Cursor::new(Vec::with_capacity(next as usize));
        LocatorHeader {
            locator_type: to_ms_bytes(self.locator_type),
            reserved: 0,
            key_value_count: u16::try_from(self.entries.len())
                .map_err(|_| Error::invalid_argument("too many parent locator entries"))?,
        }
        .write(&mut c)
        .expect("writing to memory cannot fail");
        for e in &table {
            e.write(&mut c).expect("writing to memory cannot fail");
        }
        let mut out = c.into_inner();
        out.extend_from_slice(&strings);
        Ok(out)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `parent_linkage` GUID (stored as `{xxxxxxxx-...}` text).
    pub fn parent_linkage(&self) -> Option<Uuid> {
        self.get(KEY_PARENT_LINKAGE)
            .and_then(|s| Uuid::parse_str(s.trim().trim_matches(['{', '}'])).ok())
    }
}
