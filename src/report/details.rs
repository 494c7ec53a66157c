//! What `info` shows of each format's own structures, as typed values.
//!
//! Every struct here lists its fields in alphabetical order, and that order
//! is part of the output: `info --json` has always printed these objects
//! with their keys sorted, and scripts may compare it byte for byte
//! (`tests/report_golden.rs` holds the output of every format).

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use super::{DiskType, Format};

/// The details `info` gives of one format's structures.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FormatDetails {
    /// A raw image has no structures of its own.
    Raw,
    /// VHD footer, dynamic header, locators and block counts.
    Vhd(Box<VhdDetails>),
    /// VHDX headers, region table, metadata, BAT and log.
    Vhdx(Box<VhdxDetails>),
    /// EVHD header, recipients, signature and origin record.
    Evhd(Box<EvhdDetails>),
}

impl FormatDetails {
    /// The key the details have in `info --json` (`None` for raw, which
    /// has none).
    pub fn json_key(&self) -> Option<&'static str> {
        match self {
            FormatDetails::Raw => None,
            FormatDetails::Vhd(_) => Some("vhd"),
            FormatDetails::Vhdx(_) => Some("vhdx"),
            FormatDetails::Evhd(_) => Some("evhd"),
        }
    }

    /// The VHD details, if this is a VHD.
    pub fn vhd(&self) -> Option<&VhdDetails> {
        match self {
            FormatDetails::Vhd(d) => Some(d),
            _ => None,
        }
    }

    /// The VHDX details, if this is a VHDX.
    pub fn vhdx(&self) -> Option<&VhdxDetails> {
        match self {
            FormatDetails::Vhdx(d) => Some(d),
            _ => None,
        }
    }

    /// The EVHD details, if this is an EVHD.
    pub fn evhd(&self) -> Option<&EvhdDetails> {
        match self {
            FormatDetails::Evhd(d) => Some(d),
            _ => None,
        }
    }
}

/// What `info` shows of a VHD.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdDetails {
    /// Block counts of dynamic and differencing disks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<VhdBlocks>,
    /// The dynamic header of dynamic and differencing disks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_header: Option<VhdDynamicHeaderDetails>,
    /// The footer in use.
    pub footer: VhdFooterDetails,
    /// Whether the footer copy at offset 0 matches (`None` for fixed disks,
    /// which have no copy).
    pub footer_copy_ok: Option<bool>,
    /// Whether cloud import services (Azure, AWS) take the image as it is:
    /// a fixed VHD of a whole number of MiB with a valid footer at the end.
    pub cloud_ready: bool,
    /// What keeps it from being cloud ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cloud_problems: Vec<String>,
}

/// The VHD footer's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdFooterDetails {
    /// Stored checksum, `0x` and 8 hex digits.
    pub checksum: String,
    /// Whether the stored checksum is the computed one.
    pub checksum_ok: bool,
    /// The cookie (`conectix`).
    pub cookie: String,
    /// Creator application, four characters.
    pub creator_application: String,
    /// Creator host OS (`Wi2k`, `Mac `).
    pub creator_host_os: String,
    /// Creator version, `major.minor`.
    pub creator_version: String,
    /// Current size of the disk in bytes.
    pub current_size: u64,
    /// Offset of the dynamic header (`None` for fixed disks).
    pub data_offset: Option<u64>,
    /// Disk type code (2 fixed, 3 dynamic, 4 differencing).
    pub disk_type: u32,
    /// Feature bits, `0x` and 8 hex digits.
    pub features: String,
    /// File format version, `major.minor`.
    pub file_format_version: String,
    /// CHS geometry.
    pub geometry: VhdGeometryDetails,
    /// Size at creation in bytes.
    pub original_size: u64,
    /// The saved-state flag.
    pub saved_state: bool,
    /// Which footer is used: `end`, `end-511` (legacy) or `copy-at-0`.
    pub source: &'static str,
    /// The temporary-disk feature bit.
    pub temporary: bool,
    /// Creation time, ISO 8601.
    pub timestamp: String,
    /// The disk's unique id.
    pub unique_id: Uuid,
}

