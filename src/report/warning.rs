//! Problems found while opening an image that did not stop it opening.

use std::fmt;

use serde::Serialize;

/// What a [`Warning`] is about, stable for callers to match on (new kinds
/// may be added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WarningKind {
    /// A header, footer or table copy has a bad checksum or signature, or
    /// is missing or unusable; another copy is used (VHD footer and its
    /// copy, VHDX header and region table, EVHD header copies).
    CopyUnusable,
    /// A copy is readable but differs from the one in use (VHD footer copy).
    CopyDiffers,
    /// A structure in use has a bad checksum (VHD dynamic header, or a VHD
    /// footer used because nothing better exists).
    Checksum,
    /// The file ends before the data the disk describes.
    Truncated,
    /// Blocks (a run of consecutive ones per warning) reach past the end
    /// of the file's data: what lies past it cannot be read.
    BlockPastEof,
    /// Blocks overlap the metadata or each other.
    Overlap,
    /// Block allocation table entries with states the format does not
    /// define: their blocks cannot be read.
    InvalidBlockState,
    /// An EVHD block table page failed verification: its blocks cannot be read.
    UnreadableTablePage,
    /// An unfinished EVHD commit found in the journal was applied in memory.
    JournalInMemory,
    /// An EVHD fell back to its older header copy and nothing confirms it:
    /// the newest commit may have been lost (rolled back).
    CommitMayBeLost,
    /// An EVHD holds an unfinished commit addressed to other keys (an
    /// interrupted recipient change); it was not applied.
    CommitNotApplied,
    /// An EVHD is not signed.
    Unsigned,
    /// An EVHD is signed by a key the reader does not trust.
    UntrustedSigner,
    /// A parent (or a parent's parent) is not the one the child records,
    /// and reading the child's data is refused.
    ParentMismatchRefused,
    /// A parent (or a parent's parent) is not the one the child records,
    /// and the child is read anyway, as the caller asked.
    ParentMismatchIgnored,
}

impl WarningKind {
    /// Whether the warning says a parent up the chain is not the recorded one.
    pub fn is_parent_mismatch(self) -> bool {
        matches!(
            self,
            WarningKind::ParentMismatchRefused | WarningKind::ParentMismatchIgnored
        )
    }
}

/// A problem found while opening an image that did not stop it opening
/// (damage the reader worked around, an untrusted signature, a parent that
/// is not the recorded one). A VHD or VHDX with warnings about its own
/// structures refuses writes until it is repaired.
///
/// Serializes as its message, the form `info --json` has always had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// What the warning is about.
    pub kind: WarningKind,
    /// The on-disk structure concerned, if one is.
    pub structure: Option<&'static str>,
    /// Byte offset in the file, if known.
    pub offset: Option<u64>,
    /// The warning for people, with the values found.
    pub message: String,
}

impl Warning {
    /// A warning of `kind` about no particular structure.
    pub fn new(kind: WarningKind, message: impl Into<String>) -> Self {
        Warning {
            kind,
            structure: None,
            offset: None,
            message: message.into(),
        }
    }

    /// Name the structure concerned and its byte offset in the file.
    pub fn at(mut self, structure: &'static str, offset: u64) -> Self {
        self.structure = Some(structure);
        self.offset = Some(offset);
        self
    }

    /// Name the structure concerned, its offset being unknown or many.
    pub fn in_structure(mut self, structure: &'static str) -> Self {
        self.structure = Some(structure);
        self
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Serialize for Warning {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.message)
    }
}
