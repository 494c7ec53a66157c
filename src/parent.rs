//! The parent of a differencing image: what the child records about it
//! ([`ParentSpec`]), the parent as found ([`Parent`]), and the children of
//! an image ([`children_beside`]).
//!
//! Formats only report the [`ParentSpec`]; [`crate::chain`] opens the
//! parent, checks its identity and bounds the chain.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::disk::VirtualDisk;
use crate::error::{Error, ErrorKind, Result};
use crate::report::{ParentInfo, Warning, WarningKind};

pub use crate::chain::{Chain, MAX_CHAIN_DEPTH};

/// One place where the parent may be, as recorded in the child.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The path as stored (Windows separators allowed).
    pub recorded: String,
    /// Whether it is relative to the child's folder.
    pub relative: bool,
    /// The child's structure that records it, for errors.
    pub structure: &'static str,
    /// Byte offset of that record in the child.
    pub offset: u64,
}

impl Candidate {
    /// The recorded path as a path on this system.
    pub fn resolve(&self, child_dir: &Path) -> PathBuf {
        let mut s = self.recorded.replace('\\', std::path::MAIN_SEPARATOR_STR);
        let dot = format!(".{}", std::path::MAIN_SEPARATOR);
        while let Some(rest) = s.strip_prefix(&dot) {
            s = rest.to_string();
        }
        // A recorded absolute path (perhaps a Windows one such as `C:\x`,
        // which is never absolute here) is taken as it is.
        if self.relative {
            child_dir.join(s)
        } else {
            PathBuf::from(s)
        }
    }
}

/// What a child knows about its parent.
#[derive(Debug, Clone)]
pub struct ParentSpec {
    /// Where to look, best first.
    pub candidates: Vec<Candidate>,
    /// The identity the parent must have (see [`VirtualDisk::parent_link_id`]).
    pub expected_id: Uuid,
    /// What that identity is called in the parent's format, for people
    /// ([`DATA_WRITE_ID`] or [`UNIQUE_ID`]).
    pub id_name: &'static str,
}

/// The name of a VHDX's DataWriteGuid, the identity its children record:
/// it changes whenever the VHDX's data is first written after an open.
pub const DATA_WRITE_ID: &str = "data write id";
/// The name of a VHD footer's unique id, the identity its children record:
/// it stays for the disk's life (writes do not change it).
pub const UNIQUE_ID: &str = "unique id";

/// The parent of a differencing image.
pub enum Parent {
    /// Found and open read-only: verified, or with `ignore_parent_id` taken
    /// although its identity differs (then `found_id` is not `expected_id`).
    Open {
        /// The open parent.
        disk: Box<dyn VirtualDisk>,
        /// Where it was found.
        path: PathBuf,
        /// The identity the child expected.
        expected_id: Uuid,
        /// The identity the parent has.
        found_id: Option<Uuid>,
        /// What the identity is called ([`DATA_WRITE_ID`], [`UNIQUE_ID`]).
        id_name: &'static str,
    },
    /// Found, but its identity is not the one the child recorded (the
    /// parent was written or replaced after the child was made). Opened
    /// only for inspection (`allow_missing_parent`); reading a range that
    /// needs the parent fails with `ParentMismatch`.
    Mismatched {
        /// Where it was found.
        path: PathBuf,
        /// The identity the child expected.
        expected_id: Uuid,
        /// The identity the parent has.
        found_id: Option<Uuid>,
        /// What the identity is called ([`DATA_WRITE_ID`], [`UNIQUE_ID`]).
        id_name: &'static str,
    },
    /// Not found; reading a range that needs it fails with `ParentMissing`.
    Missing {
        /// The most telling recorded location.
        recorded: String,
        /// The identity the child expected.
        expected_id: Uuid,
    },
}

impl std::fmt::Debug for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.info();
        write!(f, "Parent({:?}, found={})", i.path, i.found)
    }
}

impl Parent {
    /// Read from the parent; bytes past its end read as zeros.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self {
            Parent::Open { disk, .. } => {
                let size = disk.virtual_size();
                let avail = size.saturating_sub(offset).min(buf.len() as u64) as usize;
                if avail > 0 {
                    disk.read_at(&mut buf[..avail], offset)?;
                }
                buf[avail..].fill(0);
                Ok(())
            }
            Parent::Missing {
                recorded,
                expected_id,
            } => Err(missing_error(recorded, *expected_id, &[])),
            Parent::Mismatched {
                path,
                expected_id,
                found_id,
                id_name,
            } => Err(mismatch_error(path, *expected_id, *found_id, id_name)),
        }
    }

    /// The parent disk, when it is open.
    pub fn open_disk(&self) -> Option<&dyn VirtualDisk> {
        match self {
            Parent::Open { disk, .. } => Some(disk.as_ref()),
            _ => None,
        }
    }

    /// The warning for a parent whose identity is not the recorded one
    /// (`None` when it matches or was not found).
    pub fn warning(&self) -> Option<Warning> {
        match self {
            Parent::Open {
                path,
                expected_id,
                found_id,
                id_name,
                ..
            } if *found_id != Some(*expected_id) => Some(
                Warning::new(
                    WarningKind::ParentMismatchIgnored,
                    format!(
                        "{}; it is read anyway, so the data may be inconsistent",
                        mismatch_text(path, *expected_id, *found_id, id_name)
                    ),
                )
                .with_hint(crate::Hint::IgnoreParentId),
            ),
            Parent::Mismatched {
                path,
                expected_id,
                found_id,
                id_name,
            } => Some(
                Warning::new(
                    WarningKind::ParentMismatchRefused,
                    format!(
                        "{}; reading the child's data is refused",
                        mismatch_text(path, *expected_id, *found_id, id_name)
                    ),
                )
                .with_hint(crate::Hint::IgnoreParentId),
            ),
            _ => None,
        }
    }

    /// [`Parent::warning`], then the same warnings of the parent's own
    /// parents (a mismatch anywhere up the chain), nearest first.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut v: Vec<Warning> = self.warning().into_iter().collect();
        if let Parent::Open { disk, .. } = self {
            v.extend(
                disk.info()
                    .warnings
                    .into_iter()
                    .filter(|w| w.kind.is_parent_mismatch()),
            );
        }
        v
    }

    /// For `info`.
    pub fn info(&self) -> ParentInfo {
        match self {
            Parent::Open {
                path,
                expected_id,
                found_id,
                id_name,
                ..
            }
            | Parent::Mismatched {
                path,
                expected_id,
                found_id,
                id_name,
            } => ParentInfo {
                path: Some(path.display().to_string()),
                id: Some(expected_id.to_string()),
                found: true,
                found_id: found_id.map(|u| u.to_string()),
                id_matches: Some(*found_id == Some(*expected_id)),
                id_name: Some(id_name.to_string()),
                read_refused: matches!(self, Parent::Mismatched { .. }),
            },
            Parent::Missing {
                recorded,
                expected_id,
            } => ParentInfo {
                path: Some(recorded.clone()),
                id: Some(expected_id.to_string()),
                found: false,
                found_id: None,
                id_matches: None,
                id_name: None,
                read_refused: false,
            },
        }
    }
}

