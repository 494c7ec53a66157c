//! `check` of an EVHD: both header copies, then with a key the header MAC,
//! the journal, every table page and every stored block, listing each
//! damaged block by index and file offset.

use std::sync::Arc;

use super::fallback::{self, Fallback};
use super::header::{self, COPY_OFFSETS, HEADER_SIZE, Header};
use super::keys::PrivateKey;
use super::signature::Status;
use super::{EvhdDisk, EvhdImage, journal, read_copies};
use crate::error::Result;
use crate::io::{Storage, io_err, read_struct};
use crate::report::{CheckReport, FindingKind, Severity, WarningKind};

/// Names of the header copies in findings.
const COPY_NAMES: [&str; 2] = ["EVHD header copy A", "EVHD header copy B"];

/// Bytes a torn write keeps or loses as a unit (the smallest sector).
const TEAR_UNIT: usize = 512;

/// Bytes the MAC of a torn copy may share with the record header's MAC.
/// The end of a torn write still holds an older header's MAC, a keyed hash
/// of other bytes: it shares a byte with the new MAC by chance (1 in 256
/// per byte), so more than this many shared bytes is the new MAC altered.
const MAX_SHARED_MAC_BYTES: usize = 8;

/// Blocks verified per step.
const CHUNK_BLOCKS: u64 = 64;

/// Check the container in `storage`, adding findings to `report`. Without
/// `keys` only what is public can be checked (header CRCs and ranges,
/// layout, the journal record's CRC, the agreement of copies and journal);
/// the report then lists what was and was not checked, so that its status
/// is `incomplete` (exit 1) rather than clean.
pub fn check(
    storage: Box<dyn Storage>,
    keys: &[Arc<PrivateKey>],
    report: &mut CheckReport,
) -> Result<()> {
    let opts = crate::OpenOptions {
        keys: keys.to_vec(),
        ..Default::default()
    };
    check_with(storage, &opts, report)
}

/// [`check`] with the keys, trusted keys and signature requirement of
/// `opts`: an image not signed by a trusted key is an error finding when
/// `opts.require_signed`, else an info finding that warns; a signature that
/// does not verify is always an error.
pub fn check_with(
    storage: Box<dyn Storage>,
    opts: &crate::OpenOptions,
    report: &mut CheckReport,
) -> Result<()> {
    let keys = &opts.keys[..];
    // Open without the requirement, so that the blocks are still checked;
    // the signature is judged as a finding.
    let lenient = crate::OpenOptions {
        keys: keys.to_vec(),
        trust: opts.trust.clone(),
        ..Default::default()
    };
    let len = storage.len().map_err(io_err("EVHD file", 0))?;
    let copies = read_copies(storage.as_ref(), len);
    let torn = torn_by_pending(storage.as_ref(), &copies);
    for (i, c) in copies.iter().enumerate() {
        if let Err(e) = c
            && torn.as_ref().is_none_or(|t| t.copy != i)
        {
            report.add(
                Severity::Error,
                FindingKind::Missing,
                COPY_NAMES[i],
                Some(e.offset().unwrap_or(COPY_OFFSETS[i])),
                format!("{}; the next flush rewrites this copy", e.message()),
            );
        }
    }
    if copies.iter().all(|c| c.is_err()) {
        return Ok(());
    }
    let assessment = fallback::assess(storage.as_ref(), &copies);
    if keys.is_empty() {
        if let Some(t) = &torn {
            t.report(report, false);
        }
        if let Some(f) = assessment.and_then(|a| a.verdict(None, &[])) {
            add_fallback(report, &f);
        }
        report.checked.extend([
            "header copies A and B: magic, version, CRC-32C and every field's range".to_string(),
            "layout: journal, block table and data slots in order and inside the file".to_string(),
            "that the copies and the journal agree on the newest commit (no fall back to the older copy)".to_string(),
        ]);
        check_journal(storage.as_ref(), &copies, report);
        report.add_not_checked(
            "header MACs, epoch keys, block table pages (MACs, table root) and data blocks (authentication tags): they need the private key of a recipient",
            Some(crate::Hint::Key),
        );
        match EvhdImage::open(storage, None, &lenient) {
            Ok(d) => report_signature(d.signature(), opts.require_signed, report),
            Err(e) => report.add(
                Severity::Error,
                FindingKind::of_error(&e),
                e.structure().unwrap_or("EVHD"),
                e.offset(),
                e.message().to_string(),
            ),
        }
        return Ok(());
    }
    let disk = match EvhdDisk::open(storage, None, &lenient) {
        Ok(d) => d,
        // Keys none of which is a recipient: the image could not be
        // checked (exit 1 unless damage was found), it is not damaged.
        Err(e) if e.kind() == crate::ErrorKind::KeyMismatch => {
            if let Some(t) = &torn {
                t.report(report, false);
            }
            report.not_checked.push(e.message().to_string());
            return Ok(());
        }
        Err(e) => {
            if let Some(t) = &torn {
                t.report_unexplained(report);
            }
            report.add(
                Severity::Error,
                FindingKind::of_error(&e),
                e.structure().unwrap_or("EVHD"),
                e.offset(),
                e.message().to_string(),
            );
            return Ok(());
        }
    };
    if let Some(t) = &torn {
        // With the key, the record explains the copy only if open
        // authenticated it and took its commit as the newest state.
        if disk.header().sequence == t.sequence {
            t.report(report, true);
        } else {
            t.report_unexplained(report);
        }
    }
    let f = assessment.and_then(|a| a.verdict(Some(disk.header().sequence), keys));
    if let Some(f) = &f {
        add_fallback(report, f);
    }
    report_signature(disk.signature(), opts.require_signed, report);
    // What open noticed in the journal, unless reported just above.
    for w in disk.warnings() {
        let kind = match w.kind {
            WarningKind::JournalInMemory => Some(FindingKind::PendingLog),
            WarningKind::CommitMayBeLost if f.as_ref().is_none_or(|f| f.message != w.message) => {
                Some(FindingKind::RolledBack)
            }
            WarningKind::CommitNotApplied if f.as_ref().is_none_or(|f| f.message != w.message) => {
                Some(FindingKind::CommitNotApplied)
            }
            _ => None,
        };
        if let Some(kind) = kind {
            report.add(
                Severity::Info,
                kind,
                "EVHD journal",
                Some(disk.header().journal_offset),
                w.message.clone(),
            );
        }
    }
    for (p, why) in disk.bad_pages() {
        report.add(
            Severity::Error,
            FindingKind::Damaged,
            "EVHD block table",
            Some(disk.header().table_offset + p * super::table::PAGE_SIZE as u64),
            format!("page {p}: {why}"),
        );
    }
    let blocks = disk.header().blocks();
    let bs = disk.block_size() as usize;
    let mut buf = vec![0u8; CHUNK_BLOCKS as usize * bs];
    let mut b = 0;
    while b < blocks {
        let n = (blocks - b).min(CHUNK_BLOCKS);
        let all_ok = (b..b + n).all(|i| disk.check_page(i).is_ok())
            && disk
                .read_full_blocks(b, &mut buf[..n as usize * bs])
                .is_ok();
        if !all_ok {
            for i in b..b + n {
                if disk.check_page(i).is_err() {
                    continue;
                }
                if let Err(e) = disk.read_block(i) {
                    report.add(
                        Severity::Error,
                        FindingKind::of_error(&e),
                        e.structure().unwrap_or("EVHD data block"),
                        e.offset(),
                        e.message().to_string(),
                    );
                }
            }
        }
        b += n;
    }
    Ok(())
}

