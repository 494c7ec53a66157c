//! Helpers shared by the integration tests: real fixtures, oracles (qemu-img,
//! libvhdi, openssl), the CLI binary, the library, content generators,
//! hashing, byte-level readers and patchers for VHD and VHDX files, and a
//! fault-injecting storage.
//!
//! Every test binary includes this module (`mod common;`) and uses a
//! different subset of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod procs;
pub mod torn;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};
use vhdkit::{OpenOptions, VirtualDisk};

/// `../shared/fixtures/real` beside the crate (the shared folder is
/// `$VHDKIT_SHARED` instead of `../shared` when that is set), or `None`
/// (with a [`skip`] line) when a clone has no shared folder.
pub fn shared_dir() -> Option<PathBuf> {
    let shared = std::env::var_os("VHDKIT_SHARED").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
        PathBuf::from,
    );
    let dir = shared.join("fixtures/real");
    if dir.is_dir() {
        Some(dir)
    } else {
        skip(&format!("{} is absent", dir.display()));
        None
    }
}

/// Say that the running test skips, and why, where a person running
/// `cargo test` sees it: one line `SKIPPED <test>: <reason>` written
/// straight to the process's standard error (libtest captures only the
/// `print!` family, so this shows for passing tests too), and a line in
/// `target/skipped/<test binary>-<pid>.log` (see `.ci/skips`; the folder
/// is `$VHDKIT_SKIP_LOG_DIR` when that is set). The first
/// skip of a test binary arranges for a count of its skips to be printed
/// when it exits, after libtest's `test result` line.
pub fn skip(reason: &str) {
    use std::io::Write;
    static SKIPS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?").to_string();
    let line = format!("SKIPPED {test}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let log_dir = std::env::var_os("VHDKIT_SKIP_LOG_DIR").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("../skipped"),
        PathBuf::from,
    );
    let _ = std::fs::create_dir_all(&log_dir);
    let log = log_dir.join(format!("{bin}-{}.log", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(line.as_bytes());
    }
    let skips = SKIPS.get_or_init(|| {
        extern "C" fn summary() {
            let Some(skips) = SKIPS.get() else { return };
            let Ok(list) = skips.try_lock() else { return };
            let mut tests: Vec<&String> = list.iter().collect();
            tests.sort();
            tests.dedup();
            let msg = format!(
                "SKIPPED: {} test(s) of this binary skipped (their SKIPPED lines say why)\n",
                tests.len()
            );
            let _ = std::io::stderr().lock().write_all(msg.as_bytes());
        }
        // SAFETY: `summary` is a plain function that only writes to stderr.
        unsafe {
            libc::atexit(summary);
        }
        Mutex::new(Vec::new())
    });
    skips.lock().unwrap_or_else(|e| e.into_inner()).push(test);
}

/// The decompressed real image `name` (e.g. `dfvfs/image.vhd`), or `None`
/// when the shared fixtures are absent.
///
/// Images are gunzipped once into `CARGO_TARGET_TMPDIR/real/` keeping the
/// `dissect/` and `dfvfs/` folders, so images that refer to each other stay
/// side by side. The cache is re-made when the `.gz` changes (size and mtime
/// recorded in a stamp file) and is checked once per process. Treat the files
/// as read-only: copy them with [`real_image_copy`] before damaging them.
pub fn real_image(name: &str) -> Option<PathBuf> {
    static DONE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let src = shared_dir()?.join(format!("{name}.gz"));
    assert!(src.is_file(), "fixture {} is missing", src.display());
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = done.get(name) {
        return Some(p.clone());
    }
    let dest = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("real")
        .join(name);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let meta = std::fs::metadata(&src).unwrap();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let stamp_text = format!("{} {}", meta.len(), mtime);
    let stamp = dest.with_extension("stamp");
    let fresh =
        dest.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&stamp_text);
    if !fresh {
        // Unique temporary name then rename: other test processes may be
        // reading or making the same file at the same time.
        let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
        let out = std::fs::File::create(&tmp).unwrap();
        let status = Command::new("gzip")
            .arg("-dc")
            .arg(&src)
            .stdout(out)
            .status()
            .expect("gzip must be installed to decompress the real fixtures");
        assert!(status.success(), "gzip -dc {} failed", src.display());
        std::fs::rename(&tmp, &dest).unwrap();
        std::fs::write(&stamp, stamp_text).unwrap();
    }
    done.insert(name.to_string(), dest.clone());
    Some(dest)
}

