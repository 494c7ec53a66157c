//! EVHD: vhdkit's encrypted virtual disk container (format version 1, or
//! 2 for headers signed by a recipient's key: [`signature`]).
//!
//! The container holds its own sparse, encrypted copy of the virtual disk's
//! blocks. Layout of the file:
//!
//! | offset | size | region |
//! |---|---|---|
//! | 0 | 64 KiB | [`header`] copy A |
//! | 64 KiB | 64 KiB | header copy B |
//! | 128 KiB | [`journal::region_len`] | [`journal`] |
//! | table offset | 4 KiB per page | block [`table`] |
//! | data offset (1 MiB aligned) | block size per slot | data slots |
//!
//! The on-disk structures are declared with binrw in [`header`],
//! [`recipient`], [`journal`] and [`table`]. A container opens as one of two
//! types: an [`EvhdImage`] (locked: what needs no key, for `info`, keyless
//! `check` and the recipient list) or an [`EvhdDisk`] (unlocked with a
//! recipient's key: a [`VirtualDisk`] that reads
//! and writes). [`open`] gives the one the options allow.
//!
//! The code by responsibility: choosing the header copy and the locked
//! image in `image`, unlocking in `open`, creating in `create`, the
//! unlocked disk and its commits in `disk`, the parallel crypto engine in
//! `engine`, the key lifecycle (recipients, `sign`, `rekey`) in `rekey`,
//! `info` in `info`, resizing in `resize` and compacting in `compact`. Keys are in [`keys`] (RSA key files) and [`cipher`]
//! (the symmetric key hierarchy); header signatures in [`signature`];
//! `check` in [`check`]; a fall back to the older header copy that nothing
//! confirms in [`fallback`]. The byte layout is described in
//! `docs/evhd-format.md`.

pub mod check;
pub mod cipher;
mod compact;
mod create;
mod disk;
mod engine;
pub mod fallback;
#[cfg(test)]
mod golden;
pub mod header;
mod image;
mod info;
pub mod journal;
pub mod keys;
mod open;
mod origin;
pub mod recipient;
mod rekey;
pub mod resize;
pub mod signature;
pub mod table;

use std::path::PathBuf;
use std::sync::Arc;

use crate::disk::VirtualDisk;
use crate::error::{Error, ErrorKind, Result};
use crate::io::{Storage, read_struct};
use header::{COPY_OFFSETS, HEADER_SIZE, Header};
use keys::{Fingerprint, PrivateKey};
use signature::Status;

pub use create::{EvhdBuilder, EvhdOptions};
pub use disk::EvhdDisk;
pub use image::EvhdImage;

/// File offset of the journal: right after the two header copies.
pub const JOURNAL_OFFSET: u64 = 2 * HEADER_SIZE as u64;
/// Alignment of the data area, so slots line up with large device blocks.
pub const DATA_ALIGN: u64 = 1 << 20;
/// Default block shift: 64 KiB blocks.
pub const DEFAULT_BLOCK_SHIFT: u8 = 16;
/// Block writes per key epoch before a new data key is started: random
/// 96-bit nonces under one AES-GCM key are safe for about 2^32 messages
/// (NIST SP 800-38D 8.3).
pub const EPOCH_WRITE_LIMIT: u64 = 1 << 32;
/// Blocks re-encrypted between two commits of a rekey (64 MiB at the
/// default block size): bounds the work a crash can lose.
pub const REKEY_BATCH: usize = 1024;
/// Structure names in errors.
const DATA: &str = "EVHD data block";
const TABLE: &str = table::STRUCTURE;

/// Open the container in `storage`: unlocked ([`EvhdDisk`]) when `opts`
/// has keys, else locked ([`EvhdImage`]: `info` works, reads fail with
/// `KeyRequired`). A writable open needs a key.
pub fn open(
    storage: Box<dyn Storage>,
    path: Option<PathBuf>,
    opts: &crate::OpenOptions,
) -> Result<Box<dyn VirtualDisk>> {
    if opts.keys.is_empty() {
        EvhdImage::open(storage, path, opts).map(|d| Box::new(d) as _)
    } else {
        EvhdDisk::open(storage, path, opts).map(|d| Box::new(d) as _)
    }
}

/// Opening a container as one type or the other, for code that takes
/// either ([`EvhdImage::open`], [`EvhdDisk::open`]).
pub trait Open: Sized {
    /// Open the container in `storage` (see the type's `open`).
    fn open(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &crate::OpenOptions,
    ) -> Result<Self>;
}

impl Open for EvhdImage {
    fn open(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &crate::OpenOptions,
    ) -> Result<Self> {
        EvhdImage::open(storage, path, opts)
    }
}

impl Open for EvhdDisk {
    fn open(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &crate::OpenOptions,
    ) -> Result<Self> {
        EvhdDisk::open(storage, path, opts)
    }
}

/// The error for keys none of which is a recipient.
fn no_recipient(keys: &[Arc<PrivateKey>], header: &Header) -> Error {
    let tried: Vec<String> = keys.iter().map(|k| k.fingerprint().short()).collect();
    let to: Vec<String> = header
        .recipients
        .iter()
        .map(|s| format!("{} {:?}", s.key.fingerprint().short(), s.label))
        .collect();
    Error::new(
        ErrorKind::KeyMismatch,
        format!(
            "no recipient for key {}; this image is addressed to {}",
            tried.join(", "),
            to.join(", ")
        ),
    )
}

/// Read both header copies: each decoded or the reason it is unusable.
pub(crate) fn read_copies(storage: &dyn Storage, len: u64) -> [Result<(Header, Vec<u8>)>; 2] {
    COPY_OFFSETS.map(|o| {
        let mut b = vec![0u8; HEADER_SIZE];
        read_struct(storage, header::STRUCTURE, &mut b, o)?;
        Header::decode(&b, o, len).map(|h| (h, b))
    })
}

/// The fingerprints a reader trusts: its keys and its `--trust` keys.
fn trusted(opts: &crate::OpenOptions) -> Vec<Fingerprint> {
    opts.keys
        .iter()
        .map(|k| k.fingerprint())
        .chain(opts.trust.iter().map(|k| k.fingerprint()))
        .collect()
}

/// The status of a header this process just signed with its own key.
fn signed_by_self(h: &Header, rec: &header::SignerRecord) -> Status {
    Status::Signed {
        fingerprint: rec.fingerprint,
        label: h
            .recipients
            .iter()
            .find(|s| s.key.fingerprint() == rec.fingerprint)
            .map(|s| s.label.clone())
            .unwrap_or_default(),
        trusted: true,
    }
}
