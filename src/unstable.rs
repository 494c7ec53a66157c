//! Internals for fuzz targets, tests, benchmarks and the `vhdkit` tool.
//!
//! **No semver promise.** Everything here may change or go away in any
//! release. It exists so that the fuzz targets can feed bytes straight to
//! one format's parser and checker, tests can build damaged images
//! structure by structure, and the command-line tool can reach the device
//! and crash-recovery helpers it shares with the library. Programs that
//! use vhdkit as a library should need only the crate root and its public
//! modules ([`open`](crate::open), [`VirtualDisk`],
//! [`convert`](crate::convert), [`check`](crate::check), ...).
//!
//! Each module below is named after the internal module its items come
//! from, and lists exactly the items some caller (a fuzz target, a test, a
//! benchmark or the tool) needs and cannot get from the crate root.

use std::path::Path;

use crate::{OpenOptions, Result, VirtualDisk};

/// Open the file of an image, locked unless `force_share`.
pub fn open_file(path: &Path, writable: bool, force_share: bool) -> Result<crate::FileStorage> {
    crate::open_file(path, writable, force_share)
}

/// Open an image held in `storage` (for example an in-memory file);
/// `path`, if any, locates its parent.
pub fn open_storage(
    storage: Box<dyn crate::Storage>,
    path: Option<&Path>,
    opts: &OpenOptions,
    chain: &chain::Chain,
) -> Result<Box<dyn VirtualDisk>> {
    crate::open_storage(storage, path, opts, chain)
}

/// The chain composer: opens parents, checks identities, limits depth.
pub mod chain {
    /// The images already open below one being opened (empty for a child).
    pub use crate::chain::Chain;
}

/// CRC-32C helpers of the on-disk checksums.
pub mod checksum {
    /// For tests and fuzz targets that repair a structure's checksum after
    /// changing it.
    pub use crate::checksum::crc32c_with_zeroed_field;
}

/// Format detection from signatures.
pub mod detect {
    pub use crate::detect::{damaged, format_name, resolve};
}

/// Writing an image onto a block device or file in place (`convert --device`).
pub mod device {
    pub use crate::device::{
        DeviceTarget, refuse_unless_replaceable, refuse_writing_onto_sources, source_chain,
        write_in_place,
    };
}

/// Range checks of the core disk trait.
pub mod disk {
    pub use crate::disk::{check_extent, check_range};
}

/// The encrypted container's on-disk structures, keys and checker.
pub mod evhd {
    /// File offset of the journal record.
    pub use crate::evhd::JOURNAL_OFFSET;
    /// Opening as the locked or the unlocked type (the tool's EVHD verbs).
    pub use crate::evhd::Open;
    pub use crate::evhd::open;

    /// The checker of one EVHD file, without its parents.
    pub mod check {
        pub use crate::evhd::check::check;
    }

    /// The master key, for tests and fuzz targets that seal pages themselves.
    pub mod cipher {
        pub use crate::evhd::cipher::MasterKey;
    }

    /// The header copies: layout, checksum and MAC.
    pub mod header {
        pub use crate::evhd::header::{
            COPY_OFFSETS, CRC_OFFSET, HEADER_SIZE, Header, MAC_OFFSET, Origin, RECIPIENTS_OFFSET,
            SIGNATURE_OFFSET, SIGNER_OFFSET, SIGNER_RECORD, VERSION_SIGNED, compute_crc,
            compute_mac, verify_mac,
        };
    }

    /// The journal record's layout.
    pub mod journal {
        pub use crate::evhd::journal::{MAGIC, RECORD_HEADER, record_len};
    }

    /// The OAEP label keys are wrapped with (for the OpenSSL interoperability test).
    pub mod keys {
        pub use crate::evhd::keys::OAEP_LABEL;
    }

    /// What an image's signature covers.
    pub mod signature {
        pub use crate::evhd::signature::{SCHEME_RSA_PSS_SHA256, message};
    }

    /// The block table's pages and their MACs.
    pub mod table {
        pub use crate::evhd::table::{
            ENTRY_SIZE, MAC_OFFSET, PAGE_SIZE, RESERVED_OFFSET, page_mac, pages_for, root,
            stored_mac,
        };
    }
}

/// Fixed-size on-disk structures declared with binrw.
pub mod fixed {
    /// Parse and serialize of one fixed-size structure.
    pub use crate::fixed::FixedStruct;
}

/// Storage backends (files, memory) with positional I/O.
pub mod io {
    /// Whether an error is a lock conflict that `-U/--force-share` avoids.
    pub use crate::io::force_share_would_help;
}

/// Parent chains: locating, identity checks, depth limits.
pub mod parent {
    pub use crate::parent::{MAX_CHILD_SCAN, children_beside};
}

/// Output files being written and their crash recovery.
pub mod pending {
    pub use crate::pending::{
        changing_in_place, remove_all_and_exit, writing_in_place, written_in_place,
    };
}

/// Flat (raw) disks.
pub mod raw {
    pub use crate::raw::RawDisk;
}

/// Finding the data and holes of sparse files.
pub mod sparse {
    pub use crate::sparse::DataMap;
}

/// VHD structures, disk, builder and checker.
pub mod vhd {
    pub use crate::vhd::VhdDisk;
    /// Create a VHD and get the format's own disk type.
    pub use crate::vhd::create;

    /// The checker of one VHD file, without its parents.
    pub mod check {
        pub use crate::vhd::check::check;
    }

    /// CHS geometry of the footer.
    pub mod geometry {
        pub use crate::vhd::geometry::Geometry;
    }
}

/// VHDX structures, log, disk, builder and checker.
pub mod vhdx {
    /// Create a VHDX and get the format's own disk type.
    pub use crate::vhdx::create;
    pub use crate::vhdx::{LogReplay, VhdxDisk};

    /// The checker of one VHDX file, without its parents.
    pub mod check {
        pub use crate::vhdx::check::check;
    }

    /// The image headers.
    pub mod header {
        pub use crate::vhdx::header::{HEADER_SIZE, Header};
    }

    /// Writing log entries by hand (the log fuzz target).
    pub mod log {
        pub use crate::vhdx::log::{EntryParams, Op, encode_entry};
    }

    /// Metadata item GUIDs.
    pub mod metadata {
        pub use crate::vhdx::metadata::{FILE_PARAMETERS, VIRTUAL_DISK_SIZE};
    }

    /// Region GUIDs.
    pub mod region_table {
        pub use crate::vhdx::region_table::{BAT_GUID, METADATA_GUID};
    }
}
