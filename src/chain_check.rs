//! `check --chain` (like Hyper-V's `Test-VHD`): every link of a
//! differencing chain is opened on its own and checked against what its
//! child records (identity), and the first link where the chain breaks is
//! named with the locations its child records. When the chain holds, the
//! whole chain's `check` report is attached.
//!
//! A link of another virtual size than its child does not break the
//! chain when its identity is the recorded one: the child was resized,
//! and reads the parent up to the smaller size and zeros past the
//! parent's end, as opening the chain does.

use std::path::{Path, PathBuf};

use serde::Serialize;
use uuid::Uuid;

use crate::chain::{ChildLayer, MAX_CHAIN_DEPTH};
use crate::disk::VirtualDisk;
use crate::error::Result;
use crate::parent::ParentSpec;
use crate::report::{CheckReport, Format};
use crate::vhd::VhdDisk;
use crate::vhdx::VhdxDisk;
use crate::{OpenOptions, detect};

/// One image of the chain, child first.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    /// Where it was found.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its virtual size.
    pub virtual_size: u64,
    /// The identity its children record (VHD unique id, VHDX DataWriteGuid).
    pub id: Option<Uuid>,
    /// The parent identity it records, when it is differencing.
    pub expected_parent_id: Option<Uuid>,
    /// The parent locations it records, best first, as stored.
    pub locators: Vec<String>,
}

/// Why the chain breaks.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Break {
    /// A link does not open (damaged, unreadable, not an image).
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The error.
        error: String,
    },
    /// No recorded location holds a file.
    Missing {
        /// The locations tried.
        tried: Vec<PathBuf>,
    },
    /// The file found is not the recorded parent.
    IdMismatch {
        /// The file found.
        path: PathBuf,
        /// The id the child records.
        expected: Uuid,
        /// The id the file has.
        found: Option<Uuid>,
    },
    /// A recorded location leads back into the chain.
    Loop {
        /// The file already in the chain.
        path: PathBuf,
    },
    /// Deeper than the chain depth limit (`MAX_CHAIN_DEPTH`).
    TooDeep,
}

/// The result of [`check_chain`].
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    /// The links opened, child first.
    pub links: Vec<Link>,
    /// Where the chain breaks: the index of the link whose parent could
    /// not be used (in `links`), and why.
    pub broken: Option<(usize, Break)>,
    /// The whole chain's check, when it holds (or when the image itself
    /// did not open, its error).
    pub check: Option<CheckReport>,
}

impl ChainReport {
    /// Exit status as `check` has it: 0 clean, 2 corrupt, 3 leaked space
    /// only, 1 a broken chain with no damage found.
    pub fn exit_code(&self) -> i32 {
        match (&self.broken, &self.check) {
            (None, Some(c)) => c.exit_code(),
            (Some(_), Some(c)) if c.exit_code() == 2 => 2,
            _ => 1,
        }
    }

