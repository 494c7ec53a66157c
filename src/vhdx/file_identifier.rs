//! The file type identifier: the first 64 KiB of every VHDX, a signature and
//! the name of the program that created the file ([MS-VHDX] 2.2.1).

use std::io::Cursor;

use binrw::{BinRead, BinWrite, binrw};

use crate::error::{Error, Result};

/// Offset of the identifier in the file.
pub const FILE_IDENTIFIER_OFFSET: u64 = 0;
/// The signature, "vhdxfile".
pub const SIGNATURE: [u8; 8] = *b"vhdxfile";
/// Bytes decoded: the signature and the 256 UTF-16 units of the creator.
pub const DECODED_SIZE: usize = 8 + 512;

/// The identifier as stored, little-endian.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentifier {
    /// "vhdxfile".
    pub signature: [u8; 8],
    /// UTF-16LE name of the creating program, NUL-padded.
    pub creator: [u16; 256],
}

impl FileIdentifier {
    /// Decode and check the signature.
    pub fn parse(bytes: &[u8; DECODED_SIZE]) -> Result<FileIdentifier> {
        let id = FileIdentifier::read(&mut Cursor::new(&bytes[..])).map_err(|e| {
            Error::corrupt(
                "VHDX file identifier",
                FILE_IDENTIFIER_OFFSET,
                format!("cannot decode: {e}"),
            )
        })?;
        if id.signature != SIGNATURE {
            return Err(Error::corrupt(
                "VHDX file identifier",
                FILE_IDENTIFIER_OFFSET,
                format!(
                    "signature is {:?}, expected \"vhdxfile\"",
                    String::from_utf8_lossy(&id.signature)
                ),
            ));
        }
        Ok(id)
    }

    /// An identifier naming `creator` (cut to 256 UTF-16 units).
    pub fn new(creator: &str) -> FileIdentifier {
        let mut units = [0u16; 256];
        for (u, c) in units.iter_mut().zip(creator.encode_utf16()) {
            *u = c;
        }
        FileIdentifier {
            signature: SIGNATURE,
            creator: units,
        }
    }

    /// The stored bytes (signature and creator; the rest of the 64 KiB is zero).
    pub fn to_bytes(&self) -> [u8; DECODED_SIZE] {
        let mut c = Cursor::new(Vec::with_capacity(DECODED_SIZE));
        self.write(&mut c)
            .expect("writing a fixed-size struct to memory cannot fail");
        c.into_inner()
            .try_into()
            .expect("identifier layout is 520 bytes")
    }

    /// The creator string up to its first NUL.
    pub fn creator(&self) -> String {
        let end = self
            .creator
            .iter()
            .position(|&u| u == 0)
            .unwrap_or(self.creator.len());
        String::from_utf16_lossy(&self.creator[..end])
    }
}