/// A private, writable copy of real image `name` in `dir`.
pub fn real_image_copy(name: &str, dir: &Path) -> Option<PathBuf> {
    let src = real_image(name)?;
    let dest = dir.join(src.file_name().unwrap());
    std::fs::copy(&src, &dest).unwrap();
    Some(dest)
}

/// Whether an oracle is installed: `qemu-img`, `vhdiinfo`, `openssl` or
/// `pyvhdi` (the Python module under /usr/bin/python3). When it is missing
/// the test prints why and should return early; under CI (`CI` set) a
/// missing oracle is a failure instead. Probed once per process.
pub fn require_tool(name: &str) -> bool {
    static SEEN: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let present = *seen.entry(name.to_string()).or_insert_with(|| {
        let mut cmd = match name {
            "pyvhdi" => {
                let mut c = Command::new("/usr/bin/python3");
                c.args(["-c", "import pyvhdi"]);
                c
            }
            "vhdiinfo" => {
                let mut c = Command::new("vhdiinfo");
                c.arg("-V");
                c
            }
            "openssl" => {
                let mut c = Command::new("openssl");
                c.arg("version");
                c
            }
            // `-V` prints its version (no `--version`).
            "mkfs.xfs" => {
                let mut c = Command::new(name);
                c.arg("-V");
                c
            }
            // Its `-V` exits 1 (exfatprogs 1.2): looked up on PATH.
            "mkfs.exfat" => {
                let mut c = Command::new("sh");
                c.args(["-c", "command -v mkfs.exfat"]);
                c
            }
            other => {
                let mut c = Command::new(other);
                c.arg("--version");
                c
            }
        };
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !present {
        if std::env::var_os("CI").is_some() {
            panic!("{name} is not installed, and CI requires every oracle");
        }
        skip(&format!("{name} is not installed"));
    }
    present
}

/// Run a command and require success; panics with its output otherwise.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `vhdkit` binary built for these tests.
pub fn vhdkit_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vhdkit")
}

/// Run `vhdkit` with `args`; asserts it did not panic.
pub fn vhdkit<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(vhdkit_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vhdkit");
    assert_no_panic(&out);
    out
}

/// Neither a Rust panic (exit status 101) nor "panicked" on stderr.
pub fn assert_no_panic(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(101) && !err.contains("panicked"),
        "vhdkit panicked: status {:?}, stderr:\n{err}",
        out.status
    );
}

