//! `check` of an EVHD: both header copies, then with a key the header MAC,
//! the journal, every table page and every stored block, listing each
//! damaged block by index and file offset.

use std::sync::Arc;

use super::fallback::{self, Fallback};
use super::header::{COPY_OFFSETS, Header};
use super::keys::PrivateKey;
use super::signature::Status;
use super::{EvhdDisk, EvhdImage, journal, read_copies};
use crate::error::Result;
use crate::io::{Storage, io_err, read_struct};
use crate::report::{CheckReport, FindingKind, Severity, WarningKind};

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
    for (i, c) in copies.iter().enumerate() {
        if let Err(e) = c {
            let name = if i == 0 {
                "EVHD header copy A"
            } else {
                "EVHD header copy B"
            };
            report.add(
                Severity::Error,
                FindingKind::Missing,
                name,
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
            report.not_checked.push(e.message().to_string());
            return Ok(());
        }
        Err(e) => {
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
