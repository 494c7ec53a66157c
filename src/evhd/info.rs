//! `info` of a container: the public facts of the header, and with a key
//! what only the block table knows; the origin record that `convert`
//! restores.

use serde_json::json;

use super::EvhdImage;
use super::header;
use super::keys::Fingerprint;
use super::signature::Status;
use crate::report::{DiskType, Format, ImageInfo};

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
        allocated_bytes: allocated,
        parent: None,
        warnings: image
            .warnings
            .iter()
            .cloned()
            .chain(image.signature.warning())
            .collect(),
        vhd: None,
        vhdx: None,
        evhd: Some(evhd_json(image, keyed)),
    }
}

/// Public facts about the container, as JSON for `info`.
fn evhd_json(image: &EvhdImage, keyed: Option<&Keyed>) -> serde_json::Value {
    let h = &image.header;
    let o = &h.origin;
    let signature = match &image.signature {
        Status::Unsigned => json!({ "signed": false, "warning": image.signature.warning() }),
        Status::Signed {
            fingerprint,
            label,
            trusted,
        } => json!({
            "signed": true,
            "signer": fingerprint.hex(),
            "signer_short": fingerprint.short(),
            "signer_label": label,
            "trusted": trusted,
            "verified": if keyed.is_some() {
                "signature and header MAC"
            } else {
                "signature only (without a key the header MAC was not checked)"
            },
            "warning": image.signature.warning(),
        }),
    };
    json!({
        "version": if h.signer.is_some() { header::VERSION_SIGNED } else { header::VERSION_UNSIGNED },
        "signature": signature,
        "container_id": h.container_uuid().to_string(),
        "cipher": h.cipher.as_str(),
        "block_size": h.block_size(),
        "sequence": h.sequence,
        "header_copy": if image.current_copy == 0 { "A" } else { "B" },
        "key_epoch": h.epoch,
        "live_epochs": h.epoch_keys.len(),
        "rekey_in_progress": image.rekey_in_progress(),
        "locked": keyed.is_none(),
        "unlocked_with": keyed.and_then(|k| k.unlocked_with).map(|k| k.short()),
        "recipients": h.recipients.iter().map(|s| json!({
            "fingerprint": s.key.fingerprint().hex(),
            "short": s.key.fingerprint().short(),
            "bits": s.key.bits(),
            "label": s.label,
        })).collect::<Vec<_>>(),
        "origin": {
            "format": o.format.map(|f| f.as_str()),
            "type": o.disk_type.map(|t| t.as_str()),
            "block_size": (o.block_size != 0).then_some(o.block_size),
            "logical_sector_size": o.logical_sector_size,
            "physical_sector_size": o.physical_sector_size,
            "disk_id": o.disk_id.map(|u| u.to_string()),
        },
    })
}