    /// The report for people.
    pub fn write_text(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        for (i, l) in self.links.iter().enumerate() {
            writeln!(
                w,
                "link {i}: {} ({}, {} bytes, id {})",
                l.path.display(),
                l.format.as_str(),
                l.virtual_size,
                l.id.map_or("-".to_string(), |u| u.to_string())
            )?;
            if let Some(e) = l.expected_parent_id {
                writeln!(w, "  records parent id {e} at: {}", l.locators.join(", "))?;
            }
        }
        match &self.broken {
            None => writeln!(w, "chain of {} image(s) is complete", self.links.len())?,
            Some((i, b)) => {
                let at = self.links.get(*i).map_or_else(
                    || "the image".to_string(),
                    |l| format!("link {i} ({})", l.path.display()),
                );
                let why = match b {
                    Break::Unreadable { path, error } => {
                        format!("{} does not open: {error}", path.display())
                    }
                    Break::Missing { tried } => format!(
                        "its parent is missing; looked at: {}",
                        tried
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Break::IdMismatch {
                        path,
                        expected,
                        found,
                    } => format!(
                        "{} is not its parent: id {}, expected {expected}",
                        path.display(),
                        found.map_or("none".to_string(), |u| u.to_string())
                    ),
                    Break::Loop { path } => {
                        format!("its parent {} is already in the chain", path.display())
                    }
                    Break::TooDeep => format!("the chain is deeper than {MAX_CHAIN_DEPTH} images"),
                };
                writeln!(w, "chain breaks at {at}: {why}")?;
            }
        }
        if let Some(c) = &self.check {
            crate::report::write_check_text(c, w)?;
        }
        Ok(())
    }
}

/// One image opened alone: its link and what it records about its parent.
fn open_link(path: &Path, opts: &OpenOptions) -> Result<(Link, Option<ParentSpec>)> {
    let storage = crate::open_file(path, false, opts.force_share)?;
    let format = detect::resolve(&storage, opts.format)?;
    let layer_opts = OpenOptions {
        writable: false,
        ..opts.clone()
    };
    let p = Some(path.to_path_buf());
    let (size, id, spec) = match format {
        Format::Vhd => {
            let d = VhdDisk::open_layer(Box::new(storage), p, &layer_opts)?;
            (d.virtual_size(), d.parent_link_id(), d.parent_spec()?)
        }
        Format::Vhdx => {
            let d = VhdxDisk::open_layer(Box::new(storage), p, &layer_opts)?;
            (d.virtual_size(), d.parent_link_id(), d.parent_spec()?)
        }
        _ => {
            let d = crate::open(path, &layer_opts)?;
            (d.virtual_size(), d.parent_link_id(), None)
        }
    };
    let link = Link {
        path: path.to_path_buf(),
        format,
        virtual_size: size,
        id,
        expected_parent_id: spec.as_ref().map(|s| s.expected_id),
        locators: spec
            .as_ref()
            .map(|s| s.candidates.iter().map(|c| c.recorded.clone()).collect())
            .unwrap_or_default(),
    };
    Ok((link, spec))
}

/// Walk and check the chain of `image` (see the module comment).
pub fn check_chain(image: &Path, opts: &OpenOptions) -> Result<ChainReport> {
    let mut links: Vec<Link> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut broken = None;
    let (first, mut spec) = open_link(image, opts)?;
    seen.push(std::fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf()));
    links.push(first);
    while let Some(sp) = spec.take() {
        let i = links.len() - 1;
        if links.len() > MAX_CHAIN_DEPTH {
            broken = Some((i, Break::TooDeep));
            break;
        }
        let child = &links[i];
        let dir = child
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut tried: Vec<PathBuf> = Vec::new();
        for c in &sp.candidates {
            let p = c.resolve(&dir);
            if !tried.contains(&p) {
                tried.push(p);
            }
        }
        let existing: Vec<&PathBuf> = tried.iter().filter(|p| p.is_file()).collect();
        if existing.is_empty() {
            broken = Some((i, Break::Missing { tried }));
            break;
        }
        // The first that matches wins, as when the chain is opened;
        // otherwise the first found is reported.
        let mut chosen: Option<(Link, Option<ParentSpec>)> = None;
        let mut first_problem: Option<Break> = None;
        for p in existing {
            let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            if seen.contains(&canon) {
                first_problem.get_or_insert(Break::Loop { path: p.clone() });
                continue;
            }
            match open_link(p, opts) {
                Err(e) => {
                    first_problem.get_or_insert(Break::Unreadable {
                        path: p.clone(),
                        error: e.to_string(),
                    });
                }
                Ok((l, _)) if l.id != Some(sp.expected_id) => {
                    first_problem.get_or_insert(Break::IdMismatch {
                        path: p.clone(),
                        expected: sp.expected_id,
                        found: l.id,
                    });
                }
                Ok(found) => {
                    seen.push(canon);
                    chosen = Some(found);
                    break;
                }
            }
        }
        match chosen {
            Some((l, s)) => {
                links.push(l);
                spec = s;
            }
            None => {
                broken = first_problem.map(|b| (i, b));
                break;
            }
        }
    }
    let check = crate::check(image, opts, false).ok();
    Ok(ChainReport {
        links,
        broken,
        check,
    })
}