/// Exit code, stdout and stderr (lossy) of a finished command.
pub fn code_out_err(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `vhdkit` and require exit status 0; returns stdout.
pub fn vhdkit_ok<I, S>(args: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = vhdkit(&args);
    assert!(
        out.status.success(),
        "vhdkit {args:?} failed with {:?}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Run `vhdkit` with `args`: exit code, stdout and stderr (lossy).
pub fn vhdkit_run(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = vhdkit(args);
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `vhdkit` and require exit status 0; returns the whole output.
pub fn vhdkit_ok_output(args: &[&str]) -> Output {
    let o = vhdkit(args);
    let (code, out, err) = code_out_err(&o);
    assert_eq!(code, 0, "vhdkit {args:?} failed: {out}{err}");
    o
}

/// Run `vhdkit` and require exit status 0; returns stdout.
pub fn vhdkit_ok_stdout(args: &[&str]) -> Vec<u8> {
    vhdkit_ok_output(args).stdout
}

/// Run `vhdkit` and require exit status 0; returns stdout (lossy).
pub fn vhdkit_stdout(args: &[&str]) -> String {
    String::from_utf8_lossy(&vhdkit_ok_output(args).stdout).into_owned()
}

/// Run `vhdkit` and require it to fail with exit status `code` (any
/// failure when `None`); returns stderr.
pub fn vhdkit_fails(code: Option<i32>, args: &[&str]) -> String {
    let (got, _, err) = code_out_err(&vhdkit(args));
    match code {
        Some(c) => assert_eq!(got, c, "vhdkit {args:?} should fail with {c}: {err}"),
        None => assert_ne!(got, 0, "vhdkit {args:?} should fail: {err}"),
    }
    err
}

/// `path` as a `&str` argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `path` as an `&OsStr` argument.
pub fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

/// Permission bits of `p` in octal, as `ls -l` users read them.
pub fn mode(p: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    format!("{m:o}")
}

/// Names in `dir` that look like vhdkit's temporary files.
pub fn temp_debris(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp") || n.contains("vhdkit-"))
        .collect()
}

/// A 2048-bit key pair made with `vhdkit keygen` and `key public`: the
/// private `dir/name.xml` and the public `dir/name.pub.xml`.
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.xml"));
    let public = dir.join(format!("{name}.pub.xml"));
    vhdkit_ok_output(&["keygen", "--bits", "2048", "-o", s(&private)]);
    vhdkit_ok_output(&["key", "public", s(&private), "-o", s(&public)]);
    (private, public)
}

/// `vhdkit key show --json` of the key file `p`, parsed.
pub fn key_show_json(p: &Path) -> serde_json::Value {
    let out = vhdkit_ok([
        OsStr::new("key"),
        OsStr::new("show"),
        OsStr::new("--json"),
        p.as_os_str(),
    ]);
    serde_json::from_slice(&out).unwrap()
}

/// `vhdkit info --json` of `path`, parsed.
pub fn info_json(path: &Path) -> serde_json::Value {
    let out = vhdkit_ok([OsStr::new("info"), OsStr::new("--json"), path.as_os_str()]);
    serde_json::from_slice(&out).expect("info --json prints JSON")
}

/// Run `qemu-img` and require success; returns stdout.
pub fn qemu_img<I, S>(args: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("qemu-img").args(args)).stdout
}

/// The virtual size qemu-img reports for a VHD.
pub fn qemu_virtual_size(path: &Path) -> u64 {
    let out = qemu_img([
        OsStr::new("info"),
        OsStr::new("-f"),
        OsStr::new("vpc"),
        OsStr::new("--output=json"),
        path.as_os_str(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v["virtual-size"].as_u64().expect("virtual-size")
}

/// The whole virtual disk as qemu-img reads it (`convert -f vpc -O raw`).
pub fn qemu_read_vpc(path: &Path) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("out.raw");
    qemu_img([
        OsStr::new("convert"),
        OsStr::new("-f"),
        OsStr::new("vpc"),
        OsStr::new("-O"),
        OsStr::new("raw"),
        path.as_os_str(),
        raw.as_os_str(),
    ]);
    std::fs::read(raw).unwrap()
}

/// Reads an image with libvhdi's Python binding; the arguments are the
/// image then its parents, nearest first. Prints the media size as 8
/// little-endian bytes, then the content.
const PYVHDI_READ: &str = r#"
import sys, pyvhdi
files = []
for p in sys.argv[1:]:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for i in range(len(files) - 1, 0, -1):
    files[i - 1].set_parent(files[i])
f = files[0]
n = f.get_media_size()
out = sys.stdout.buffer
out.write(n.to_bytes(8, "little"))
off = 0
while off < n:
    k = min(1 << 20, n - off)
    out.write(f.read_buffer_at_offset(k, off))
    off += k
out.flush()
"#;

/// Media size and content of `chain[0]` as libvhdi reads it, with
/// `chain[1..]` as its parents.
pub fn pyvhdi_read(chain: &[&Path]) -> (u64, Vec<u8>) {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(PYVHDI_READ)
        .args(chain)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "pyvhdi could not read {chain:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = u64::from_le_bytes(out.stdout[..8].try_into().unwrap());
    (size, out.stdout[8..].to_vec())
}

/// Reads `[0, length)` of a child over its parent with libvhdi's Python
/// binding: prints the media size as 8 little-endian bytes, then the
/// bytes.
const PYVHDI_PREFIX: &str = r#"
import sys, pyvhdi
c = pyvhdi.file()
c.open(sys.argv[1])
p = pyvhdi.file()
p.open(sys.argv[2])
c.set_parent(p)
out = sys.stdout.buffer
out.write(c.get_media_size().to_bytes(8, "little"))
out.write(c.read_buffer_at_offset(int(sys.argv[3]), 0))
out.flush()
"#;

pub fn pyvhdi_prefix(child: &Path, parent: &Path, length: u64) -> (u64, Vec<u8>) {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(PYVHDI_PREFIX)
        .arg(child)
        .arg(parent)
        .arg(length.to_string())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "pyvhdi could not read {}:\n{}",
        child.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let size = u64::from_le_bytes(out.stdout[..8].try_into().unwrap());
    (size, out.stdout[8..].to_vec())
}

/// Media size `vhdiinfo` prints for an image.
pub fn vhdiinfo_media_size(path: &Path) -> u64 {
    let out = Command::new("vhdiinfo")
        .arg(path)
        .output()
        .expect("run vhdiinfo");
    assert!(
        out.status.success(),
        "vhdiinfo failed on {}",
        path.display()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Media size"))
        .unwrap_or_else(|| panic!("no media size in vhdiinfo output:\n{text}"));
    // "Media size : 10 MiB (10485760 bytes)"
    let inner = line.rsplit('(').next().unwrap();
    inner
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .trim_end_matches(" bytes")
        .parse()
        .unwrap_or_else(|_| panic!("cannot parse {line:?}"))
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lower-case hex SHA-256 of a file.
pub fn file_sha256(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).expect("read file"))
}

/// Cut the file at `path` to `len` bytes, open it, and return the
/// `BlockPastEof` warnings the open gave.
pub fn past_eof_warnings_after_cut(path: &Path, len: u64) -> Vec<vhdkit::report::Warning> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
    let disk = vhdkit::open(path, &OpenOptions::new()).unwrap();
    disk.info()
        .warnings
        .into_iter()
        .filter(|w| w.kind == vhdkit::report::WarningKind::BlockPastEof)
        .collect()
}

/// Open `path` read-only through the library.
pub fn open(path: &Path) -> vhdkit::Disk {
    vhdkit::open(path, &OpenOptions::new())
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// The whole content of a virtual disk, read through the library in 4 MiB
/// pieces.
pub fn read_disk(disk: &dyn VirtualDisk) -> Vec<u8> {
    const PIECE: usize = 4 << 20;
    let size = usize::try_from(disk.virtual_size()).expect("size");
    let mut out = vec![0u8; size];
    for (i, chunk) in out.chunks_mut(PIECE).enumerate() {
        disk.read_at(chunk, (i * PIECE) as u64)
            .unwrap_or_else(|e| panic!("read at {:#x}: {e}", i * PIECE));
    }
    out
}

/// Open `path` read-only through the library and read everything.
pub fn read_image(path: &Path) -> Vec<u8> {
    read_disk(open(path).as_ref())
}

/// The error opening `path` gives; panics if it opens.
pub fn open_err(path: &Path, opts: &OpenOptions) -> vhdkit::Error {
    match vhdkit::open(path, opts) {
        Ok(_) => panic!("{} opened, but an error was expected", path.display()),
        Err(e) => e,
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), so that a
/// failure's seed reproduces it.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// Deterministic content of `mib` MiB: every third MiB (the second, the
/// fifth, ...) zero, the rest pseudo-random.
pub fn pattern(mib: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = vec![0u8; mib << 20];
    for (i, m) in v.chunks_mut(1 << 20).enumerate() {
        if i % 3 != 1 {
            rng.fill(m);
        }
    }
    v
}

/// Mixed content for a disk of `size` bytes: random stretches, text,
/// runs of 0xff and zeros (including whole 2 MiB blocks of zeros when the
/// disk is large enough), starting and ending at unaligned offsets, with a
/// non-zero last sector so that the disk's end matters.
pub fn mixed_content(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = vec![0u8; size];
    let text = b"vhdkit test content: the quick brown fox jumps over the lazy dog. ";
    let mut pos = 0usize;
    let mut piece = 0u64;
    while pos < size {
        let len = (1000 + rng.below(700_000) as usize).min(size - pos);
        match piece % 4 {
            0 => rng.fill(&mut v[pos..pos + len]),
            1 => {
                for (i, b) in v[pos..pos + len].iter_mut().enumerate() {
                    *b = text[i % text.len()];
                }
            }
            2 => {} // zeros; the long gap below makes whole zero blocks too
            _ => v[pos..pos + len].fill(0xff),
        }
        pos += len;
        if piece % 4 == 2 {
            pos += 2_200_000 + rng.below(100_000) as usize;
        }
        piece += 1;
    }
    if size >= 512 {
        let tail = size - 300;
        rng.fill(&mut v[tail..]);
    }
    v
}

/// Write `data` into a raw file at `path`.
pub fn write_raw(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

/// Patch `bytes` at `offset` of the file at `path`.
pub fn patch_file(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Read `len` bytes at `offset` of the file at `path`.
pub fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, offset).unwrap();
    b
}

/// VHD checksum: one's complement of the byte sum with the 4-byte field at
/// `field` taken as zero (written here independently of the library).
pub fn vhd_checksum(bytes: &[u8], field: usize) -> u32 {
    let mut sum = 0u32;
    for (i, &b) in bytes.iter().enumerate() {
        if !(field..field + 4).contains(&i) {
            sum = sum.wrapping_add(u32::from(b));
        }
    }
    !sum
}

/// Recompute and store the checksum of the 512-byte footer at `offset`.
pub fn fix_footer_checksum(path: &Path, offset: u64) {
    let mut f = file_bytes(path, offset, 512);
    let c = vhd_checksum(&f, 64);
    f[64..68].copy_from_slice(&c.to_be_bytes());
    patch_file(path, offset, &f);
}

/// Recompute and store the checksum of the 1024-byte dynamic header at `offset`.
pub fn fix_header_checksum(path: &Path, offset: u64) {
    let mut h = file_bytes(path, offset, 1024);
    let c = vhd_checksum(&h, 36);
    h[36..40].copy_from_slice(&c.to_be_bytes());
    patch_file(path, offset, &h);
}

/// Big-endian u32 at `offset` of a byte slice.
pub fn be32(b: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes(b[offset..offset + 4].try_into().unwrap())
}

/// Big-endian u64 at `offset` of a byte slice.
pub fn be64(b: &[u8], offset: usize) -> u64 {
    u64::from_be_bytes(b[offset..offset + 8].try_into().unwrap())
}

/// Little-endian u32 at `offset` of a byte slice.
pub fn le32(b: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(b[offset..offset + 4].try_into().unwrap())
}

/// Little-endian u64 at `offset` of a byte slice.
pub fn le64(b: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(b[offset..offset + 8].try_into().unwrap())
}

/// Layout of a sparse VHD read straight from its bytes, independently of
/// the library: where the header, the BAT and each block are.
#[derive(Debug, Clone)]
pub struct SparseLayout {
    pub file_len: u64,
    pub header_offset: u64,
    pub table_offset: u64,
    pub max_table_entries: u32,
    pub block_size: u64,
    pub bat: Vec<u32>,
}

impl SparseLayout {
    pub fn read(path: &Path) -> SparseLayout {
        let file_len = std::fs::metadata(path).unwrap().len();
        let footer = file_bytes(path, file_len - 512, 512);
        assert_eq!(&footer[..8], b"conectix");
        let header_offset = be64(&footer, 16);
        let h = file_bytes(path, header_offset, 1024);
        assert_eq!(&h[..8], b"cxsparse");
        let table_offset = be64(&h, 16);
        let max_table_entries = be32(&h, 28);
        let block_size = u64::from(be32(&h, 32));
        let raw = file_bytes(path, table_offset, max_table_entries as usize * 4);
        let bat = raw.chunks(4).map(|c| be32(c, 0)).collect();
        SparseLayout {
            file_len,
            header_offset,
            table_offset,
            max_table_entries,
            block_size,
            bat,
        }
    }

    /// File offset of BAT entry `i`.
    pub fn entry_offset(&self, i: usize) -> u64 {
        self.table_offset + 4 * i as u64
    }

    /// Bytes of the sector bitmap before each block.
    pub fn bitmap_size(&self) -> u64 {
        (self.block_size / 512).div_ceil(8).div_ceil(512) * 512
    }
}

/// CRC-32C of `b` with the 4 bytes at `field` taken as zero.
pub fn crc_without(b: &[u8], field: usize) -> u32 {
    vhdkit::unstable::checksum::crc32c_with_zeroed_field(b, field)
}

/// Parsed positions of a VHDX file, found independently of the library.
#[derive(Debug, Clone, Copy)]
pub struct VhdxLayout {
    /// Offset of the current header.
    pub header: usize,
    pub log_offset: u64,
    pub log_length: u64,
    pub bat_offset: u64,
    pub metadata_offset: u64,
}

impl VhdxLayout {
    /// Find the current header, the log, the BAT and the metadata region in
    /// the bytes of a whole VHDX file.
    pub fn parse(file: &[u8]) -> VhdxLayout {
        let h1 = 64 << 10;
        let h2 = 128 << 10;
        let valid = |o: usize| {
            &file[o..o + 4] == b"head" && crc_without(&file[o..o + 4096], 4) == le32(file, o + 4)
        };
        let header = match (valid(h1), valid(h2)) {
            (true, true) if le64(file, h2 + 8) > le64(file, h1 + 8) => h2,
            (true, _) => h1,
            (false, true) => h2,
            _ => panic!("no valid header"),
        };
        let rt = 192 << 10;
        assert_eq!(&file[rt..rt + 4], b"regi");
        let n = le32(file, rt + 8) as usize;
        let mut bat = 0;
        let mut meta = 0;
        for i in 0..n {
            let e = rt + 16 + i * 32;
            let g = uuid::Uuid::from_bytes_le(file[e..e + 16].try_into().unwrap()).to_string();
            match g.as_str() {
                "2dc27766-f623-4200-9d64-115e9bfd4a08" => bat = le64(file, e + 16),
                "8b7ca206-4790-4b9a-b8fe-575f050f886e" => meta = le64(file, e + 16),
                _ => {}
            }
        }
        VhdxLayout {
            header,
            log_offset: le64(file, header + 72),
            log_length: u64::from(le32(file, header + 68)),
            bat_offset: bat,
            metadata_offset: meta,
        }
    }
}

/// A 2048-bit key pair made once per test binary with `vhdkit keygen`, for
/// EVHD images: (its folder, the key file).
pub fn test_key() -> &'static (tempfile::TempDir, PathBuf) {
    static K: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    K.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.xml");
        vhdkit_ok([
            OsStr::new("keygen"),
            OsStr::new("--bits"),
            OsStr::new("2048"),
            OsStr::new("-o"),
            path.as_os_str(),
        ]);
        (dir, path)
    })
}

/// Convert `src` to an EVHD at `dst` for [`test_key`].
pub fn make_evhd(src: &Path, dst: &Path) {
    vhdkit_ok([
        OsStr::new("convert"),
        OsStr::new("-q"),
        OsStr::new("-O"),
        OsStr::new("evhd"),
        OsStr::new("--recipient"),
        test_key().1.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
}

/// How a [`FaultStorage`] decides what survives the crash.
#[derive(Debug, Clone, Copy)]
pub enum CrashMode {
    /// Storage operations persist in order up to the crash; the operation
    /// at the crash point, if a write, persists only its first `k` 512-byte
    /// sectors (`k` random, possibly 0) when `tear` is set.
    Prefix { tear: bool },
    /// Everything before the last flush persists; of the writes since
    /// then, a random subset persists (the system may write back in any
    /// order), and the write at the crash point is torn.
    Subset,
}

/// The atomic unit of the simulated device: writes tear between sectors,
/// never inside one.
pub const DEVICE_SECTOR: usize = 512;

#[derive(Debug, Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug)]
struct FaultState {
    /// What the running program sees (the page cache).
    volatile: Vec<u8>,
    /// What survives the crash.
    durable: Vec<u8>,
    /// Changes since the last flush, not yet in `durable` (subset mode).
    pending: Vec<Pending>,
    /// Storage operations (writes, length changes, flushes) so far.
    count: u64,
    /// Index of the operation at which the power fails.
    crash_at: u64,
    mode: CrashMode,
    rng: Rng,
    crashed: bool,
}

fn apply(image: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write(off, data) => {
            let (s, e) = (*off as usize, *off as usize + data.len());
            if image.len() < e {
                image.resize(e, 0);
            }
            image[s..e].copy_from_slice(data);
        }
        Pending::SetLen(len) => image.resize(*len as usize, 0),
    }
}

/// A fault-injecting storage: it behaves like memory until operation
/// number `crash_at` (counting writes, length changes and flushes from 0),
/// where the power fails: that operation and every later one returns an
/// error, and [`FaultStorage::durable`] holds what a reboot would find.
#[derive(Debug, Clone)]
pub struct FaultStorage(std::sync::Arc<std::sync::Mutex<FaultState>>);

impl FaultStorage {
    pub fn new(image: Vec<u8>, crash_at: u64, mode: CrashMode, seed: u64) -> Self {
        FaultStorage(std::sync::Arc::new(std::sync::Mutex::new(FaultState {
            durable: image.clone(),
            volatile: image,
            pending: Vec::new(),
            count: 0,
            crash_at,
            mode,
            rng: Rng::new(seed),
            crashed: false,
        })))
    }
    /// Storage operations so far.
    pub fn count(&self) -> u64 {
        self.0.lock().unwrap().count
    }
    pub fn crashed(&self) -> bool {
        self.0.lock().unwrap().crashed
    }
    /// The image as it would be found after the crash (or now, with every
    /// pending change persisted, when there was none).
    pub fn durable(&self) -> Vec<u8> {
        let st = self.0.lock().unwrap();
        let mut d = st.durable.clone();
        if !st.crashed {
            for p in &st.pending {
                apply(&mut d, p);
            }
        }
        d
    }

    fn op(&self, p: Option<Pending>) -> std::io::Result<()> {
        let mut guard = self.0.lock().unwrap();
        let st = &mut *guard;
        if st.crashed {
            return Err(std::io::Error::other("simulated power failure"));
        }
        let index = st.count;
        st.count += 1;
        if index == st.crash_at {
            st.crashed = true;
            if let CrashMode::Subset = st.mode {
                let pending = std::mem::take(&mut st.pending);
                for q in &pending {
                    if st.rng.below(2) == 0 {
                        apply(&mut st.durable, q);
                    }
                }
            }
            let tear = matches!(
                st.mode,
                CrashMode::Subset | CrashMode::Prefix { tear: true }
            );
            if let (true, Some(Pending::Write(off, data))) = (tear, &p) {
                let sectors = data.len().div_ceil(DEVICE_SECTOR) as u64;
                let keep = st.rng.below(sectors) as usize * DEVICE_SECTOR;
                if keep > 0 {
                    apply(
                        &mut st.durable,
                        &Pending::Write(*off, data[..keep].to_vec()),
                    );
                }
            }
            return Err(std::io::Error::other("simulated power failure"));
        }
        match (p, st.mode) {
            (None, _) => {
                let pending = std::mem::take(&mut st.pending);
                for q in &pending {
                    apply(&mut st.durable, q);
                }
            }
            (Some(q), CrashMode::Prefix { .. }) => {
                apply(&mut st.volatile, &q);
                apply(&mut st.durable, &q);
            }
            (Some(q), CrashMode::Subset) => {
                apply(&mut st.volatile, &q);
                st.pending.push(q);
            }
        }
        Ok(())
    }
}

impl vhdkit::Storage for FaultStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let st = self.0.lock().unwrap();
        let s = offset as usize;
        let src = st
            .volatile
            .get(s..s + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.op(Some(Pending::Write(offset, buf.to_vec())))
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.lock().unwrap().volatile.len() as u64)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.op(Some(Pending::SetLen(len)))
    }
    fn flush(&self) -> std::io::Result<()> {
        self.op(None)
    }
    fn is_writable(&self) -> bool {
        true
    }
}