/// Report a fall back to the older header copy: an error when the newest
/// commit may have been lost.
fn add_fallback(report: &mut CheckReport, f: &Fallback) {
    let sev = if f.lost {
        Severity::Error
    } else {
        Severity::Info
    };
    report.add(
        sev,
        if f.lost {
            FindingKind::RolledBack
        } else {
            FindingKind::CommitNotApplied
        },
        "EVHD header",
        Some(COPY_OFFSETS[0]),
        f.message.clone(),
    );
}

/// Without a key: the journal record of the current copy, by its CRC.
fn check_journal(
    storage: &dyn Storage,
    copies: &[Result<(Header, Vec<u8>)>; 2],
    report: &mut CheckReport,
) {
    let cur = match copies {
        [Ok((a, _)), Ok((b, _))] => {
            if b.sequence > a.sequence {
                b
            } else {
                a
            }
        }
        [Ok((h, _)), _] | [_, Ok((h, _))] => h,
        _ => return,
    };
    let rec = journal::decode(
        cur.journal_offset,
        cur.journal_len,
        &cur.container_id,
        cur.table_pages,
        |buf, o| read_struct(storage, journal::STRUCTURE, buf, cur.journal_offset + o),
    );
    match rec {
        Err(e) => report.add(
            Severity::Error,
            FindingKind::of_error(&e),
            journal::STRUCTURE,
            e.offset(),
            e.message().to_string(),
        ),
        Ok(Some(r)) => {
            let what = if r.sequence == cur.sequence + 1 {
                "an unfinished commit; opening writable with a key installs it"
            } else if r.sequence == cur.sequence {
                "the current commit, already installed"
            } else {
                "an older commit, superseded"
            };
            report.checked.push(format!(
                "journal record: CRC-32C (sequence {}: {what})",
                r.sequence
            ));
        }
        Ok(None) => report
            .checked
            .push("journal: no complete record (nothing to replay)".to_string()),
    }
}