/// A VHD's CHS geometry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdGeometryDetails {
    /// The size the geometry describes, in bytes.
    pub chs_size: u64,
    /// Cylinders.
    pub cylinders: u16,
    /// Heads per cylinder.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

/// The VHD dynamic header's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdDynamicHeaderDetails {
    /// Block size in bytes.
    pub block_size: u32,
    /// Stored checksum, `0x` and 8 hex digits.
    pub checksum: String,
    /// Whether the stored checksum is the computed one.
    pub checksum_ok: bool,
    /// The cookie (`cxsparse`).
    pub cookie: String,
    /// The unused data offset field, `0x` and 16 hex digits.
    pub data_offset: String,
    /// Header version, `major.minor`.
    pub header_version: String,
    /// Entries of the block allocation table.
    pub max_table_entries: u32,
    /// File offset of the header.
    pub offset: u64,
    /// The parent locators in use.
    pub parent_locators: Vec<VhdLocatorDetails>,
    /// Parent's modification time, ISO 8601 (differencing disks only).
    pub parent_timestamp: Option<String>,
    /// Parent's file name as recorded.
    pub parent_unicode_name: String,
    /// The id the child expects of its parent (differencing disks only).
    pub parent_unique_id: Option<Uuid>,
    /// File offset of the block allocation table.
    pub table_offset: u64,
}

/// A decoded VHD parent locator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdLocatorDetails {
    /// Length of the data in bytes.
    pub data_length: u32,
    /// File offset of the data.
    pub data_offset: u64,
    /// Space reserved, as stored.
    pub data_space: u32,
    /// The decoded path, when the encoding is one this library reads.
    pub path: Option<String>,
    /// Platform code as text (`W2ru`).
    pub platform: String,
    /// Whether the path is relative to the child's folder.
    pub relative: bool,
}

/// Block counts of a sparse VHD.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdBlocks {
    /// Blocks stored in the file.
    pub allocated: u64,
    /// Bytes of the sector bitmap before each block.
    pub bitmap_size: u64,
    /// Blocks the disk's size needs.
    pub total: u64,
}

/// What `info` shows of a VHDX.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxDetails {
    /// The block allocation table.
    pub bat: VhdxBatDetails,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    /// The creator recorded in the file identifier.
    pub creator: String,
    /// The file parameters metadata item.
    pub file_parameters: VhdxFileParameters,
    /// Both header slots.
    pub headers: Vec<VhdxHeaderDetails>,
    /// The log.
    pub log: VhdxLogDetails,
    /// The metadata region.
    pub metadata: VhdxMetadataDetails,
    /// The parent locator of a differencing disk (`None` otherwise).
    pub parent_locator: Option<VhdxParentLocatorDetails>,
    /// The region table.
    pub region_table: VhdxRegionTableDetails,
}

/// A VHDX's block allocation table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxBatDetails {
    /// Entries in the table.
    pub entries: u64,
    /// File offset of the table.
    pub offset: u64,
    /// Payload blocks the disk's size needs.
    pub payload_blocks: u64,
    /// Payload entries by state name (`invalid_N` for an invalid state N).
    pub payload_states: BTreeMap<String, u64>,
    /// Sector bitmap blocks.
    pub sector_bitmap_blocks: u64,
    /// Sector bitmap entries by state name.
    pub sector_bitmap_states: BTreeMap<String, u64>,
}

/// The VHDX file parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxFileParameters {
    /// Block size in bytes.
    pub block_size: u32,
    /// Whether the disk is differencing.
    pub has_parent: bool,
    /// Whether blocks stay allocated (a fixed disk).
    pub leave_block_allocated: bool,
}

