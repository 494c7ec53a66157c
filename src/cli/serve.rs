//! `serve`: images as NBD exports on a Unix socket (default) or TCP, until
//! a signal; the library's `vhdkit::nbd` does the serving.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vhdkit::Error;
use vhdkit::nbd::{Export, ServeOptions, Server};

use super::args::{ParentArgs, ServeArgs};
use super::open::warn_signature;
use super::{Outcome, fail1, signals};

/// `vhdkit serve`.
pub fn serve(a: ServeArgs) -> Outcome {
    if a.export_name.len() > a.images.len() {
        return Err(fail1(Error::invalid_argument(format!(
            "{} --export-name for {} images",
            a.export_name.len(),
            a.images.len()
        ))));
    }
    // -U reads images without their locks: never write them then.
    let read_only = a.read_only || a.parent.force_share;
    let opts = a.parent.options().writable(!read_only);
    // Several images: --key is for those of them that are EVHD (one must
    // be); the others open without it.
    let several = a.images.len() > 1 && !a.parent.key.is_empty();
    if several {
        let all: Vec<&Path> = a.images.iter().map(PathBuf::as_path).collect();
        a.parent.refuse_key_for(&all, &opts).map_err(fail1)?;
    }
    let keyless = ParentArgs {
        key: Vec::new(),
        ..a.parent.clone()
    };
    let keyless_opts = keyless.options().writable(!read_only);
    let mut exports = Vec::new();
    for (i, image) in a.images.iter().enumerate() {
        let disk = if several && !is_evhd(image, &opts) {
            keyless.open(image, &keyless_opts)
        } else {
            a.parent.open(image, &opts)
        }
        .map_err(fail1)?;
        warn_signature(disk.as_ref(), image);
        let name = match a.export_name.get(i) {
            Some(n) => n.clone(),
            None => image
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if exports.iter().any(|e: &Export| e.name() == name) {
            return Err(fail1(Error::invalid_argument(format!(
                "two exports are named {name:?} (use --export-name)"
            ))));
        }
        exports.push(Export::new(name, disk, read_only).map_err(fail1)?);
    }
    let server = Server::new(
        exports,
        ServeOptions::new()
            .once(a.once)
            .max_connections(a.max_connections),
    )
    .map_err(fail1)?;
    let names: Vec<String> = server.exports().map(|e| e.name().to_string()).collect();
    let stop = server.stop_handle();
    let served = match &a.bind {
        Some(addr) => {
            let l = TcpListener::bind(addr.as_str())
                .map_err(|e| fail1(Error::io(e, format!("cannot listen on {addr}"))))?;
            let at = l
                .local_addr()
                .map_err(|e| fail1(Error::io(e, "cannot read the address listened on")))?;
            // Signals are handled before anything is printed: whoever
            // signals as soon as it reads a line finds them handled.
            let remove = a.pid_file.iter().cloned().collect();
            signals::stop_on_signals(move || stop.stop(), remove);
            if !at.ip().is_loopback() {
                eprintln!(
                    "vhdkit: warning: serving on {at}, reachable from other machines: NBD has no authentication, anyone who can connect {}",
                    if read_only {
                        "can read the images"
                    } else {
                        "can read and write the images (--read-only refuses writes)"
                    }
                );
            }
            // The pid file first: whoever reads the URI may look for it.
            let _pid = PidFile::write(a.pid_file.as_deref())?;
            announce(names.iter().map(|n| format!("nbd://{at}/{}", encode(n))));
            server.serve(&l)
        }
        None => {
            let path = a.socket.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("vhdkit-nbd-{}.sock", std::process::id()))
            });
            let l = bind_unix(&path).map_err(fail1)?;
            let _socket = RemoveOnDrop(path.clone());
            let p = encode(&path.to_string_lossy());
            let _pid = PidFile::write(a.pid_file.as_deref())?;
            let remove = std::iter::once(path.clone())
                .chain(a.pid_file.iter().cloned())
                .collect();
            signals::stop_on_signals(move || stop.stop(), remove);
            announce(
                names
                    .iter()
                    .map(|n| format!("nbd+unix:///{}?socket={p}", encode(n))),
            );
            server.serve(&l)
        }
    };
    let mut first = served.err();
    for mut disk in server.into_disks() {
        if let Err(e) = disk.close()
            && first.is_none()
        {
            first = Some(e);
        }
    }
    match first {
        Some(e) => Err(fail1(e)),
        None => Ok(0),
    }
}

/// Whether `image` is an EVHD, judged from its signature (a file that
/// cannot be read is left for the open to report).
fn is_evhd(image: &Path, opts: &vhdkit::OpenOptions) -> bool {
    vhdkit::unstable::open_file(image, false, opts.force_share)
        .and_then(|s| vhdkit::unstable::detect::resolve(&s, opts.format))
        .is_ok_and(|f| f == vhdkit::report::Format::Evhd)
}

/// Print the URIs clients connect to, one a line, at once.
fn announce(uris: impl Iterator<Item = String>) {
    let mut out = std::io::stdout().lock();
    for u in uris {
        let _ = writeln!(out, "{u}");
    }
    let _ = out.flush();
}

/// Listen on the Unix socket `path`; a socket file left by a server that
/// is gone (nothing accepts on it) is replaced, anything else is refused.
fn bind_unix(path: &Path) -> vhdkit::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::invalid_argument(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::invalid_argument(format!(
                "{} is in use by another server",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io(e, "cannot remove a stale socket").with_path(path))?;
    }
    UnixListener::bind(path).map_err(|e| Error::io(e, "cannot listen").with_path(path))
}

/// Percent-encode `s` for a URI path or query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A file removed when the server exits.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The `--pid-file`, written whole (temporary name, then rename); the
/// guard removes it on exit.
struct PidFile;

impl PidFile {
    fn write(path: Option<&Path>) -> Result<Option<RemoveOnDrop>, (Error, u8)> {
        let Some(path) = path else {
            return Ok(None);
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                fail1(Error::io(e, "cannot write the pid file").with_path(path))
            })?;
        Ok(Some(RemoveOnDrop(path.to_path_buf())))
    }
}
