//! Opening the images a command reads or writes: options from the
//! command line, `--key` only for encrypted images, `-U` warnings and
//! refusals, and the warnings people should see on stderr.

use std::path::Path;
use std::sync::Arc;

use vhdkit::report::Format;
use vhdkit::{Error, OpenOptions, VirtualDisk};

use super::args::{ParentArgs, SalvageArg};
use super::fail1;

impl SalvageArg {
    /// The log to open the images with, if salvaging.
    pub fn log(&self) -> Option<Arc<vhdkit::damage::SalvageLog>> {
        self.salvage.then(vhdkit::damage::SalvageLog::new)
    }
}

impl ParentArgs {
    /// The library's open options these arguments ask for.
    pub fn options(&self) -> OpenOptions {
        let mut o = OpenOptions::new()
            .print_warnings(true)
            .ignore_parent_id(self.ignore_parent_id)
            .parent_path(self.parent_file.clone())
            .format(self.image_format.map(Format::from))
            .force_share(self.force_share);
        o.keys = self.key.clone();
        o.trust = self.trust.clone();
        o.require_signed = self.require_signed;
        o
    }

    /// Refuse `--key` unless one of `images` (path and format) is an EVHD:
    /// a user who believes an image encrypted must learn that it is not,
    /// before reading it or writing plaintext into it.
    fn refuse_key(&self, images: &[(&Path, Format)]) -> Result<(), Error> {
        if self.key.is_empty() || images.iter().any(|(_, f)| *f == Format::Evhd) {
            return Ok(());
        }
        let what: Vec<String> = images
            .iter()
            .map(|(p, f)| {
                format!(
                    "{} is a {} image",
                    p.display(),
                    vhdkit::unstable::detect::format_name(*f)
                )
            })
            .collect();
        Err(Error::invalid_argument(format!(
            "--key is for encrypted (EVHD) images; {}",
            what.join(" and ")
        )))
    }

    /// Refuse `--key` unless one of `images` is an EVHD, judged from the
    /// files' signatures before anything opens them (a writable open may
    /// already change a file, e.g. replay a VHDX log). Files that cannot be
    /// read or resolved are left for the open to report.
    pub fn refuse_key_for(&self, images: &[&Path], opts: &OpenOptions) -> Result<(), Error> {
        if self.key.is_empty() {
            return Ok(());
        }
        let mut found = Vec::new();
        for &image in images {
            match vhdkit::unstable::open_file(image, false, opts.force_share)
                .and_then(|s| vhdkit::unstable::detect::resolve(&s, opts.format))
            {
                Ok(format) => found.push((image, format)),
                Err(_) => return Ok(()),
            }
        }
        self.refuse_key(&found)
    }

    /// Open `image` for a command; `--key` must be for an EVHD.
    pub fn open(&self, image: &Path, opts: &OpenOptions) -> Result<vhdkit::Disk, Error> {
        self.refuse_key_for(&[image], opts)?;
        let disk = vhdkit::open(image, opts).map_err(|e| force_share_hint(e, opts.writable))?;
        // A parent that is not the recorded one is only ever opened for
        // inspection or on --ignore-parent-id: say so where people look.
        if opts.ignore_parent_id || opts.allow_missing_parent {
            let info = disk.info();
            for w in info.parent_mismatch_warnings() {
                let mut w = w.clone();
                super::say_warning_hint(&mut w);
                eprintln!("vhdkit: warning: {}: {w}", image.display());
            }
        }
        Ok(disk)
    }

    /// With `-U`, warn that `images` are read without their locks.
    pub fn warn_force_share(&self, images: &[&Path]) {
        if self.force_share {
            warn_force_share(images);
        }
    }

    /// `-U` on a command that writes `image` is an error.
    pub fn refuse_force_share(&self, image: &Path, what: &str) -> Result<(), (Error, u8)> {
        refuse_force_share(self.force_share, image, what)
    }
}

/// For a read-only open by a command that takes `-U`: say that `-U` reads
/// an image that is in use (or cannot be locked) anyway.
pub fn force_share_hint(e: Error, writable: bool) -> Error {
    if !writable && vhdkit::unstable::io::force_share_would_help(&e) {
        e.with_note(" (-U/--force-share reads it without a lock)")
    } else {
        e
    }
}

/// Warn that `images` are opened without their locks (`-U`).
pub fn warn_force_share(images: &[&Path]) {
    for image in images {
        eprintln!(
            "vhdkit: warning: {}: opened with -U/--force-share, without a lock: if another program is writing it, what is read may be inconsistent",
            image.display()
        );
    }
}

/// `-U` opens read-only: refuse it on a command that writes `image`.
pub fn refuse_force_share(force_share: bool, image: &Path, what: &str) -> Result<(), (Error, u8)> {
    if force_share {
        return Err(fail1(
            Error::invalid_argument(format!(
                "-U/--force-share opens images read-only and cannot be used with {what}"
            ))
            .with_path(image),
        ));
    }
    Ok(())
}

/// Print the warning about an EVHD image's signature (unsigned, or by an
/// untrusted key) on stderr; `info` and `check` show it too.
pub fn warn_signature(disk: &dyn VirtualDisk, path: &Path) {
    let mut info = disk.info();
    super::say_info_hints(&mut info);
    if let Some(w) = info
        .details
        .evhd()
        .and_then(|e| e.signature.warning().map(str::to_string))
    {
        eprintln!("vhdkit: warning: {}: {w}", path.display());
    }
}

/// Refuse to write an output over one of the inputs: the same path, or
/// another name (a hard or symbolic link) of the same file, judged by
/// device and inode where the system has them.
pub fn refuse_same_file(input: &Path, output: &Path) -> vhdkit::Result<()> {
    if same_file(input, output) {
        return Err(Error::invalid_argument(format!(
            "the output {} is also an input",
            output.display()
        )));
    }
    Ok(())
}

/// Whether `a` and `b` name one existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    matches!(
        (std::fs::canonicalize(a), std::fs::canonicalize(b)),
        (Ok(x), Ok(y)) if x == y
    )
}