/// One VHDX header slot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxHeaderDetails {
    /// Stored checksum, `0x` and 8 hex digits.
    pub checksum: String,
    /// Whether this slot is the one in use.
    pub current: bool,
    /// DataWriteGuid.
    pub data_write_guid: Uuid,
    /// FileWriteGuid.
    pub file_write_guid: Uuid,
    /// LogGuid (nil when the log is empty).
    pub log_guid: Uuid,
    /// Length of the log region.
    pub log_length: u32,
    /// File offset of the log region.
    pub log_offset: u64,
    /// Log version.
    pub log_version: u16,
    /// File offset of the slot.
    pub offset: u64,
    /// Why the header is not valid, if it is not.
    pub problem: Option<String>,
    /// Sequence number.
    pub sequence_number: u64,
    /// Slot number, 1 or 2.
    pub slot: u64,
    /// Whether the header is valid.
    pub valid: bool,
    /// Header version.
    pub version: u16,
}

/// The VHDX log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxLogDetails {
    /// LogGuid of the header in use.
    pub guid: Uuid,
    /// Length of the log region.
    pub length: u32,
    /// File offset of the log region.
    pub offset: u64,
    /// The sequence that was replayed (or would be).
    pub replayed: VhdxLogSequenceDetails,
    /// What open did with the log.
    pub state: VhdxLogState,
}

/// What opening a VHDX did with its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VhdxLogState {
    /// The LogGuid was nil: nothing to replay.
    Empty,
    /// The LogGuid was set but no active sequence was found.
    NoActiveSequence,
    /// Replayed into memory; the file is unchanged.
    ReplayedInMemory,
    /// Replayed onto the file and the LogGuid cleared.
    ReplayedOnDisk,
}

/// A VHDX log sequence: only `entries` (0) when there is none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxLogSequenceDetails {
    /// Descriptors in all the entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descriptors: Option<u64>,
    /// Entries in the sequence.
    pub entries: u64,
    /// Sequence number of the first (tail) entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_sequence_number: Option<u64>,
    /// Log offset of the newest (head) entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_offset: Option<u64>,
    /// Sequence number of the newest entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sequence_number: Option<u64>,
    /// Log offset of the tail entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail_offset: Option<u64>,
}

/// The VHDX metadata region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxMetadataDetails {
    /// Every item of the table.
    pub items: Vec<VhdxMetadataItemDetails>,
    /// File offset of the region.
    pub offset: u64,
}

/// One VHDX metadata item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxMetadataItemDetails {
    /// The IsRequired flag.
    pub is_required: bool,
    /// The IsUser flag.
    pub is_user: bool,
    /// The IsVirtualDisk flag.
    pub is_virtual_disk: bool,
    /// The item's GUID.
    pub item_id: Uuid,
    /// Whether this library knows the item.
    pub known: bool,
    /// Length in bytes.
    pub length: u32,
    /// Name of a known item.
    pub name: Option<&'static str>,
    /// Offset within the metadata region.
    pub offset: u32,
    /// The decoded value of a known item.
    pub value: Option<VhdxMetadataValue>,
}

/// The decoded value of a known VHDX metadata item.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VhdxMetadataValue {
    /// File parameters.
    FileParameters(VhdxFileParameters),
    /// A size in bytes.
    Number(u64),
    /// An identifier (Page 83 data).
    Id(Uuid),
    /// The parent locator.
    ParentLocator(VhdxParentLocatorDetails),
}

/// A VHDX parent locator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxParentLocatorDetails {
    /// Its key-value entries.
    pub entries: BTreeMap<String, String>,
    /// LocatorType GUID.
    pub locator_type: Uuid,
}

/// The VHDX region table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxRegionTableDetails {
    /// Which copy is used, 1 or 2.
    pub copy_used: u64,
    /// The entries.
    pub entries: Vec<VhdxRegionDetails>,
    /// Why each copy is unusable, if it is.
    pub problems: Vec<Option<String>>,
}

/// One VHDX region table entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VhdxRegionDetails {
    /// File offset of the region.
    pub file_offset: u64,
    /// The region's GUID.
    pub guid: Uuid,
    /// Length in bytes.
    pub length: u32,
    /// Name of a known region (`BAT`, `metadata`).
    pub name: Option<&'static str>,
    /// The Required flag.
    pub required: bool,
}

