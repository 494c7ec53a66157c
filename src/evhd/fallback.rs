//! Detecting a fall back to the older header copy that nothing confirms
//! (a possible rollback of the newest commit).
//!
//! A commit writes the journal record (holding the new header), the table
//! pages, then the new header over the non-current copy. So in every state
//! a healthy image can be in (fresh: both copies sequence 1; settled: the
//! copies hold sequences S and S-1; a crash at any storage operation of a
//! commit or of the installation of a journal record) the following holds:
//! when a header copy is unusable (a torn header write), the journal holds
//! a complete record of the other copy's sequence + 1 (the commit being
//! installed), and two usable copies hold consecutive sequences (or both
//! 1). The journal itself may be torn only while both copies are usable.
//!
//! Damage that breaks this (one byte of the current copy and one of the
//! journal magic suffice) would otherwise let open use the older copy
//! silently: the newest commit (a removed recipient, a rekey, a header
//! change) would be undone. `assess` finds these states without a key:
//! the used copy is *confirmed* when the journal holds a complete record
//! of its sequence with the same header bytes (it is the newest commit) or
//! of its sequence + 1 whose header decodes (the unfinished commit that
//! open replays). With a key, `Assessment::verdict` also requires that
//! such a record was actually replayed.

use super::header::{self, COPY_OFFSETS, Header};
use super::journal;
use crate::error::{ErrorKind, Result};
use crate::io::{Storage, read_struct};

/// Offset of the sequence field in a header copy.
const SEQUENCE_OFFSET: u64 = 16;

/// How the warning about an unconfirmed fall back to the older header copy
/// begins (callers that must refuse such an image look for it).
pub const FELL_BACK: &str = "fell back to the older header copy";

/// What the journal says about the used copy.
enum Journal {
    /// A record of the used copy's sequence with the same header bytes.
    Same,
    /// A record of the used copy's sequence + 1 whose header decodes: the
    /// commit open replays (its header bytes).
    Pending(Vec<u8>),
    /// Nothing confirming, and why.
    Unconfirmed(String),
}

/// The relation between the two header copies and the journal.
pub(crate) struct Assessment {
    /// Which copy open uses (0 = A, 1 = B) and its sequence.
    used: usize,
    used_sequence: u64,
    /// Why the pair of copies is not one a healthy image has (`None`: it is).
    suspicion: Option<String>,
    /// Only looked at when the pair is suspicious.
    journal: Journal,
    journal_offset: u64,
}

fn copy_name(i: usize) -> String {
    format!(
        "header copy {} at {:#x}",
        if i == 0 { "A" } else { "B" },
        COPY_OFFSETS[i]
    )
}

/// Assess the copies as read by `read_copies` (`None` when neither is
/// usable: open fails anyway). Reads the journal only when the copies are
/// not a pair a healthy image has.
pub(crate) fn assess(
    storage: &dyn Storage,
    copies: &[Result<(Header, Vec<u8>)>; 2],
) -> Option<Assessment> {
    let (used, other) = match copies {
        [Ok((a, _)), Ok((b, _))] => {
            if b.sequence > a.sequence {
                (1, 0)
            } else {
                (0, 1)
            }
        }
        [Ok(_), Err(_)] => (0, 1),
        [Err(_), Ok(_)] => (1, 0),
        [Err(_), Err(_)] => return None,
    };
    let Ok((h, bytes)) = &copies[used] else {
        return None;
    };
    // The sequence field of an unusable copy, where it can be read.
    let mut other_field = None;
    let suspicion = match &copies[other] {
        Err(e) => {
            let mut seq = [0u8; 8];
            other_field = read_struct(
                storage,
                header::STRUCTURE,
                &mut seq,
                COPY_OFFSETS[other] + SEQUENCE_OFFSET,
            )
            .ok()
            .map(|()| u64::from_le_bytes(seq));
            let field = other_field
                .map(|s| format!("; its sequence field reads {s}"))
                .unwrap_or_default();
            Some(format!(
                "{} is unusable ({}{field})",
                copy_name(other),
                e.message()
            ))
        }
        Ok((o, _)) => {
            let consecutive = o.sequence.checked_add(1) == Some(h.sequence)
                || (h.sequence == 1 && o.sequence == 1);
            (!consecutive).then(|| {
                format!(
                    "{} holds sequence {}, which is not the sequence before it",
                    copy_name(other),
                    o.sequence
                )
            })
        }
    };
    let journal = match suspicion {
        None => Journal::Same,
        Some(_) => match journal_state(storage, h, bytes) {
            // A torn header write always leaves the record of the commit it
            // belonged to (the used copy's sequence + 1). A record of the
            // used copy itself does not confirm it when the unusable copy
            // still reads a later sequence: the record may have been
            // rewritten to match the older copy (it has only a CRC).
            Journal::Same if other_field.is_some_and(|s| s > h.sequence) => {
                Journal::Unconfirmed(format!(
                    "holds a record of sequence {} only, while {} reads a later sequence",
                    h.sequence,
                    copy_name(other)
                ))
            }
            j => j,
        },
    };
    Some(Assessment {
        used,
        used_sequence: h.sequence,
        suspicion,
        journal,
        journal_offset: h.journal_offset,
    })
}

