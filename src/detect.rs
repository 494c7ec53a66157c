//! Format detection that fails closed.
//!
//! A file is raw only when it carries no trace at all of VHD, VHDX or EVHD.
//! Each format leaves signatures at fixed offsets; a file with any of them is
//! taken for that format, and if it then does not open as that format it is
//! reported as a damaged image of it, never read as a flat disk (which would
//! hand out ciphertext, hide damage from `check` and let a write land
//! plaintext or raw bytes inside a container). `-f raw` is the only way to
//! read such a file as raw.
//!
//! The signatures are tried in two rounds, the primary ones first (the
//! signatures the formats' own probes accept, in the order VHDX, EVHD, VHD),
//! then the secondary ones that survive when the primary ones are damaged:
//!
//! | format | primary | secondary |
//! |---|---|---|
//! | VHDX | `vhdxfile` at 0 | `head` at 64/128 KiB (with version 1), `regi` at 192/256 KiB (with at most 2047 entries and a zero reserved field), `loge` at 1 MiB (with a length in whole 4 KiB sectors and a zero reserved field), `metadata` at 2 MiB (with zero reserved fields and at most 2047 entries) |
//! | EVHD | `EVHDCRPT` at 0 or 64 KiB | `EVHDJRNL` at 128 KiB; `EVHDCRPT` at 132 KiB (the header copy inside the journal record); a header copy at 0 or 64 KiB with a damaged magic but version 1 or 2, journal offset 128 KiB, a journal length in whole MiB, the table after the journal, the data in whole MiB after the table and a zero reserved field; a journal record at 128 KiB with a damaged magic but version 1, a record length matching its page count and a zero reserved area |
//! | VHD | `conectix` at EOF-512 (or EOF-511), or at 0 in a dynamic or differencing footer | `conectix` at 0, `cxsparse` at 512, a footer at EOF-512 or EOF-511 with version 1.0 and a disk type |
//!
//! A raw disk rarely holds one of these 8-byte strings (or 4-byte ones with
//! a plausible field beside them) at exactly one of these offsets; the only common case is a raw disk whose content is
//! itself an image file (a disk dumped with `dd` that holds a VHD at sector
//! 0), which then is taken for that image unless `-f raw` is given.
//!
//! That case is also an attack when someone else controls the disk's
//! content (a VM guest): by writing a signature the guest would turn its raw
//! disk into, say, a differencing VHD whose parent is another image, which
//! the next open without `-f raw` would read. So a raw disk whose format
//! was detected refuses writes after which detection would find another
//! format ([`guard_probed_raw`], as qemu does for probed raw images).

mod traces;

use crate::error::{Error, ErrorKind};
use crate::io::Storage;
use crate::report::Format;

pub use traces::{DETECTION_HEAD_END, DETECTION_TAIL_LEN};
use traces::{primary, secondary};

/// A recognised signature of a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    /// The format the signature belongs to.
    pub format: Format,
    /// What was found, for messages (e.g. "VHDX region table signature").
    pub what: &'static str,
    /// Byte offset of the signature in the file.
    pub offset: u64,
}

impl std::fmt::Display for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at offset {:#x}", self.what, self.offset)
    }
}

/// The name of a format as people write it ("VHDX", "raw").
pub fn format_name(format: Format) -> &'static str {
    match format {
        Format::Raw => "raw",
        Format::Vhd => "VHD",
        Format::Vhdx => "VHDX",
        Format::Evhd => "EVHD",
    }
}

/// "a" or "an" before the format's name.
fn article(format: Format) -> &'static str {
    if format == Format::Evhd { "an" } else { "a" }
}

/// The signature that decides the format: the primary one if any, else the
/// first secondary one; `None` for a raw file.
pub fn trace(storage: &dyn Storage) -> Option<Trace> {
    primary(storage)
        .into_iter()
        .next()
        .or_else(|| secondary(storage).into_iter().next())
}

/// A signature of `format` in `storage`, if it has one.
pub fn trace_of(storage: &dyn Storage, format: Format) -> Option<Trace> {
    primary(storage)
        .into_iter()
        .chain(secondary(storage))
        .find(|t| t.format == format)
}

/// The format to open `storage` as: `forced` if given (an error naming what
/// the file holds when it has no trace of that format), else the detected one.
pub fn resolve(storage: &dyn Storage, forced: Option<Format>) -> Result<Format, Error> {
    resolve_traced(storage, forced).map(|(format, _)| format)
}