/// The finding for who signed the image.
fn report_signature(status: &Status, require_signed: bool, report: &mut CheckReport) {
    const WHAT: &str = "EVHD header signature";
    match status {
        Status::Signed {
            fingerprint,
            label,
            trusted: true,
        } => report.add(
            Severity::Info,
            FindingKind::Signature,
            WHAT,
            None,
            format!("signed by trusted key {} ({label:?})", fingerprint.short()),
        ),
        _ if require_signed => {
            report.add(
                Severity::Error,
                FindingKind::Signature,
                WHAT,
                None,
                status.problem().unwrap_or_default(),
            );
            if let Some(f) = report.findings.last_mut() {
                f.hint = Some(crate::Hint::RequireSigned);
            }
        }
        _ => {
            report.add(
                Severity::Info,
                FindingKind::Signature,
                WHAT,
                None,
                format!("warning: {}", status.warning().unwrap_or_default()),
            );
            if let Some(f) = report.findings.last_mut() {
                f.hint = status.hint();
            }
        }
    }
}

/// A header copy that an interrupted commit left torn, as far as the bytes
/// show: see [`torn_by_pending`].
struct Torn {
    /// Index of the torn copy.
    copy: usize,
    /// Sequence of the commit the journal holds.
    sequence: u64,
    /// Why the copy does not decode.
    why: String,
    /// Where.
    offset: u64,
}

impl Torn {
    /// The information finding; `authenticated` when the record's header
    /// MAC verified with a key.
    fn report(&self, report: &mut CheckReport, authenticated: bool) {
        let proof = if authenticated {
            "its header verifies with the key"
        } else {
            "its header MAC is not verified without a key"
        };
        report.add(
            Severity::Info,
            FindingKind::PendingLog,
            COPY_NAMES[self.copy],
            Some(self.offset),
            format!(
                "{}: a commit (sequence {}) was interrupted while writing this copy; the journal holds that commit ({proof}), and opening writable or running the operation again completes it",
                self.why, self.sequence
            ),
        );
    }

    /// The copy as damage: the record did not authenticate.
    fn report_unexplained(&self, report: &mut CheckReport) {
        report.add(
            Severity::Error,
            FindingKind::Missing,
            COPY_NAMES[self.copy],
            Some(self.offset),
            format!(
                "{}; the journal record of sequence {} that was writing it does not verify",
                self.why, self.sequence
            ),
        );
    }
}

/// The damaged copy a commit's last write tore, if that is what the bytes
/// show. A commit writes its journal record (holding the new header) and
/// syncs, installs the table pages and syncs, then writes the new header
/// over the copy that is not current, in one write that can tear between
/// sectors. The state it leaves, and nothing else, is matched: exactly one
/// copy is unusable; the other decodes with sequence S; the journal holds a
/// record (CRC-32C verified, same container) of sequence S + 1 whose header
/// decodes as that sequence; and the unusable copy (the one that commit
/// targets) begins with the record header's first sector or more, while its
/// MAC, at the end of the write, is another header's (it shares at most
/// [`MAX_SHARED_MAC_BYTES`] bytes with the record header's MAC). A copy
/// damaged after such a write completed carries the record's MAC, or that
/// MAC altered, and one damaged in its first sector does not start like
/// the record: they stay errors. A completed copy whose last sector was
/// replaced by another header's cannot be told from a torn one; the
/// journal's authenticated record replaces it either way.
fn torn_by_pending(storage: &dyn Storage, copies: &[Result<(Header, Vec<u8>)>; 2]) -> Option<Torn> {
    let (copy, cur, err) = match copies {
        [Ok((h, _)), Err(e)] => (1, h, e),
        [Err(e), Ok((h, _))] => (0, h, e),
        _ => return None,
    };
    let rec = journal::decode(
        cur.journal_offset,
        cur.journal_len,
        &cur.container_id,
        cur.table_pages,
        |buf, o| read_struct(storage, journal::STRUCTURE, buf, cur.journal_offset + o),
    )
    .ok()
    .flatten()?;
    if rec.sequence != cur.sequence.checked_add(1)? {
        return None;
    }
    let len = storage.len().ok()?;
    let at = cur.journal_offset + journal::RECORD_HEADER as u64;
    let h = Header::decode(&rec.header, at, len).ok()?;
    if h.container_id != cur.container_id || h.sequence != rec.sequence {
        return None;
    }
    let mut bytes = vec![0u8; HEADER_SIZE];
    read_struct(storage, header::STRUCTURE, &mut bytes, COPY_OFFSETS[copy]).ok()?;
    let mac = header::MAC_OFFSET..HEADER_SIZE;
    let shared = bytes[mac.clone()]
        .iter()
        .zip(&rec.header[mac])
        .filter(|(a, b)| a == b)
        .count();
    if bytes[..TEAR_UNIT] != rec.header[..TEAR_UNIT] || shared > MAX_SHARED_MAC_BYTES {
        return None;
    }
    Some(Torn {
        copy,
        sequence: rec.sequence,
        why: err.message().to_string(),
        offset: err.offset().unwrap_or(COPY_OFFSETS[copy]),
    })
}