fn journal_state(storage: &dyn Storage, h: &Header, bytes: &[u8]) -> Journal {
    let file_len = match storage.len() {
        Ok(l) => l,
        Err(e) => return Journal::Unconfirmed(format!("cannot be read ({e})")),
    };
    let rec = journal::decode(
        h.journal_offset,
        h.journal_len,
        &h.container_id,
        h.table_pages,
        |buf, o| read_struct(storage, journal::STRUCTURE, buf, h.journal_offset + o),
    );
    match rec {
        Err(e) => Journal::Unconfirmed(format!("holds a damaged record ({})", e.message())),
        Ok(None) => Journal::Unconfirmed("holds no complete record".into()),
        Ok(Some(r)) if r.sequence == h.sequence && r.header == bytes => Journal::Same,
        Ok(Some(r)) if Some(r.sequence) == h.sequence.checked_add(1) => {
            let at = h.journal_offset + journal::RECORD_HEADER as u64;
            match Header::decode(&r.header, at, file_len) {
                Ok(j) if j.sequence == r.sequence && j.container_id == h.container_id => {
                    Journal::Pending(r.header)
                }
                Ok(_) => Journal::Unconfirmed(format!(
                    "holds a record of sequence {} whose header does not match it",
                    r.sequence
                )),
                Err(e) => Journal::Unconfirmed(format!(
                    "holds a record of sequence {} whose header is unusable ({})",
                    r.sequence,
                    e.message()
                )),
            }
        }
        Ok(Some(r)) => Journal::Unconfirmed(format!(
            "holds a record of sequence {}{}",
            r.sequence,
            if r.sequence == h.sequence {
                " with a different header"
            } else {
                ""
            }
        )),
    }
}

/// A fall back that nothing confirms: what open warns about and `check`
/// reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// True when the newest commit may have been lost (a `check` error);
    /// false for an unfinished commit the given key cannot open (a
    /// recipient change was interrupted).
    pub lost: bool,
    /// What was found: both copies, their offsets and sequences, the journal.
    pub message: String,
}

impl Assessment {
    /// The verdict. `loaded` is the sequence open settled on with a key
    /// (`None` without a key: a pending record then counts as confirming,
    /// since only a key can replay it) and `keys` the keys it used.
    pub(crate) fn verdict(
        &self,
        loaded: Option<u64>,
        keys: &[std::sync::Arc<super::keys::PrivateKey>],
    ) -> Option<Fallback> {
        let why = self.suspicion.as_ref()?;
        let used = format!("{} (sequence {})", copy_name(self.used), self.used_sequence);
        let journal = format!("the journal at {:#x}", self.journal_offset);
        let lost = |j: &str| Fallback {
            lost: true,
            message: format!(
                "{FELL_BACK}: using {used}, but {why}, and {journal} {j}: the newest commit may have been lost (rolled back)"
            ),
        };
        match &self.journal {
            Journal::Same => None,
            Journal::Unconfirmed(j) => Some(lost(&format!("{j}, nothing confirms it"))),
            Journal::Pending(bytes) => {
                let replayed = self.used_sequence.checked_add(1);
                match loaded {
                    None => None,
                    Some(s) if Some(s) == replayed => None,
                    Some(_) => {
                        let at = self.journal_offset + journal::RECORD_HEADER as u64;
                        let h = Header::decode(bytes, at, u64::MAX).ok()?;
                        let e = super::open::unlock(&h, bytes, at, keys).err()?;
                        let seq = self.used_sequence + 1;
                        if e.kind() == ErrorKind::KeyMismatch {
                            Some(Fallback {
                                lost: false,
                                message: format!(
                                    "using {used}: {why}; {journal} holds an unfinished commit (sequence {seq}) that is not addressed to the given key (an interrupted recipient change), so it was not applied; open with a remaining recipient's key to install it"
                                ),
                            })
                        } else {
                            Some(lost(&format!(
                                "holds the record of sequence {seq} that would re-establish the newest commit, but it does not verify ({})",
                                e.message()
                            )))
                        }
                    }
                }
            }
        }
    }
}

/// `e`, an error opening the image, with the fall back that preceded it
/// (a table that no longer matches the older copy fails to open: say why).
pub(crate) fn explain(e: crate::Error, assessment: Option<Assessment>) -> crate::Error {
    let Some(f) = assessment.and_then(|a| a.verdict(None, &[])) else {
        return e;
    };
    let mut out = crate::Error::new(e.kind(), format!("{}; {}", e.message(), f.message));
    if let Some(h) = e.hint() {
        out = out.with_hint(h);
    }
    if let (Some(s), Some(o)) = (e.structure(), e.offset()) {
        out = out.at(s, o);
    }
    if let Some(p) = e.path() {
        out = out.with_path(p);
    }
    out
}
