//! Writing key files safely: a private key never lands in a file that
//! others can read, and no key is ever written through a symbolic link.
//!
//! The content goes to a new temporary file in the target's directory,
//! created exclusively (`O_CREAT | O_EXCL`, which also refuses a symbolic
//! link in its place) with mode 0600, then is synced and renamed over the
//! target, and the directory is synced. The file that ends up at the target
//! is therefore always a fresh one whose permissions this module chose: an
//! existing file's permissions (say 0644) are not inherited, and a crash
//! leaves either the old file or the complete new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand_core::RngCore;

use crate::error::{Error, ErrorKind, Hint, Result};
use crate::evhd::keys::{PrivateKey, PublicKey};

pub mod report;

/// Permissions of a private key file: owner read and write only.
pub const PRIVATE_MODE: u32 = 0o600;
/// Permissions of a public key file: readable by everyone, as public keys
/// are meant to be handed out.
pub const PUBLIC_MODE: u32 = 0o644;
/// Attempts at finding an unused temporary name before giving up (each
/// name has 64 random bits, so a second attempt is already unlikely).
const TEMP_ATTEMPTS: usize = 8;
/// Bytes of the target's name kept in the temporary file's name, leaving
/// room for the process id, random part and suffix within 255 bytes.
const TEMP_NAME_PREFIX: usize = 200;

/// Whether a key file holds a private or a public key (in JSON reports
/// `"private"` or `"public"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Private key material: the file is made 0600.
    Private,
    /// A public key: the file is made 0644.
    Public,
}

impl KeyKind {
    /// Lowercase name, as in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Private => "private",
            KeyKind::Public => "public",
        }
    }

    /// The file mode this kind of key file gets.
    pub fn mode(self) -> u32 {
        match self {
            KeyKind::Private => PRIVATE_MODE,
            KeyKind::Public => PUBLIC_MODE,
        }
    }
}

/// The text form a key file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEncoding {
    /// The .NET `RSAKeyValue` XML form (KeyPair.xml); a public key keeps
    /// only `Modulus` and `Exponent`.
    Xml,
    /// PEM: PKCS#8 for a private key, SubjectPublicKeyInfo for a public one.
    Pem,
}

/// Save a private key as the key file `path`, created with mode 0600 (see
/// [`write_key_file`] for `force`, symbolic links and what a failure
/// leaves). The serialized key is wiped from memory once written.
pub fn save_private(
    path: &Path,
    key: &PrivateKey,
    encoding: KeyEncoding,
    force: bool,
) -> Result<()> {
    let text = match encoding {
        KeyEncoding::Xml => key.to_xml(),
        KeyEncoding::Pem => key.to_pem()?,
    };
    write_key_file(path, text.as_bytes(), KeyKind::Private, force)
}

/// Save a public key as the key file `path`, created with mode 0644 (see
/// [`write_key_file`]).
pub fn save_public(path: &Path, key: &PublicKey, encoding: KeyEncoding, force: bool) -> Result<()> {
    let text = match encoding {
        KeyEncoding::Xml => key.to_xml(),
        KeyEncoding::Pem => key.to_pem()?,
    };
    write_key_file(path, text.as_bytes(), KeyKind::Public, force)
}

/// A temporary file that is removed when dropped unless renamed into place.
struct TempFile {
    path: PathBuf,
    renamed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            crate::pending::discard(&self.path);
        }
    }
}

/// Write `bytes` as the key file `path`.
///
/// Refuses when `path` is a symbolic link (whatever `force` says; the link
/// and its target are left alone) and, without `force`, when `path` exists.
/// With `force` an existing file is replaced by a new one, so it does not
/// keep its permissions. On failure nothing is left behind but what was
/// there before.
pub fn write_key_file(path: &Path, bytes: &[u8], kind: KeyKind, force: bool) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "refusing to write a key file through a symbolic link; give the real path",
            )
            .with_path(path));
        }
        Ok(m) if !m.is_file() => crate::device::refuse_unless_replaceable(path, false)?,
        Ok(_) if !force => {
            return Err(Error::io(
                io::Error::from(io::ErrorKind::AlreadyExists),
                "cannot create the key file",
            )
            .with_hint(Hint::ReplaceKeyFile)
            .with_path(path));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::io(e, "cannot examine the key file's path")
                .with_path(path)
                .for_output(path, path));
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    crate::pending::reclaim_stale_noted(path);
    let (mut file, mut tmp) = create_temp(dir, path)?;
    let written = file
        .write_all(bytes)
        .and_then(|_| set_mode(&file, kind.mode()))
        .and_then(|_| file.sync_all());
    drop(file);
    written.map_err(|e| {
        Error::io(e, "cannot write the key file")
            .with_path(&tmp.path)
            .for_output(&tmp.path, path)
    })?;
    place(&tmp.path, path, force)?;
    tmp.renamed = true;
    sync_dir(dir).map_err(|e| {
        Error::io(
            e,
            "the key file was written but its directory could not be synced",
        )
        .with_path(dir)
    })
}