/// What `info` shows of an EVHD: public fields only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvhdDetails {
    /// Block size in bytes.
    pub block_size: u64,
    /// Cipher name.
    pub cipher: &'static str,
    /// The container's id.
    pub container_id: Uuid,
    /// Header copy in use, `A` or `B`.
    pub header_copy: &'static str,
    /// Current key epoch.
    pub key_epoch: u64,
    /// Epoch keys still in use.
    pub live_epochs: u64,
    /// Whether the image was opened without a key.
    pub locked: bool,
    /// What the image was converted from.
    pub origin: EvhdOriginDetails,
    /// Who can open it.
    pub recipients: Vec<EvhdRecipientDetails>,
    /// Whether a rekey was interrupted and is resumable.
    pub rekey_in_progress: bool,
    /// Commit sequence number.
    pub sequence: u64,
    /// The header signature.
    pub signature: EvhdSignatureDetails,
    /// Short fingerprint of the key that opened it.
    pub unlocked_with: Option<String>,
    /// Header version.
    pub version: u32,
}

/// The origin record of an EVHD: what its content was converted from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvhdOriginDetails {
    /// Source block size (`None` when the source had none).
    pub block_size: Option<u32>,
    /// Source disk id.
    pub disk_id: Option<Uuid>,
    /// Source format (`None` when created directly).
    pub format: Option<Format>,
    /// Source logical sector size.
    pub logical_sector_size: u32,
    /// Source physical sector size.
    pub physical_sector_size: u32,
    /// Source disk type.
    #[serde(rename = "type")]
    pub disk_type: Option<DiskType>,
}

/// One EVHD recipient.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvhdRecipientDetails {
    /// Modulus size in bits.
    pub bits: u64,
    /// Full fingerprint, hex.
    pub fingerprint: String,
    /// Label recorded in the image.
    pub label: String,
    /// Short fingerprint.
    pub short: String,
}

/// The signature of an EVHD's header.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EvhdSignatureDetails {
    /// Not signed.
    Unsigned {
        /// Always `false`.
        signed: bool,
        /// What a reader is told.
        warning: Option<String>,
    },
    /// Signed by a recipient.
    Signed {
        /// Always `true`.
        signed: bool,
        /// Signer's full fingerprint.
        signer: String,
        /// Signer's label among the recipients.
        signer_label: String,
        /// Signer's short fingerprint.
        signer_short: String,
        /// Whether the reader trusts the signer.
        trusted: bool,
        /// What was verified.
        verified: &'static str,
        /// What a reader is told (`None` when trusted).
        warning: Option<String>,
    },
}

impl EvhdSignatureDetails {
    /// Whether the image is signed by a key the reader trusts.
    pub fn trusted(&self) -> bool {
        matches!(self, EvhdSignatureDetails::Signed { trusted: true, .. })
    }

    /// The signer's full fingerprint, if signed.
    pub fn signer(&self) -> Option<&str> {
        match self {
            EvhdSignatureDetails::Signed { signer, .. } => Some(signer),
            EvhdSignatureDetails::Unsigned { .. } => None,
        }
    }

    /// What a reader is told, if anything.
    pub fn warning(&self) -> Option<&str> {
        match self {
            EvhdSignatureDetails::Signed { warning, .. }
            | EvhdSignatureDetails::Unsigned { warning, .. } => warning.as_deref(),
        }
    }

    /// [`EvhdSignatureDetails::warning`], to change (a front end adding
    /// what its user can do about it).
    pub fn warning_mut(&mut self) -> Option<&mut String> {
        match self {
            EvhdSignatureDetails::Signed { warning, .. }
            | EvhdSignatureDetails::Unsigned { warning, .. } => warning.as_mut(),
        }
    }

    /// What can be done about the warning, if there is one: sign the
    /// image, or trust its signer.
    pub fn hint(&self) -> Option<crate::Hint> {
        match self {
            EvhdSignatureDetails::Unsigned {
                warning: Some(_), ..
            } => Some(crate::Hint::Sign),
            EvhdSignatureDetails::Signed {
                trusted: false,
                warning: Some(_),
                ..
            } => Some(crate::Hint::Trust),
            _ => None,
        }
    }
}
