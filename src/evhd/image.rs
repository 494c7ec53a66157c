//! An opened container before any key: the header copy chosen, its
//! signature judged. [`EvhdImage`] is what `info`, the keyless `check` and
//! the recipient list need; reading the disk takes an [`EvhdDisk`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fallback::{self, Assessment};
use super::header::{self, COPY_OFFSETS, Header};
use super::recipient::Stanza;
use super::signature::{self, Status};
use super::{read_copies, trusted};
use crate::disk::{Extent, VirtualDisk, check_range};
use crate::error::{Error, ErrorKind, Result};
use crate::io::{Storage, io_err};
use crate::report::{ImageInfo, Warning, WarningKind};

/// An EVHD container opened without a key (locked): its public header.
///
/// It is a [`VirtualDisk`] whose size and `info` are known; reads and the
/// allocation map fail with `KeyRequired`, writes with `ReadOnly`.
pub struct EvhdImage {
    pub(super) storage: Arc<dyn Storage>,
    pub(super) path: Option<PathBuf>,
    /// The committed header (with an unlocked disk's pending changes).
    pub(super) header: Header,
    /// Which copy (0 = A, 1 = B) holds the committed header.
    pub(super) current_copy: usize,
    pub(super) warnings: Vec<Warning>,
    /// Who signed the committed header, as this reader judges it.
    pub(super) signature: Status,
}

/// Both header copies read and the current one chosen; nothing judged yet.
pub(super) struct Candidate {
    pub(super) image: EvhdImage,
    /// The bytes of the chosen copy.
    pub(super) bytes: Vec<u8>,
    /// How the copies and the journal relate (a possible rollback).
    pub(super) assessment: Option<Assessment>,
    /// File length.
    pub(super) len: u64,
}

impl std::fmt::Debug for EvhdImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvhdImage")
            .field("path", &self.path)
            .field("size", &self.header.virtual_size)
            .finish()
    }
}

impl Candidate {
    /// Read both header copies of `storage` and choose the current one.
    pub(super) fn read(storage: Box<dyn Storage>, path: Option<PathBuf>) -> Result<Candidate> {
        let len = storage.len().map_err(io_err("EVHD file", 0))?;
        let copies = read_copies(storage.as_ref(), len);
        let assessment = fallback::assess(storage.as_ref(), &copies);
        let [a, b] = copies;
        let mut warnings = Vec::new();
        let (current_copy, header, bytes) = match (a, b) {
            (Ok((ha, ba)), Ok((hb, bb))) => {
                if hb.sequence > ha.sequence {
                    (1, hb, bb)
                } else {
                    (0, ha, ba)
                }
            }
            (Ok((h, b)), Err(e)) => {
                warnings.push(
                    Warning::new(
                        WarningKind::CopyUnusable,
                        format!("header copy B unusable ({e}); using copy A"),
                    )
                    .at(header::STRUCTURE, COPY_OFFSETS[1]),
                );
                (0, h, b)
            }
            (Err(e), Ok((h, b))) => {
                warnings.push(
                    Warning::new(
                        WarningKind::CopyUnusable,
                        format!("header copy A unusable ({e}); using copy B"),
                    )
                    .at(header::STRUCTURE, COPY_OFFSETS[0]),
                );
                (1, h, b)
            }
            (Err(ea), Err(eb)) => {
                return Err(Error::corrupt(
                    header::STRUCTURE,
                    0,
                    format!("no usable header copy: A: {ea}; B: {eb}"),
                ));
            }
        };
        Ok(Candidate {
            image: EvhdImage {
                storage: Arc::from(storage),
                path,
                header,
                current_copy,
                warnings,
                signature: Status::Unsigned,
            },
            bytes,
            assessment,
            len,
        })
    }

    /// The locked image: without the master key the MAC cannot be
    /// checked, so the signature only shows that its signer signed this
    /// MAC value.
    pub(super) fn locked(self, opts: &crate::OpenOptions) -> Result<EvhdImage> {
        let Candidate {
            mut image,
            bytes,
            assessment,
            ..
        } = self;
        let at = COPY_OFFSETS[image.current_copy];
        let status = signature::verify(&image.header, &bytes, at, &trusted(opts))?;
        image.judge(status, opts)?;
        image.note_fallback(assessment.and_then(|a| a.verdict(None, &[])), opts);
        Ok(image)
    }
}

