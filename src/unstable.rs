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
//! Each module below mirrors the internal module of the same name.

use std::path::Path;

use crate::{OpenOptions, Result, VirtualDisk};

/// Open the file of an image, locked unless `force_share`.
pub fn open_file(path: &Path, writable: bool, force_share: bool) -> Result<io::FileStorage> {
    crate::open_file(path, writable, force_share)
}

/// Open an image held in `storage` (for example an in-memory file);
/// `path`, if any, locates its parent.
pub fn open_storage(
    storage: Box<dyn io::Storage>,
    path: Option<&Path>,
    opts: &OpenOptions,
    chain: &chain::Chain,
) -> Result<Box<dyn VirtualDisk>> {
    crate::open_storage(storage, path, opts, chain)
}

/// The chain composer: opens parents, checks identities, limits depth.
pub mod chain {
    pub use crate::chain::*;
}

/// CRC-32C helpers of the on-disk checksums.
pub mod checksum {
    pub use crate::checksum::*;
}

/// Format detection from signatures.
pub mod detect {
    pub use crate::detect::*;
}

/// Writing an image onto a block device or file in place (`convert --device`).
pub mod device {
    pub use crate::device::*;
}

/// The core disk trait and its optional capabilities.
pub mod disk {
    pub use crate::disk::*;
}

/// The encrypted container's on-disk structures, keys and checker.
pub mod evhd {
    pub use crate::evhd::*;
}

/// What kind of file a path names (regular file, block device, FIFO, ...).
pub mod filekind {
    pub use crate::filekind::*;
}

/// Fixed-size on-disk structures declared with binrw.
pub mod fixed {
    pub use crate::fixed::*;
}

/// GUIDs in their on-disk (mixed-endian) form.
pub mod guid {
    pub use crate::guid::*;
}

/// Storage backends (files, memory) with positional I/O.
pub mod io {
    pub use crate::io::*;
}

/// Image locks (flock and qemu's lock bytes).
pub mod lock {
    pub use crate::lock::*;
}

/// Parent chains: locating, identity checks, depth limits.
pub mod parent {
    pub use crate::parent::*;
}

/// Output files being written and their crash recovery.
pub mod pending {
    pub use crate::pending::*;
}

/// Flat (raw) disks.
pub mod raw {
    pub use crate::raw::*;
}

/// Finding the data and holes of sparse files.
pub mod sparse {
    pub use crate::sparse::*;
}

/// VHD structures, disk, builder and checker.
pub mod vhd {
    pub use crate::vhd::*;
}

/// VHDX structures, log, disk, builder and checker.
pub mod vhdx {
    pub use crate::vhdx::*;
}
