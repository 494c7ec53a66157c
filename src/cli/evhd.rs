//! The commands for encrypted images only: `recipients`, `sign`, `rekey`.

use std::path::Path;
use std::sync::Arc;

use vhdkit::PrivateKey;
use vhdkit::SignatureStatus as Status;
use vhdkit::keyfile::report::{RecipientReport, write_recipients_text};
use vhdkit::report::Format;
use vhdkit::{Error, ErrorKind, OpenOptions};

use super::args::{RecipientsCmd, TrustArgs, parse_recipient};
use super::open::{force_share_hint, refuse_force_share, warn_force_share};
use super::output::{emit, progress_bar};
use super::{Outcome, fail1};

/// Open an EVHD for the commands that only take EVHD images. A writer
/// trusts its `keys` and `trust` as signers; `vouch` (the `sign` command)
/// writes although no trusted key signed the image.
fn open_evhd(
    image: &Path,
    keys: Vec<Arc<PrivateKey>>,
    writable: bool,
    force_share: bool,
    trust: TrustArgs,
    vouch: bool,
) -> Result<vhdkit::EvhdDisk, (Error, u8)> {
    open_evhd_as(image, keys, writable, force_share, trust, vouch)
}

/// [`open_evhd`], locked ([`vhdkit::EvhdImage`]) or unlocked.
fn open_evhd_as<D: vhdkit::unstable::evhd::Open>(
    image: &Path,
    keys: Vec<Arc<PrivateKey>>,
    writable: bool,
    force_share: bool,
    trust: TrustArgs,
    vouch: bool,
) -> Result<D, (Error, u8)> {
    let mut opts = OpenOptions::new()
        .writable(writable)
        .print_warnings(true)
        .vouch(vouch);
    opts.keys = keys;
    opts.trust = trust.trust;
    let storage = if force_share {
        refuse_force_share(writable, image, "a command that changes the image")?;
        vhdkit::FileStorage::open_force_share(image)
    } else {
        vhdkit::FileStorage::open(image, writable)
    }
    .map_err(|e| fail1(force_share_hint(e, writable)))?;
    // Any trace of EVHD (a damaged one too) is opened as EVHD, so that
    // damage is reported as such.
    if let Err(e) = vhdkit::unstable::detect::resolve(&storage, Some(Format::Evhd)) {
        return Err(fail1(e.with_path(image)));
    }
    D::open(Box::new(storage), Some(image.to_path_buf()), &opts)
        .map_err(|e| fail1(vhdkit::unstable::detect::damaged(Format::Evhd, e).with_path(image)))
}

/// `vhdkit sign`.
pub fn sign(image: &Path, key: Vec<Arc<PrivateKey>>) -> Outcome {
    let mut disk = open_evhd(image, key, true, false, TrustArgs::default(), true)?;
    let before = match disk.signature() {
        Status::Unsigned => "unsigned".to_string(),
        Status::Signed {
            fingerprint, label, ..
        } => format!("signed by {} {label:?}", fingerprint.short()),
    };
    let fp = disk.sign().map_err(|e| fail1(e.with_path(image)))?;
    let label = disk
        .recipients()
        .iter()
        .find(|s| s.key.fingerprint() == fp)
        .map(|s| s.label.clone())
        .unwrap_or_default();
    println!(
        "signed by {}  {label}  (sequence {}; was {before})",
        fp.short(),
        disk.header().sequence
    );
    Ok(0)
}

/// `vhdkit rekey`.
pub fn rekey(image: &Path, key: Vec<Arc<PrivateKey>>, trust: TrustArgs, quiet: bool) -> Outcome {
    // Like `sign` and `recipients`: a file that is no EVHD, or a
    // damaged one, is named as such.
    let mut disk = open_evhd(image, key, true, false, trust, false)?;
    let resumed = disk.rekey_in_progress();
    let bar = progress_bar(0, quiet);
    disk.rekey(&mut |done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    })
    .map_err(|e| fail1(e.with_path(image)))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!(
        "rekeyed{}: new master key, key epoch {}",
        if resumed { " (resumed)" } else { "" },
        disk.header().epoch
    );
    Ok(0)
}

/// `vhdkit recipients list|add|remove`.
pub fn recipients(cmd: RecipientsCmd) -> Outcome {
    match cmd {
        RecipientsCmd::List {
            image,
            json,
            force_share,
        } => {
            if force_share {
                warn_force_share(&[&image]);
            }
            let disk = open_evhd_as::<vhdkit::EvhdImage>(
                &image,
                Vec::new(),
                false,
                force_share,
                TrustArgs::default(),
                false,
            )?;
            let list: Vec<RecipientReport> = disk
                .recipients()
                .iter()
                .map(|s| RecipientReport::new(&s.key, &s.label))
                .collect();
            emit(json, &list[..], write_recipients_text)?;
            Ok(0)
        }
        RecipientsCmd::Add {
            image,
            key,
            recipients,
            trust,
        } => {
            let list = recipients.list();
            if list.is_empty() {
                return Err(fail1(Error::invalid_argument(
                    "give the keys to add with --recipient",
                )));
            }
            let mut disk = open_evhd(&image, key, true, false, trust, false)?;
            for (k, label) in list {
                disk.add_recipient(&k, &label)
                    .map_err(|e| fail1(e.with_path(&image)))?;
                println!("added {}  {label}", k.fingerprint().short());
            }
            Ok(0)
        }
        RecipientsCmd::Remove {
            image,
            key,
            which,
            fingerprint,
            recipient,
            trust,
        } => {
            // FPR names a key file when one by that name exists, else a
            // fingerprint.
            let (fingerprint, recipient) = match which {
                Some(w) if Path::new(&w).is_file() => (
                    None,
                    Some(
                        parse_recipient(&w)
                            .map_err(|e| fail1(Error::new(ErrorKind::InvalidKey, e)))?,
                    ),
                ),
                Some(w) if !w.chars().all(|c| c.is_ascii_hexdigit()) => {
                    return Err(fail1(Error::invalid_argument(format!(
                        "{w} is neither a key file nor a fingerprint \
                         (hex digits, as `vhdkit recipients list` prints them)"
                    ))));
                }
                Some(w) => (Some(w), None),
                None => (fingerprint, recipient),
            };
            let prefix = match (fingerprint, recipient) {
                (Some(f), _) => f,
                (None, Some(r)) => r.key.fingerprint().hex(),
                (None, None) => {
                    return Err(fail1(Error::invalid_argument(
                        "give the recipient to remove: FPR (its fingerprint or key file), \
                         --fingerprint or --recipient",
                    )));
                }
            };
            let mut disk = open_evhd(&image, key, true, false, trust, false)?;
            let removed = disk
                .remove_recipient(&prefix)
                .map_err(|e| fail1(e.with_path(&image)))?;
            println!(
                "removed {}  {}",
                removed.key.fingerprint().short(),
                removed.label
            );
            eprintln!(
                "note: a removed recipient who kept the master key can still read the image; run `vhdkit rekey` to revoke it"
            );
            Ok(0)
        }
    }
}
