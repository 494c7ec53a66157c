//! The one error type of the library.
//!
//! Every error carries a stable [`ErrorKind`] that callers can match on, and
//! context for people: the file, the on-disk structure, the byte offset and
//! what was expected against what was found.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, stable across releases (new kinds may be added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operating system refused an I/O operation.
    Io,
    /// The file is damaged or is not what its signature claims.
    Corrupt,
    /// The file uses a feature or value this library does not implement.
    Unsupported,
    /// A differencing image's parent could not be found.
    ParentMissing,
    /// A parent was found but its identity does not match the child's record.
    ParentMismatch,
    /// The caller passed an invalid argument (size, offset, option).
    InvalidArgument,
    /// A write was attempted on an image opened read-only.
    ReadOnly,
    /// A write was refused because the image is damaged and must be repaired first.
    NeedsRepair,
    /// A read or write went past the end of the virtual disk.
    OutOfBounds,
    /// An encrypted image was opened without a key; only public fields can be read.
    KeyRequired,
    /// None of the given keys is a recipient of the encrypted image.
    KeyMismatch,
    /// A key file is malformed or its components are inconsistent.
    InvalidKey,
    /// A MAC or authentication tag did not verify: tampering, damage or a wrong key.
    Authentication,
    /// The image is locked by another program (or another open in this one)
    /// that is using it: a writer beside anything, or a reader beside a writer.
    InUse,
    /// An encrypted image is not signed, or not by a trusted key, and the
    /// caller requires a trusted signature.
    Untrusted,
}

impl ErrorKind {
    /// Short lowercase name, used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::ParentMissing => "parent-missing",
            ErrorKind::ParentMismatch => "parent-mismatch",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::NeedsRepair => "needs-repair",
            ErrorKind::OutOfBounds => "out-of-bounds",
            ErrorKind::KeyRequired => "key-required",
            ErrorKind::KeyMismatch => "key-mismatch",
            ErrorKind::InvalidKey => "invalid-key",
            ErrorKind::Authentication => "authentication",
            ErrorKind::InUse => "in-use",
            ErrorKind::Untrusted => "untrusted",
        }
    }
}

/// What a caller can do about an error, for a front end to say in its own
/// terms (the command-line tool names its options). The library's messages
/// never name an option of a particular front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Hint {
    /// A parent that is not the recorded one can be read anyway
    /// ([`crate::OpenOptions::ignore_parent_id`]).
    IgnoreParentId,
    /// The output file exists and may be replaced if the caller says so.
    ReplaceOutput,
    /// The key file exists and may be replaced if the caller says so.
    ReplaceKeyFile,
    /// The image was refused because a trusted signature was required
    /// ([`crate::OpenOptions::require_signed`]).
    RequireSigned,
    /// A trusted signature was required, and only an EVHD can carry one.
    RequireSignedNeedsEvhd,
    /// An EVHD needs the public key of at least one recipient.
    Recipient,
    /// The private key of a remaining recipient is needed.
    RecipientKey,
    /// The file is raw data, readable by stating the raw format.
    ReadAsRaw,
    /// Data whose content others control must be opened by stating the raw
    /// format, so that it is never taken for another format.
    OpenAsRaw,
    /// The image must be repaired (`check` with repair) before it is written.
    Repair,
    /// The image is in use or cannot be locked: opening it read-only
    /// without taking or honouring locks would read it (what is read may
    /// be inconsistent).
    ForceShare,
    /// An encrypted image is read with the private key of one of its
    /// recipients ([`crate::OpenOptions::keys`]).
    Key,
    /// An encrypted image opens to an older state than its newest commit:
    /// inspecting it, then signing it, accepts the state it opens to.
    AcceptOlderState,
    /// Writing an encrypted image would vouch for content nobody trusted
    /// signed: checking the content, then signing it, vouches for it; or
    /// the signer's public key can be trusted.
    Vouch,
    /// Every epoch key record of an encrypted image is in use: rekeying
    /// the image frees them.
    Rekey,
    /// Bytes being read are missing from a damaged image: checking it lists
    /// all the damage, and reading with salvage reads missing bytes as
    /// zeros.
    Salvage,
    /// The format was detected from a signature that raw data can hold by
    /// chance: stating the raw format reads the file as raw data.
    MaybeRaw,
    /// An encrypted image is not signed: signing it vouches for its
    /// content; requiring a trusted signature refuses it.
    Sign,
    /// An encrypted image is signed by a key the reader does not trust:
    /// trusting the signer's public key accepts it; requiring a trusted
    /// signature refuses it.
    Trust,
    /// The destination is a block device that an in-place write (rather
    /// than replacing the file) writes the image's content onto.
    WriteOntoDevice,
    /// The destination is a symbolic link to a file or block device that an
    /// in-place write writes the image's content into.
    WriteThroughLink,
    /// The destination is a FIFO that the raw content can be streamed
    /// into through standard output.
    StreamToStdout,
    /// An in-place write was asked for but the target does not exist: an
    /// image file is created by an ordinary (not in-place) write.
    CreateImageFile,
    /// A resize to a smaller size must be allowed explicitly
    /// ([`crate::resize::resize`]'s `shrink`).
    Shrink,
    /// A shrink can go down to the disk's minimum size
    /// ([`crate::resize::Target::Minimum`]).
    ToMinimum,
    /// A merge would leave images it cannot remove: keeping the merged
    /// images ([`crate::merge::MergeOptions::keep`]) lets it go ahead.
    KeepMerged,
    /// An operation was refused because it would break other images
    /// (named in the message); forcing it goes ahead anyway.
    Force,
    /// A differencing image whose parent no longer has the recorded
    /// identity (it was changed or resized elsewhere) cannot be rebased,
    /// which reads the old chain; when that parent's content is still
    /// what the child was made over, `set-parent` taking its identity
    /// ([`crate::reparent::SetParentOptions::ignore_id`]) links them again.
    SetParentIgnoreId,
}