/// [`resolve`], with the trace that decided when the format was detected
/// (`None` when `forced`, or for a raw file).
pub fn resolve_traced(
    storage: &dyn Storage,
    forced: Option<Format>,
) -> Result<(Format, Option<Trace>), Error> {
    let Some(want) = forced else {
        let t = trace(storage);
        return Ok((t.map_or(Format::Raw, |t| t.format), t));
    };
    if want == Format::Raw || trace_of(storage, want).is_some() {
        return Ok((want, None));
    }
    let t = trace(storage);
    let found = match &t {
        Some(t) => format!(
            "found {} {} ({} {} image)",
            article(t.format),
            t,
            article(t.format),
            format_name(t.format)
        ),
        None => "found no signature of VHD, VHDX or EVHD".to_string(),
    };
    let e = Error::new(
        ErrorKind::InvalidArgument,
        format!("not {} {} image: {found}", article(want), format_name(want)),
    );
    // A file with no signature at all may be a raw disk.
    Err(match t {
        None => e.with_hint(crate::Hint::ReadAsRaw),
        Some(_) => e,
    })
}

/// Whether writing `len` bytes at `offset` of a file of `file_len` bytes
/// can change what detection finds: the write touches the first
/// [`DETECTION_HEAD_END`] bytes or the last [`DETECTION_TAIL_LEN`].
pub fn write_may_affect(offset: u64, len: usize, file_len: u64) -> bool {
    if len == 0 {
        return false;
    }
    let end = offset.saturating_add(len as u64);
    offset < DETECTION_HEAD_END || end > file_len.saturating_sub(DETECTION_TAIL_LEN)
}

/// A read-only view of a storage as it would be after writing `data` at
/// `offset`, for detection to look at before the write happens.
struct Overlay<'a> {
    base: &'a dyn Storage,
    data: &'a [u8],
    offset: u64,
}

impl Storage for Overlay<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.base.read_at(buf, offset)?;
        let end = offset.saturating_add(buf.len() as u64);
        let data_end = self.offset.saturating_add(self.data.len() as u64);
        let from = offset.max(self.offset);
        let to = end.min(data_end);
        if from < to {
            // Both differences fit in usize: they are within `buf` and `data`.
            let (b, d, n) = (
                (from - offset) as usize,
                (from - self.offset) as usize,
                (to - from) as usize,
            );
            buf[b..b + n].copy_from_slice(&self.data[d..d + n]);
        }
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }

    fn len(&self) -> std::io::Result<u64> {
        self.base.len()
    }

    fn set_len(&self, _len: u64) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn is_writable(&self) -> bool {
        false
    }
}

/// The signature detection would find in `storage` after writing `data` at
/// `offset` (which must not change the file's length), or `None` when the
/// file would still be raw. Costs nothing for a write detection does not
/// look at (see [`write_may_affect`]).
pub fn trace_after_write(storage: &dyn Storage, data: &[u8], offset: u64) -> Option<Trace> {
    let len = storage.len().ok()?;
    if !write_may_affect(offset, data.len(), len) {
        return None;
    }
    trace(&Overlay {
        base: storage,
        data,
        offset,
    })
}

/// Refuse writing `data` at `offset` of a raw image whose format was
/// detected when the write would make detection find another format
/// (qemu's guard against CVE-2008-2004): a guest that controls a raw disk's
/// content could otherwise turn it into, say, a differencing VHD whose
/// parent is another image, and read that image through the next open.
pub fn guard_probed_raw(storage: &dyn Storage, data: &[u8], offset: u64) -> Result<(), Error> {
    match trace_after_write(storage, data, offset) {
        None => Ok(()),
        Some(t) => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "refusing to write: this data would make the raw image look like {} {} image ({t}); \
                 a disk whose content others control must be opened",
                article(t.format),
                format_name(t.format)
            ),
        )
        .with_hint(crate::Hint::OpenAsRaw)),
    }
}

/// How the note of [`damaged_detected`] begins.
const DETECTED_NOTE: &str = " (detected as ";

/// [`damaged`], and when the format was detected from `decided` (not
/// stated), a note naming that signature and the hint that it may be raw.
pub fn damaged_detected(format: Format, decided: Option<Trace>, e: Error) -> Error {
    let e = damaged(format, e);
    match decided {
        // An error from deeper in a parent chain may carry its own file's
        // note already; one note per message.
        Some(t)
            if e.context().is_some()
                && t.format == format
                && !e.to_string().contains(DETECTED_NOTE) =>
        {
            e.with_note(&format!(
                "{DETECTED_NOTE}{} from its {t})",
                format_name(format)
            ))
            .or_hint(crate::Hint::MaybeRaw)
        }
        _ => e,
    }
}

