//! `info` of a container: the public facts of the header, and with a key
//! what only the block table knows; the origin record that `convert`
//! restores.

use super::EvhdImage;
use super::header;
use super::keys::Fingerprint;
use super::signature::Status;
use crate::report::{
    DiskType, EvhdDetails, EvhdOriginDetails, EvhdRecipientDetails, EvhdSignatureDetails, Format,
    FormatDetails, ImageInfo,
};

/// What only an unlocked disk knows.
pub(super) struct Keyed {
    /// Blocks that have a data slot.
    pub(super) allocated_blocks: u64,
    /// The key that opened it (`None` right after create).
    pub(super) unlocked_with: Option<Fingerprint>,
}

/// The `info` of `image`; `keyed` when a key unlocked it.
pub(super) fn image_info(image: &EvhdImage, keyed: Option<&Keyed>) -> ImageInfo {
    let h = &image.header;
    let bs = h.block_size();
    let allocated = match keyed {
        Some(k) => k.allocated_blocks * bs,
        None => h.slot_count * bs,
    };
    ImageInfo {
        format: Format::Evhd,
        disk_type: DiskType::Dynamic,
        virtual_size: h.virtual_size,
        file_size: image.storage.len().unwrap_or(0),
        logical_sector_size: h.logical_sector_size,
        physical_sector_size: h.physical_sector_size,
        block_size: Some(bs),
        disk_id: Some(h.container_uuid().to_string()),
        data_write_id: None,
        creator: None,
        minimum_size: None,
        allocated_bytes: allocated,
        parent: None,
        warnings: image
            .warnings
            .iter()
            .cloned()
            .chain(image.signature.as_warning())
            .collect(),
        details: FormatDetails::Evhd(Box::new(evhd_details(image, keyed))),
    }
}

/// Public facts about the container, for `info`.
fn evhd_details(image: &EvhdImage, keyed: Option<&Keyed>) -> EvhdDetails {
    let h = &image.header;
    let o = &h.origin;
    let warning = image.signature.warning();
    let signature = match &image.signature {
        Status::Unsigned => EvhdSignatureDetails::Unsigned {
            signed: false,
            warning,
        },
        Status::Signed {
            fingerprint,
            label,
            trusted,
        } => EvhdSignatureDetails::Signed {
            signed: true,
            signer: fingerprint.hex(),
            signer_label: label.clone(),
            signer_short: fingerprint.short(),
            trusted: *trusted,
            verified: if keyed.is_some() {
                "signature and header MAC"
            } else {
                "signature only (without a key the header MAC was not checked)"
            },
            warning,
        },
    };
    EvhdDetails {
        block_size: h.block_size(),
        cipher: h.cipher.as_str(),
        container_id: h.container_uuid(),
        header_copy: if image.current_copy == 0 { "A" } else { "B" },
        key_epoch: u64::from(h.epoch),
        live_epochs: h.epoch_keys.len() as u64,
        locked: keyed.is_none(),
        origin: EvhdOriginDetails {
            block_size: (o.block_size != 0).then_some(o.block_size),
            disk_id: o.disk_id,
            format: o.format,
            logical_sector_size: o.logical_sector_size,
            physical_sector_size: o.physical_sector_size,
            disk_type: o.disk_type,
        },
        recipients: h
            .recipients
            .iter()
            .map(|s| EvhdRecipientDetails {
                bits: s.key.bits() as u64,
                fingerprint: s.key.fingerprint().hex(),
                label: s.label.clone(),
                short: s.key.fingerprint().short(),
            })
            .collect(),
        rekey_in_progress: image.rekey_in_progress(),
        sequence: h.sequence,
        signature,
        unlocked_with: keyed.and_then(|k| k.unlocked_with).map(|k| k.short()),
        version: if h.signer.is_some() {
            header::VERSION_SIGNED
        } else {
            header::VERSION_UNSIGNED
        },
    }
}