/// An error with its context.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    hint: Option<Hint>,
    path: Option<PathBuf>,
    /// What the error means for the image as a whole, printed before the
    /// structure (e.g. "damaged VHDX image").
    context: Option<&'static str>,
    structure: Option<&'static str>,
    offset: Option<u64>,
    message: String,
    source: Option<io::Error>,
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message and no further context.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            hint: None,
            path: None,
            context: None,
            structure: None,
            offset: None,
            message: message.into(),
            source: None,
        }
    }

    /// Damage in `structure` at byte `offset` of the file.
    pub fn corrupt(structure: &'static str, offset: u64, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Corrupt, message).at(structure, offset)
    }

    /// An unsupported feature in `structure` at byte `offset` of the file.
    pub fn unsupported(structure: &'static str, offset: u64, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, message).at(structure, offset)
    }

    /// A bad argument from the caller.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// An I/O failure while accessing `what`.
    pub fn io(err: io::Error, what: impl Into<String>) -> Self {
        let mut e = Error::new(ErrorKind::Io, what);
        e.source = Some(err);
        e
    }

    /// Say what the caller can do about the error.
    pub fn with_hint(mut self, hint: Hint) -> Self {
        self.hint = Some(hint);
        self
    }

    /// [`Error::with_hint`], unless a hint is already given (the innermost
    /// one is the most specific).
    pub fn or_hint(mut self, hint: Hint) -> Self {
        self.hint.get_or_insert(hint);
        self
    }

    /// What the caller can do about the error, if the library knows.
    pub fn hint(&self) -> Option<Hint> {
        self.hint
    }

    /// Attach the structure name and file offset where the problem lies.
    pub fn at(mut self, structure: &'static str, offset: u64) -> Self {
        self.structure = Some(structure);
        self.offset = Some(offset);
        self
    }

    /// Attach the path of the file concerned, unless one is already set
    /// (the innermost file, e.g. a parent, is the most useful one).
    pub fn with_path(mut self, path: &Path) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_path_buf());
        }
        self
    }

    /// Say what the error means for the image as a whole, unless that is
    /// already said (the innermost image, e.g. a parent, is the one meant).
    pub fn with_context(mut self, context: &'static str) -> Self {
        if self.context.is_none() {
            self.context = Some(context);
        }
        self
    }

    /// What the error means for the image as a whole, if said.
    pub fn context(&self) -> Option<&'static str> {
        self.context
    }

    /// Append `note` to the message (e.g. what an error means for the
    /// file; a front end appends its own wording of [`Error::hint`] too).
    pub fn with_note(mut self, note: &str) -> Self {
        self.message.push_str(note);
        self
    }

    /// Name the output `dest` instead of the temporary file `tmp` it is
    /// written through (people know only `dest`), and say so when `dest`'s
    /// directory does not exist, the usual reason its file cannot be made.
    pub fn for_output(mut self, tmp: &Path, dest: &Path) -> Self {
        if self.path.as_deref() == Some(tmp) {
            self.path = Some(dest.to_path_buf());
        }
        if self.path.is_none() {
            self.path = Some(dest.to_path_buf());
        }
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if self.kind == ErrorKind::Io && !dir.is_dir() {
            let why = if dir.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            self.message = format!(
                "cannot create the file: the directory {} {why}",
                dir.display()
            );
            self.source = None;
        }
        self
    }

    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file the error concerns, if known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The on-disk structure involved, if any.
    pub fn structure(&self) -> Option<&'static str> {
        self.structure
    }

    /// The byte offset in the file, if known.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The message without the context prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.path {
            write!(f, "{}: ", p.display())?;
        }
        if let Some(c) = &self.context {
            write!(f, "{c}: ")?;
        }
        match (self.structure, self.offset) {
            (Some(s), Some(o)) => write!(f, "{s} at offset {o:#x}: ")?,
            (Some(s), None) => write!(f, "{s}: ")?,
            _ => {}
        }
        f.write_str(&self.message)?;
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::io(err, "I/O error")
    }
}