/// Create a new, empty temporary file beside `dest` with mode 0600.
fn create_temp(dir: &Path, dest: &Path) -> Result<(File, TempFile)> {
    let mut name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".into());
    // Keep the temporary name within the usual 255-byte limit.
    let mut end = name.len().min(TEMP_NAME_PREFIX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let tmp = dir.join(format!(
            ".{name}.vhdkit-{}-{:016x}.tmp",
            std::process::id(),
            rand_core::OsRng.next_u64()
        ));
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(PRIVATE_MODE);
        }
        let opened = crate::pending::create(&tmp, || o.open(&tmp));
        if opened.is_err() {
            crate::pending::forget(&tmp);
        }
        match opened {
            Ok(f) => {
                // Held while the key is written: a later run's clean-up
                // removes only temporary files nobody holds locked.
                let _ = f.try_lock();
                return Ok((
                    f,
                    TempFile {
                        path: tmp,
                        renamed: false,
                    },
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(Error::io(
                    e,
                    "cannot create the key file (through a temporary file beside it)",
                )
                .with_path(&tmp)
                .for_output(&tmp, dest));
            }
        }
    }
    Err(Error::io(
        last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)),
        "cannot find an unused temporary key file name",
    )
    .with_path(dir))
}

/// Move the finished temporary file to `dest`. Without `force` this must
/// not replace a file that appeared meanwhile (symbolic links included):
/// see [`crate::io::rename_into_place`].
fn place(tmp: &Path, dest: &Path, force: bool) -> Result<()> {
    // Checked again right before the rename: only a regular file is replaced.
    crate::device::refuse_unless_replaceable(dest, false)?;
    crate::pending::commit(tmp, || crate::io::rename_into_place(tmp, dest, force)).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            Error::io(e, "cannot create the key file")
                .with_hint(Hint::ReplaceKeyFile)
                .with_path(dest)
        } else {
            Error::io(e, "cannot move the key file into place").with_path(dest)
        }
    })
}

/// Set the permissions of an open file, whatever the umask made of them.
#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Make a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    /// Without force an existing file is an error and stays as it was.
    #[test]
    fn existing_file_needs_force() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.xml");
        fs::write(&p, b"old").unwrap();
        let e = write_key_file(&p, b"new", KeyKind::Private, false).unwrap_err();
        assert_eq!(e.hint(), Some(Hint::ReplaceKeyFile), "{e}");
        assert!(!e.to_string().contains("--"), "no option named: {e}");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        write_key_file(&p, b"new", KeyKind::Private, true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert!(leftovers(d.path()).is_empty());
    }

    /// A target name near the 255-byte limit still gets a temporary file.
    #[test]
    fn long_names_are_written() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k".repeat(250));
        write_key_file(&p, b"key", KeyKind::Private, false).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"key");
        assert!(leftovers(d.path()).is_empty());
    }

    /// A new public key file holds the bytes and is made 0644.
    #[test]
    fn new_file_is_written() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pub.xml");
        write_key_file(&p, b"key", KeyKind::Public, false).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, PUBLIC_MODE);
        }
    }

    #[cfg(unix)]
    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A saved private key is 0600 in both encodings, even when it replaces
    /// a world-readable file, and reads back as the same key; its public
    /// half is 0644 and reads back as public.
    #[test]
    fn saved_keys_get_their_modes_and_read_back() {
        use crate::evhd::keys::KeyFile;
        let d = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate(2048).unwrap();
        for enc in [KeyEncoding::Xml, KeyEncoding::Pem] {
            let p = d.path().join(format!("k-{enc:?}"));
            fs::write(&p, b"old").unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            }
            assert!(save_private(&p, &key, enc, false).is_err());
            save_private(&p, &key, enc, true).unwrap();
            #[cfg(unix)]
            assert_eq!(mode_of(&p), PRIVATE_MODE, "{enc:?}");
            let back = KeyFile::read(&p).unwrap().into_private().unwrap();
            assert_eq!(back.fingerprint(), key.fingerprint());

            let q = d.path().join(format!("pub-{enc:?}"));
            save_public(&q, key.public(), enc, false).unwrap();
            #[cfg(unix)]
            assert_eq!(mode_of(&q), PUBLIC_MODE, "{enc:?}");
            let back = KeyFile::read(&q).unwrap();
            assert!(matches!(back, KeyFile::Public(_)));
            assert_eq!(back.public().fingerprint(), key.fingerprint());
        }
        assert!(leftovers(d.path()).is_empty());
    }

    /// A symbolic link is never written through, even with force.
    #[cfg(unix)]
    #[test]
    fn symlinks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = write_key_file(&link, b"secret", KeyKind::Private, true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