/// The mismatch said for people: both ids and what it means.
fn mismatch_text(path: &Path, expected: Uuid, found: Option<Uuid>, id_name: &str) -> String {
    format!(
        "parent {} has {id_name} {}, but the child expects {expected}: the parent was written to or replaced after the child was made",
        path.display(),
        found.map_or_else(|| "(none)".to_string(), |u| u.to_string()),
    )
}

pub(crate) fn mismatch_error(
    path: &Path,
    expected: Uuid,
    found: Option<Uuid>,
    id_name: &str,
) -> Error {
    Error::new(
        ErrorKind::ParentMismatch,
        format!(
            "{}, so the child's data may be inconsistent",
            mismatch_text(path, expected, found, id_name)
        ),
    )
    .with_hint(crate::Hint::IgnoreParentId)
}

pub(crate) fn missing_error(recorded: &str, id: Uuid, tried: &[PathBuf]) -> Error {
    let mut msg = format!("parent image {recorded} (id {id}) not found");
    if !tried.is_empty() {
        let t: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        msg.push_str(&format!("; looked at: {}", t.join(", ")));
    }
    Error::new(ErrorKind::ParentMissing, msg)
}

/// Most files [`children_beside`] looks at in one folder, so that writing
/// into an image in a folder of thousands of images stays quick.
pub const MAX_CHILD_SCAN: usize = 4096;

/// Extensions (lower case) of the files that may be differencing children.
pub const CHILD_EXTENSIONS: [&str; 4] = ["vhd", "vhdx", "avhd", "avhdx"];

/// What [`children_beside`] found.
#[derive(Debug, Clone, Default)]
pub struct ChildScan {
    /// Children that record the image as their parent, under the image's
    /// current identity, sorted by path.
    pub children: Vec<PathBuf>,
    /// Whether the folder held more candidate files than [`MAX_CHILD_SCAN`]
    /// (the rest were not looked at).
    pub truncated: bool,
}

/// The children beside `image` that record its current identity, when
/// `image` is of `format` (an identity change of that format breaks them:
/// a VHDX's DataWriteGuid on rebase, a VHD's unique id on reset); none for
/// an image of another format.
pub(crate) fn children_if(image: &Path, format: crate::report::Format) -> Result<Vec<PathBuf>> {
    let storage = crate::open_file(image, false, false)?;
    if crate::detect::resolve(&storage, None)? != format {
        return Ok(Vec::new());
    }
    drop(storage);
    let opts = crate::OpenOptions::default().allow_missing_parent(true);
    let d = crate::open(image, &opts)?;
    let Some(id) = d.parent_link_id() else {
        return Ok(Vec::new());
    };
    Ok(children_beside(image, id).children)
}

/// The differencing images in `image`'s folder (files named `*.vhd`,
/// `*.vhdx`, `*.avhd`, `*.avhdx`) that record `image` as their parent with
/// identity `id` (its [`VirtualDisk::parent_link_id`]): a recorded location
/// leads to `image` and the recorded id is `id`. Only each file's headers
/// are read, without locks; files that cannot be read are skipped.
pub fn children_beside(image: &Path, id: Uuid) -> ChildScan {
    let mut scan = ChildScan::default();
    let Ok(canon) = std::fs::canonicalize(image) else {
        return scan;
    };
    let Some(dir) = canon.parent() else {
        return scan;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return scan;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| CHILD_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .filter(|p| *p != canon)
        .collect();
    files.sort();
    if files.len() > MAX_CHILD_SCAN {
        files.truncate(MAX_CHILD_SCAN);
        scan.truncated = true;
    }
    for p in files {
        if !p.is_file() {
            continue;
        }
        let Ok(storage) = crate::io::FileStorage::open_force_share(&p) else {
            continue;
        };
        let spec = if crate::vhdx::probe(&storage) {
            crate::vhdx::parent_spec_from_headers(&storage)
        } else if crate::vhd::probe(&storage) {
            crate::vhd::parent_spec_from_headers(&storage)
        } else {
            continue;
        };
        let Ok(Some(spec)) = spec else { continue };
        if spec.expected_id != id {
            continue;
        }
        let names_image = spec
            .candidates
            .iter()
            .any(|c| std::fs::canonicalize(c.resolve(dir)).is_ok_and(|q| q == canon));
        if names_image {
            scan.children.push(p);
        }
    }
    scan
}