impl EvhdImage {
    /// Open the container in `storage` without a key: `info` works, reads
    /// fail with `KeyRequired`. A writable open needs a key
    /// ([`EvhdDisk::open`](super::EvhdDisk::open)): asked for here, it is a `KeyRequired` error.
    pub fn open(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &crate::OpenOptions,
    ) -> Result<EvhdImage> {
        let c = Candidate::read(storage, path)?;
        if opts.writable {
            return Err(c.image.key_required());
        }
        c.locked(opts)
    }

    /// The committed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The recipients of the master key.
    pub fn recipients(&self) -> &[Stanza] {
        &self.header.recipients
    }

    /// Warnings from opening.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Who signed the committed header, and whether this reader trusts it.
    pub fn signature(&self) -> &Status {
        &self.signature
    }

    /// Whether a rekey was started and has not finished.
    pub fn rekey_in_progress(&self) -> bool {
        self.header.flags & header::FLAG_REKEYING != 0
    }

    /// The path the image was opened from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The error for reading without a key: names the recipients.
    pub(super) fn key_required(&self) -> Error {
        let to: Vec<String> = self
            .header
            .recipients
            .iter()
            .map(|s| format!("{} {:?}", s.key.fingerprint().short(), s.label))
            .collect();
        Error::new(
            ErrorKind::KeyRequired,
            format!(
                "this image is encrypted (EVHD) and is read with the private key of one of its recipients: {}",
                to.join(", ")
            ),
        )
        .with_hint(crate::Hint::Key)
    }

    /// Record a fall back to the older header copy among the warnings
    /// (and on stderr when `opts` asks for it).
    pub(super) fn note_fallback(
        &mut self,
        f: Option<fallback::Fallback>,
        opts: &crate::OpenOptions,
    ) {
        if let Some(f) = f {
            if opts.print_warnings {
                eprintln!("vhdkit: warning: {}: {}", self.display_name(), f.message);
            }
            let kind = if f.lost {
                WarningKind::CommitMayBeLost
            } else {
                WarningKind::CommitNotApplied
            };
            self.warnings
                .push(Warning::new(kind, f.message).in_structure(header::STRUCTURE));
        }
    }

    /// The path for messages, or "EVHD image".
    pub(super) fn display_name(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "EVHD image".to_string(), |p| p.display().to_string())
    }

    /// Refuse an image not signed by a trusted key if `opts` requires one;
    /// otherwise remember who signed (`info` and the warnings show it).
    pub(super) fn judge(&mut self, status: Status, opts: &crate::OpenOptions) -> Result<()> {
        if opts.require_signed
            && let Some(p) = status.problem()
        {
            return Err(Error::new(ErrorKind::Untrusted, p).with_hint(crate::Hint::RequireSigned));
        }
        // A writer's next commit signs with its key: refuse to vouch for
        // content nobody this writer trusts has signed, unless told to.
        if opts.writable
            && !opts.vouch
            && let Some(p) = status.problem()
        {
            return Err(Error::new(
                ErrorKind::Untrusted,
                format!(
                    "refusing to write: {p}, and the next commit would sign it with your key, vouching for content nobody you trust wrote"
                ),
            )
            .with_hint(crate::Hint::Vouch));
        }
        self.signature = status;
        Ok(())
    }
}

impl VirtualDisk for EvhdImage {
    fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    fn logical_sector_size(&self) -> u32 {
        self.header.logical_sector_size
    }

    fn physical_sector_size(&self) -> u32 {
        self.header.physical_sector_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.header.virtual_size, offset, buf.len())?;
        Err(self.key_required())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(self.header.virtual_size, offset, buf.len())?;
        Err(Error::new(
            ErrorKind::ReadOnly,
            "the image is opened read-only",
        ))
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn map(&self, _offset: u64, _length: u64) -> Result<Vec<Extent>> {
        Err(self.key_required())
    }

    fn info(&self) -> ImageInfo {
        super::info::image_info(self, None)
    }
}