/// An error from opening an image whose signature says `format`: damage
/// (a corrupt structure, a MAC that does not verify) is reported as a damaged
/// image of that format; other errors (a key or parent needed, an
/// unsupported feature, I/O) pass unchanged.
pub fn damaged(format: Format, e: Error) -> Error {
    match e.kind() {
        ErrorKind::Corrupt | ErrorKind::Authentication => match format {
            Format::Vhd => e.with_context("damaged VHD image"),
            Format::Vhdx => e.with_context("damaged VHDX image"),
            Format::Evhd => e.with_context("damaged EVHD image"),
            Format::Raw => e,
        },
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemStorage;

    /// 4 MiB of non-zero filler with `magic` at `offset` (from the end when
    /// negative).
    pub(super) fn file_with(offset: i64, magic: &[u8]) -> MemStorage {
        let mut v = vec![0x5au8; 4 << 20];
        let at = if offset < 0 {
            v.len() - offset.unsigned_abs() as usize
        } else {
            offset as usize
        };
        v[at..at + magic.len()].copy_from_slice(magic);
        MemStorage::from_vec(v)
    }

    #[test]
    fn a_forced_format_needs_a_signature_of_it() {
        let raw = MemStorage::from_vec(vec![0u8; 1 << 20]);
        assert_eq!(crate::detect(&raw), Format::Raw);
        let e = resolve(&raw, Some(Format::Vhdx)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.to_string()
                .contains("not a VHDX image: found no signature")
        );
        let s = file_with(128 << 10, b"EVHDJRNL");
        let e = resolve(&s, Some(Format::Vhd)).unwrap_err();
        assert!(
            e.to_string()
                .contains("not a VHD image: found an EVHD journal record magic at offset 0x20000 (an EVHD image)"),
            "{e}"
        );
        // Primary beats secondary; the forced format picks its own trace.
        let mut v = vec![0u8; 4 << 20];
        v[..8].copy_from_slice(b"vhdxfile");
        let end = v.len() - 512;
        v[end..end + 8].copy_from_slice(b"conectix");
        let s = MemStorage::from_vec(v);
        assert_eq!(crate::detect(&s), Format::Vhdx);
        assert_eq!(resolve(&s, Some(Format::Vhd)).unwrap(), Format::Vhd);
    }

    #[test]
    fn writes_that_would_give_a_raw_file_a_signature_are_found() {
        let len = 4u64 << 20;
        let s = MemStorage::from_vec(vec![0u8; len as usize]);
        // Outside the windows: nothing to look at.
        assert!(!write_may_affect(DETECTION_HEAD_END, 8, len));
        assert!(!write_may_affect(len - DETECTION_TAIL_LEN - 8, 8, len));
        assert!(write_may_affect(DETECTION_HEAD_END - 1, 8, len));
        assert!(write_may_affect(len - DETECTION_TAIL_LEN - 7, 8, len));
        assert!(!write_may_affect(0, 0, len));
        assert!(trace_after_write(&s, b"vhdxfile", 3 << 20).is_none());
        let t = trace_after_write(&s, b"EVHDJRNL", 128 << 10).unwrap();
        assert_eq!((t.format, t.offset), (Format::Evhd, 128 << 10));
        let t = trace_after_write(&s, b"conectix", len - 512).unwrap();
        assert_eq!((t.format, t.offset), (Format::Vhd, len - 512));
        // A write that completes a signature with what the file holds.
        let mut v = vec![0u8; len as usize];
        v[..4].copy_from_slice(b"vhdx");
        let s2 = MemStorage::from_vec(v);
        assert_eq!(
            trace_after_write(&s2, b"file", 4).unwrap().format,
            Format::Vhdx
        );
        assert!(trace_after_write(&s2, b"fil", 4).is_none());
        let e = guard_probed_raw(&s, b"vhdxfile", 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.to_string().contains(
                "this data would make the raw image look like a VHDX image (VHDX file identifier at offset 0x0)"
            ),
            "{e}"
        );
        assert!(guard_probed_raw(&s, &[0x5a; 4096], 0).is_ok());
        // The overlay leaves the storage unchanged.
        assert_eq!(crate::detect(&s), Format::Raw);
    }

    #[test]
    fn damage_is_named_by_format_other_errors_pass() {
        let e = damaged(Format::Vhdx, Error::corrupt("VHDX header", 0x10000, "bad"));
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(e.structure(), Some("VHDX header"));
        assert_eq!(
            e.to_string(),
            "damaged VHDX image: VHDX header at offset 0x10000: bad"
        );
        let e = damaged(Format::Evhd, Error::new(ErrorKind::KeyRequired, "key"));
        assert_eq!(e.to_string(), "key");
        let e = damaged(Format::Raw, Error::corrupt("x", 0, "y"));
        assert!(e.context().is_none());
    }
}
