//! Fixed-size on-disk structures declared with binrw: one trait gives each
//! its size, its name in errors, decoding from bytes (errors name the
//! structure and the byte offset) and encoding, instead of a parse and
//! serialize pair per structure.
//!
//! A structure's magic value and the invariants binrw checks while reading
//! (`#[br(assert(...))]`) raise an [`Invalid`], which [`FixedStruct::parse`]
//! turns into an [`Error`] of its kind at the file offset it names.

use std::fmt;
use std::io::{Cursor, Read, Seek, Write};

use binrw::meta::{ReadEndian, WriteEndian};
use binrw::{BinRead, BinResult, BinWrite, Endian};

use crate::error::{Error, ErrorKind, Result};

/// A value a structure does not allow, raised by a binrw assertion: what
/// kind of error, where inside the structure and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// [`ErrorKind::Corrupt`] or [`ErrorKind::Unsupported`].
    pub kind: ErrorKind,
    /// Offset of the field inside the structure.
    pub at: u64,
    /// What was found and what was expected.
    pub message: String,
}

impl Invalid {
    /// A value that no valid structure holds.
    pub fn corrupt(at: u64, message: impl Into<String>) -> Invalid {
        Invalid {
            kind: ErrorKind::Corrupt,
            at,
            message: message.into(),
        }
    }

    /// A value of a version or feature this library does not know.
    pub fn unsupported(at: u64, message: impl Into<String>) -> Invalid {
        Invalid {
            kind: ErrorKind::Unsupported,
            at,
            message: message.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A structure of [`FixedStruct::SIZE`] bytes, declared with binrw.
pub trait FixedStruct:
    Sized + ReadEndian + WriteEndian + for<'a> BinRead<Args<'a> = ()> + for<'a> BinWrite<Args<'a> = ()>
{
    /// Bytes on disk.
    const SIZE: usize;
    /// The structure's name in errors.
    const NAME: &'static str;

    /// Decode the structure at the start of `bytes`, which were read from
    /// file offset `offset`. Fewer than [`Self::SIZE`] bytes, a wrong magic
    /// value or a broken invariant is an error naming the structure and
    /// the offset.
    fn parse(bytes: &[u8], offset: u64) -> Result<Self> {
        if bytes.len() < Self::SIZE {
            return Err(Error::corrupt(
                Self::NAME,
                offset,
                format!("{} bytes; the structure has {}", bytes.len(), Self::SIZE),
            ));
        }
        Self::read(&mut Cursor::new(&bytes[..Self::SIZE]))
            .map_err(|e| read_error::<Self>(e, offset))
    }

    /// Encode to exactly [`Self::SIZE`] bytes.
    fn to_bytes(&self) -> Vec<u8> {
        let mut c = Cursor::new(Vec::with_capacity(Self::SIZE));
        // Writing to memory fails only for a layout that is not SIZE bytes,
        // which the structure tests rule out.
        let _ = self.write(&mut c);
        let mut b = c.into_inner();
        debug_assert_eq!(b.len(), Self::SIZE, "{} layout", Self::NAME);
        b.resize(Self::SIZE, 0);
        b
    }
}

/// A binrw read error as an [`Error`] at `offset` (the structure's).
fn read_error<T: FixedStruct>(e: binrw::Error, offset: u64) -> Error {
    if let binrw::Error::Custom { err, .. } = &e
        && let Some(i) = err.downcast_ref::<Invalid>()
    {
        return Error::new(i.kind, i.message.clone()).at(T::NAME, offset + i.at);
    }
    if let binrw::Error::Backtrace(bt) = e {
        return read_error::<T>(*bt.error, offset);
    }
    Error::corrupt(T::NAME, offset, format!("cannot decode: {e}"))
}

/// Read a byte array in one piece (`#[br(parse_with = read_bytes)]`):
/// binrw reads `[u8; N]` one byte at a time, which the block table, read
/// whole on every open, cannot afford.
pub fn read_bytes<R: Read + Seek, const N: usize>(
    reader: &mut R,
    _: Endian,
    _: (),
) -> BinResult<[u8; N]> {
    let mut b = [0u8; N];
    reader.read_exact(&mut b)?;
    Ok(b)
}

/// Write a byte array in one piece (`#[bw(write_with = write_bytes)]`).
pub fn write_bytes<W: Write + Seek, const N: usize>(
    b: &[u8; N],
    writer: &mut W,
    _: Endian,
    _: (),
) -> BinResult<()> {
    writer.write_all(b)?;
    Ok(())
}

/// The size and name of each structure, checked against its layout.
#[cfg(test)]
pub(crate) fn assert_layout<T: FixedStruct>(value: &T) {
    let b = value.to_bytes();
    let mut c = Cursor::new(Vec::new());
    value.write(&mut c).expect("writes");
    assert_eq!(c.into_inner().len(), T::SIZE, "{} layout", T::NAME);
    assert_eq!(b.len(), T::SIZE);
}
