//! Hostile header values in every format: counts and lengths far beyond the
//! limits, with the checksums made right so that the limits themselves must
//! catch them, parent chains that loop, and logs whose entries wrap or claim
//! the whole log. Each gives a clear error (structure and byte offset) in
//! under a second, and the CLI stays under a memory bound while it fails.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{file_bytes, fix_footer_checksum, fix_header_checksum, patch_file, vhdkit_bin};
use vhdkit::VhdBuilder;
use vhdkit::VhdxBuilder;
use vhdkit::unstable::evhd::header::{
    COPY_OFFSETS, CRC_OFFSET, HEADER_SIZE, MAC_OFFSET, compute_crc,
};
use vhdkit::unstable::vhd::create as create_vhd;
use vhdkit::unstable::vhdx::create as create_vhdx;
use vhdkit::{ErrorKind, OpenOptions, VirtualDisk};
use vhdkit::{KeyFile, PrivateKey};

/// The bound on the work of failing over hostile input, as CPU time (user
/// plus system) spent by the command or the opening thread: a correctness
/// bound (no quadratic search, no loop over a claimed size), not a
/// benchmark. CPU time, unlike elapsed time, does not grow when the
/// machine is busy with other jobs; the margin covers a slow machine.
const CPU_LIMIT: Duration = Duration::from_secs(2);
/// Peak resident memory the CLI may reach while failing on a small image.
const MEMORY_LIMIT: u64 = 64 << 20;
/// A child still running after this long has hung: kill it and fail.
const HANG_LIMIT: Duration = Duration::from_secs(60);

/// How a CLI run ended and what it cost.
#[derive(Debug)]
struct Measured {
    /// Exit code, or `None` when killed by a signal.
    code: Option<i32>,
    stderr: String,
    /// CPU time, user plus system.
    cpu: Duration,
    /// Peak resident set size in bytes.
    max_rss: u64,
}

/// Environment variable that turns [`measure_helper`] into a launcher: the
/// directory holding its `args` (one per line) and receiving its results.
const MEASURE_DIR_ENV: &str = "VHDKIT_HOSTILE_MEASURE_DIR";

/// Run `vhdkit args`, measuring its CPU time and peak memory.
///
/// The peak a parent learns from `wait4` includes the memory the child had
/// before `exec`, and a child spawned from this (large, busy) test process
/// starts as a copy of it. So a fresh, small copy of this test binary
/// ([`measure_helper`]) launches vhdkit and measures it instead.
fn run_measured(args: &[&OsStr]) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = args
        .iter()
        .map(|a| a.to_str().expect("UTF-8 argument").to_string())
        .collect();
    assert!(lines.iter().all(|l| !l.contains('\n')));
    std::fs::write(dir.path().join("args"), lines.join("\n")).unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "measure_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MEASURE_DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the measuring helper failed: {status:?}");
    let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap_or_default();
    let result = read("result");
    let v: Vec<i64> = result
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let [code, exited, cpu_micros, rss_kib] = v[..] else {
        panic!("helper result {result:?}")
    };
    Measured {
        code: (exited == 1).then_some(code as i32),
        stderr: read("stderr"),
        cpu: Duration::from_micros(cpu_micros as u64),
        // Linux reports kilobytes.
        max_rss: rss_kib as u64 * 1024,
    }
}

/// Not a test of its own: under [`MEASURE_DIR_ENV`], run vhdkit with the
/// arguments found there and write `code exited cpu_microseconds max_rss_kib`.
#[test]
fn measure_helper() {
    let Some(dir) = std::env::var_os(MEASURE_DIR_ENV).map(PathBuf::from) else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("args")).unwrap();
    let start = Instant::now();
    // Reaped by the wait4 below, which std does not know about.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(vhdkit_bin())
        .args(text.split('\n'))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .expect("run vhdkit");
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain integers, for which all zeros is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, which nothing else waits for; the
        // pointers are valid for writes for the duration of the call.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > HANG_LIMIT {
            child.kill().unwrap();
            panic!("vhdkit {text:?} hung for {HANG_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let micros = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    let cpu_micros = micros(ru.ru_utime) + micros(ru.ru_stime);
    let (code, exited) = if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), 1)
    } else {
        (libc::WTERMSIG(status), 0)
    };
    std::fs::write(
        dir.join("result"),
        format!("{code} {exited} {cpu_micros} {}", ru.ru_maxrss),
    )
    .unwrap();
}

/// Run a CLI command on `image` (with `key`, if any), asserting it neither
/// panicked nor was killed, and stayed within the time and memory bounds.
fn cli_bounded(cmd: &str, image: &Path, key: Option<&Path>) -> Measured {
    let mut args: Vec<&OsStr> = vec![OsStr::new(cmd), image.as_os_str()];
    if let Some(k) = key {
        args.extend([OsStr::new("--key"), k.as_os_str()]);
    }
    let m = run_measured(&args);
    let ctx = format!("vhdkit {cmd} {}: {m:?}", image.display());
    assert!(m.code.is_some(), "killed by a signal: {ctx}");
    assert_ne!(m.code, Some(101), "panicked: {ctx}");
    assert!(!m.stderr.contains("panicked"), "panicked: {ctx}");
    assert!(m.cpu < CPU_LIMIT, "used {:?} of CPU: {ctx}", m.cpu);
    assert!(
        m.max_rss < MEMORY_LIMIT,
        "peak memory {} bytes: {ctx}",
        m.max_rss
    );
    m
}

/// `info`, `map` and `check` all fail on `image`, in bounds; `info` and
/// `map` exit 1 naming the file and every needle, `check` reports damage.
fn assert_cli_fails(image: &Path, key: Option<&Path>, needles: &[&str]) {
    let name = image.file_name().unwrap().to_string_lossy().into_owned();
    for cmd in ["info", "map"] {
        let m = cli_bounded(cmd, image, key);
        assert_eq!(m.code, Some(1), "{cmd}: {m:?}");
        assert!(m.stderr.contains(&name), "{cmd}: no file name: {m:?}");
        for n in needles {
            assert!(m.stderr.contains(n), "{cmd}: {n:?} missing: {m:?}");
        }
    }
    let m = cli_bounded("check", image, key);
    assert!(matches!(m.code, Some(1 | 2)), "check: {m:?}");
}

/// The CPU time this thread has used so far.
fn thread_cpu() -> Duration {
    // SAFETY: timespec is plain integers, for which all zeros is valid.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer valid for writes.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(r, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// `f()`, asserting that it used less than [`CPU_LIMIT`] of this thread's CPU.
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = thread_cpu();
    let r = f();
    let used = thread_cpu() - start;
    assert!(used < CPU_LIMIT, "{what} used {used:?} of CPU");
    r
}

/// Open through the library within the CPU bound; the error.
fn open_err_timed(path: &Path, opts: &OpenOptions) -> vhdkit::Error {
    let r = bounded("open", || vhdkit::open(path, opts));
    match r {
        Ok(_) => panic!("{} opened, but an error was expected", path.display()),
        Err(e) => e,
    }
}

/// Opening fails with `structure` at `offset`, through the library and the CLI.
fn assert_rejected(path: &Path, structure: &str, offset: u64) -> vhdkit::Error {
    let err = open_err_timed(path, &OpenOptions::new());
    assert_eq!(err.structure(), Some(structure), "{err}");
    assert_eq!(err.offset(), Some(offset), "{err}");
    let at = format!("{structure} at offset {offset:#x}");
    assert!(err.to_string().contains(&at), "{err}");
    assert_cli_fails(path, None, &[&at]);
    let report = bounded("check", || vhdkit::check(path, &OpenOptions::new(), false)).unwrap();
    assert_eq!(report.exit_code(), 2, "{report:?}");
    err
}

// ---------------------------------------------------------------- VHD

/// A small dynamic VHD with a little data.
fn vhd_sample(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let mut d = create_vhd(&path, VhdBuilder::new(4 << 20).block_size(1 << 20)).unwrap();
    d.write_at(&[0x5a; 4096], 1 << 20).unwrap();
    d.flush().unwrap();
    path
}

fn vhd_header_offset(path: &Path) -> u64 {
    common::SparseLayout::read(path).header_offset
}

#[test]
fn vhd_hostile_counts_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    // (dynamic header field, value): BAT entries, block size, BAT offset.
    let header_cases: [(u64, Vec<u8>); 4] = [
        (28, 0xffff_ffffu32.to_be_bytes().to_vec()),
        (28, 0x4000_0000u32.to_be_bytes().to_vec()),
        (32, 0x8000_0000u32.to_be_bytes().to_vec()),
        (16, 0xffff_ffff_ffff_fe00u64.to_be_bytes().to_vec()),
    ];
    for (i, (field, value)) in header_cases.iter().enumerate() {
        let path = vhd_sample(dir.path(), &format!("h{i}.vhd"));
        let hoff = vhd_header_offset(&path);
        patch_file(&path, hoff + field, value);
        fix_header_checksum(&path, hoff);
        assert_rejected(&path, "VHD dynamic header", hoff + field);
    }
    // The footer's size: 2^50 bytes would need 2^30 blocks of 1 MiB.
    let path = vhd_sample(dir.path(), "size.vhd");
    let len = std::fs::metadata(&path).unwrap().len();
    for at in [0, len - 512] {
        patch_file(&path, at + 48, &(1u64 << 50).to_be_bytes());
        fix_footer_checksum(&path, at);
    }
    assert_rejected(&path, "VHD footer", len - 512 + 48);
}

/// Replace every UTF-16 (both byte orders) and UTF-8 occurrence of `from` in the file
/// by `to`, of the same length; returns how many were replaced.
fn replace_utf16(path: &Path, from: &str, to: &str) -> usize {
    assert_eq!(from.len(), to.len());
    let mut data = std::fs::read(path).unwrap();
    let mut n = 0;
    // UTF-16LE (locators), UTF-16BE (the VHD parent name) and UTF-8 (the
    // MacX file URL of VHD children made off Windows).
    for enc_kind in 0..3 {
        let enc = |s: &str| -> Vec<u8> {
            match enc_kind {
                0 => s.encode_utf16().flat_map(u16::to_le_bytes).collect(),
                1 => s.encode_utf16().flat_map(u16::to_be_bytes).collect(),
                _ => s.as_bytes().to_vec(),
            }
        };
        let (f, t) = (enc(from), enc(to));
        let mut i = 0;
        while i + f.len() <= data.len() {
            if data[i..i + f.len()] == f[..] {
                data[i..i + f.len()].copy_from_slice(&t);
                n += 1;
                i += f.len();
            } else {
                i += 1;
            }
        }
    }
    std::fs::write(path, data).unwrap();
    n
}

/// The parent loop error: names the chain, a structure and an offset.
fn assert_loop_error(path: &Path, names: &str) {
    let opts = OpenOptions::new();
    let err = open_err_timed(path, &opts);
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.structure().is_some() && err.offset().is_some(), "{err}");
    let text = err.to_string();
    assert!(text.contains("already in the parent chain"), "{text}");
    assert!(text.contains(names), "{text}");
    assert_cli_fails(
        path,
        None,
        &["already in the parent chain", " at offset 0x"],
    );
    // Inspection with a missing parent allowed must fail the same way: the
    // parent is there, it just leads back.
    let err = open_err_timed(path, &opts.clone().allow_missing_parent(true));
    assert!(err.to_string().contains("already in the parent chain"));
}

#[test]
fn vhd_parent_chains_that_loop() {
    let dir = tempfile::tempdir().unwrap();
    let parent = vhd_sample(dir.path(), "p.vhd");
    // A child whose every record of its parent names itself.
    let child = dir.path().join("c.vhd");
    create_vhd(&child, VhdBuilder::new(0).differencing(&parent)).unwrap();
    assert!(replace_utf16(&child, "p.vhd", "c.vhd") >= 2);
    fix_header_checksum(&child, vhd_header_offset(&child));
    assert_loop_error(&child, "c.vhd");

    // A -> B -> A.
    let (a, b) = (dir.path().join("a.vhd"), dir.path().join("b.vhd"));
    for (x, other) in [(&a, "b.vhd"), (&b, "a.vhd")] {
        create_vhd(x, VhdBuilder::new(0).differencing(&parent)).unwrap();
        assert!(replace_utf16(x, "p.vhd", other) >= 2);
        fix_header_checksum(x, vhd_header_offset(x));
    }
    assert_loop_error(&a, "b.vhd");
    assert_loop_error(&b, "a.vhd");
}

// ---------------------------------------------------------------- VHDX

/// A small dynamic VHDX (1 MiB log unless `log` says otherwise).
fn vhdx_sample(dir: &Path, name: &str, log: Option<u32>) -> PathBuf {
    let path = dir.join(name);
    let mut b = VhdxBuilder::new(8 << 20).block_size(1 << 20);
    if let Some(l) = log {
        b = b.log_size(l);
    }
    let mut d = create_vhdx(&path, b).unwrap();
    d.write_at(&[0xa5; 4096], 3 << 20).unwrap();
    d.flush().unwrap();
    drop(d);
    path
}

fn vhdx_layout(path: &Path) -> common::VhdxLayout {
    common::VhdxLayout::parse(&std::fs::read(path).unwrap())
}

/// Patch `bytes` at `field` of both region tables, fixing their CRCs.
fn patch_region_tables(path: &Path, field: u64, bytes: &[u8]) {
    for rt in [192u64 << 10, 256 << 10] {
        patch_file(path, rt + field, bytes);
        let mut t = file_bytes(path, rt, 64 << 10);
        let crc = common::crc_without(&t, 4);
        t[4..8].copy_from_slice(&crc.to_le_bytes());
        patch_file(path, rt, &t);
    }
}

/// Patch `bytes` at `field` of both headers, fixing their CRCs.
fn patch_vhdx_headers(path: &Path, field: u64, bytes: &[u8]) {
    for h in [64u64 << 10, 128 << 10] {
        patch_file(path, h + field, bytes);
        let mut t = file_bytes(path, h, 4096);
        let crc = common::crc_without(&t, 4);
        t[4..8].copy_from_slice(&crc.to_le_bytes());
        patch_file(path, h, &t);
    }
}

/// Index of region `guid` in region table 1.
fn region_index(path: &Path, guid: uuid::Uuid) -> u64 {
    let t = file_bytes(path, 192 << 10, 64 << 10);
    let n = common::le32(&t, 8) as usize;
    (0..n)
        .find(|&i| t[16 + 32 * i..32 + 32 * i] == guid.to_bytes_le())
        .expect("region present") as u64
}

/// File offset of the metadata table entry of `item`.
fn metadata_entry(path: &Path, item: uuid::Uuid) -> u64 {
    let meta = vhdx_layout(path).metadata_offset;
    let t = file_bytes(path, meta, 64 << 10);
    let n = u16::from_le_bytes([t[10], t[11]]) as usize;
    let i = (0..n)
        .find(|&i| t[32 + 32 * i..48 + 32 * i] == item.to_bytes_le())
        .expect("item present");
    meta + 32 + 32 * i as u64
}

#[test]
fn vhdx_gigantic_bat_and_region_lengths() {
    use vhdkit::unstable::vhdx::metadata::{FILE_PARAMETERS, VIRTUAL_DISK_SIZE};
    use vhdkit::unstable::vhdx::region_table::{BAT_GUID, METADATA_GUID};
    let dir = tempfile::tempdir().unwrap();

    // A 64 TiB disk of 1 MiB blocks needs a 512 MiB BAT in a 1 MiB region.
    let path = vhdx_sample(dir.path(), "vs.vhdx", None);
    let e = metadata_entry(&path, VIRTUAL_DISK_SIZE);
    let meta = vhdx_layout(&path).metadata_offset;
    let item = meta + u64::from(common::le32(&file_bytes(&path, e, 32), 16));
    patch_file(&path, item, &(64u64 << 40).to_le_bytes());
    let bat = vhdx_layout(&path).bat_offset;
    let err = assert_rejected(&path, "VHDX BAT", bat);
    assert!(err.message().contains("entries"), "{err}");

    // Beyond 64 TiB is refused as a size.
    let path = vhdx_sample(dir.path(), "vs2.vhdx", None);
    patch_file(&path, item, &(u64::MAX - 4095).to_le_bytes());
    assert_rejected(&path, "VHDX virtual disk size", item);

    // Region lengths of almost 4 GiB (the BAT, the metadata region).
    for (i, guid) in [BAT_GUID, METADATA_GUID].into_iter().enumerate() {
        let path = vhdx_sample(dir.path(), &format!("r{i}.vhdx"), None);
        let at = 16 + 32 * region_index(&path, guid);
        patch_region_tables(&path, at + 24, &0xfff0_0000u32.to_le_bytes());
        assert_rejected(&path, "VHDX region table", (192 << 10) + at);
    }

    // Metadata item lengths of 4 GiB, and a table claiming 65535 items.
    let path = vhdx_sample(dir.path(), "m.vhdx", None);
    let e = metadata_entry(&path, FILE_PARAMETERS);
    patch_file(&path, e + 20, &u32::MAX.to_le_bytes());
    assert_rejected(&path, "VHDX metadata table", e);
    let path = vhdx_sample(dir.path(), "n.vhdx", None);
    let meta = vhdx_layout(&path).metadata_offset;
    patch_file(&path, meta + 10, &u16::MAX.to_le_bytes());
    assert_rejected(&path, "VHDX metadata table", meta + 10);

    // A log region of almost 4 GiB.
    let path = vhdx_sample(dir.path(), "l.vhdx", None);
    let current = vhdx_layout(&path).header as u64;
    patch_vhdx_headers(&path, 68, &0xfff0_0000u32.to_le_bytes());
    assert_rejected(&path, "VHDX header", current + 72);
}

#[test]
fn vhdx_parent_chains_that_loop() {
    let dir = tempfile::tempdir().unwrap();
    let parent = vhdx_sample(dir.path(), "p.vhdx", None);
    let child = dir.path().join("c.vhdx");
    create_vhdx(&child, VhdxBuilder::new(0).differencing(&parent)).unwrap();
    assert!(replace_utf16(&child, "p.vhdx", "c.vhdx") >= 1);
    assert_loop_error(&child, "c.vhdx");

    let (a, b) = (dir.path().join("a.vhdx"), dir.path().join("b.vhdx"));
    for (x, other) in [(&a, "b.vhdx"), (&b, "a.vhdx")] {
        create_vhdx(x, VhdxBuilder::new(0).differencing(&parent)).unwrap();
        assert!(replace_utf16(x, "p.vhdx", other) >= 1);
    }
    assert_loop_error(&a, "b.vhdx");
    assert_loop_error(&b, "a.vhdx");
}

/// The log GUID every crafted entry carries.
const LOG_GUID: uuid::Uuid = uuid::Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);

/// A log entry header of `length` bytes (zeros after the header).
struct LogEntry {
    length: u32,
    tail: u32,
    sequence: u64,
    descriptors: u32,
    last_file_offset: u64,
}

impl LogEntry {
    /// The entry's bytes, CRC made right unless `bad_crc`.
    fn bytes(&self, bad_crc: bool) -> Vec<u8> {
        let mut e = vec![0u8; self.length as usize];
        e[0..4].copy_from_slice(b"loge");
        e[8..12].copy_from_slice(&self.length.to_le_bytes());
        e[12..16].copy_from_slice(&self.tail.to_le_bytes());
        e[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        e[24..28].copy_from_slice(&self.descriptors.to_le_bytes());
        e[32..48].copy_from_slice(&LOG_GUID.to_bytes_le());
        e[56..64].copy_from_slice(&self.last_file_offset.to_le_bytes());
        let crc = common::crc_without(&e, 4) ^ u32::from(bad_crc);
        e[4..8].copy_from_slice(&crc.to_le_bytes());
        e
    }
}

/// Set the log GUID in both headers: the log is pending.
fn set_log_pending(path: &Path) {
    patch_vhdx_headers(path, 48, &LOG_GUID.to_bytes_le());
}

/// A case that must not hang or blow up, whether or not it opens: the
/// library and the CLI finish in bounds and any error is clear.
fn assert_bounded(path: &Path) -> Option<vhdkit::Error> {
    let r = bounded("open", || vhdkit::open(path, &OpenOptions::new()));
    let err = r.err();
    if let Some(e) = &err {
        assert!(e.structure().is_some() && e.offset().is_some(), "{e}");
    }
    for cmd in ["info", "map", "check"] {
        let m = cli_bounded(cmd, path, None);
        if m.code != Some(0) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(m.stderr.contains(&name) || cmd == "check", "{cmd}: {m:?}");
        }
    }
    err
}

#[test]
fn vhdx_log_descriptor_count_in_the_millions() {
    let dir = tempfile::tempdir().unwrap();
    let path = vhdx_sample(dir.path(), "d.vhdx", None);
    let lay = vhdx_layout(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    set_log_pending(&path);
    let entry = LogEntry {
        length: 4096,
        tail: 0,
        sequence: 7,
        descriptors: 3_000_000,
        last_file_offset: len,
    };
    patch_file(&path, lay.log_offset, &entry.bytes(false));
    // The entry is not valid, so nothing is replayed; check says why.
    assert!(assert_bounded(&path).is_none());
    let report = vhdkit::check(&path, &OpenOptions::new(), false).unwrap();
    let f = report
        .findings
        .iter()
        .find(|f| f.structure == "VHDX log entry")
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(f.offset, Some(lay.log_offset));
    assert!(f.message.contains("3000000 descriptors"), "{f:?}");
}

#[test]
fn vhdx_log_claiming_a_huge_file_does_not_grow_the_bat() {
    use vhdkit::unstable::vhdx::metadata::VIRTUAL_DISK_SIZE;
    use vhdkit::unstable::vhdx::region_table::BAT_GUID;
    let dir = tempfile::tempdir().unwrap();
    let path = vhdx_sample(dir.path(), "g.vhdx", None);
    let lay = vhdx_layout(&path);
    // A 64 TiB disk of 1 MiB blocks: a 512 MiB BAT, in a region of 600 MiB
    // that lies past the real end of the file...
    let e = metadata_entry(&path, VIRTUAL_DISK_SIZE);
    let item = lay.metadata_offset + u64::from(common::le32(&file_bytes(&path, e, 32), 16));
    patch_file(&path, item, &(64u64 << 40).to_le_bytes());
    let at = 16 + 32 * region_index(&path, BAT_GUID);
    patch_region_tables(&path, at + 24, &(600u32 << 20).to_le_bytes());
    // ... but inside the 64 TiB file a valid log entry claims.
    set_log_pending(&path);
    let entry = LogEntry {
        length: 4096,
        tail: 0,
        sequence: 7,
        descriptors: 0,
        last_file_offset: 1 << 46,
    };
    patch_file(&path, lay.log_offset, &entry.bytes(false));
    let err = open_err_timed(&path, &OpenOptions::new());
    assert_eq!(err.structure(), Some("VHDX region table"), "{err}");
    assert!(err.message().contains("past the end"), "{err}");
    assert_cli_fails(&path, None, &["VHDX region table"]);
}

#[test]
fn vhdx_log_entries_that_wrap_around() {
    let dir = tempfile::tempdir().unwrap();
    let sectors = 256u64; // the 1 MiB log
    // Every sector an entry, sequence numbers consecutive all the way round
    // the buffer starting at sector `start`; the head's tail is the oldest.
    let path = vhdx_sample(dir.path(), "ring.vhdx", None);
    let lay = vhdx_layout(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    set_log_pending(&path);
    let start = 100u64;
    for s in 0..sectors {
        let age = (s + sectors - start) % sectors;
        let e = LogEntry {
            length: 4096,
            tail: (start * 4096) as u32,
            sequence: 1000 + age,
            descriptors: 0,
            last_file_offset: len,
        };
        patch_file(&path, lay.log_offset + s * 4096, &e.bytes(false));
    }
    // A valid log (256 empty entries, the whole ring): replayed in memory.
    assert!(assert_bounded(&path).is_none());

    // Sequence numbers that overflow: u64::MAX then 1 again.
    let path = vhdx_sample(dir.path(), "max.vhdx", None);
    set_log_pending(&path);
    for s in 0..sectors {
        let e = LogEntry {
            length: 4096,
            tail: 0,
            sequence: (u64::MAX - 2).wrapping_add(s).max(1),
            descriptors: 0,
            last_file_offset: len,
        };
        patch_file(&path, lay.log_offset + s * 4096, &e.bytes(false));
    }
    assert_bounded(&path);

    // One entry as long as the whole log, its tail its own start.
    let path = vhdx_sample(dir.path(), "whole.vhdx", None);
    set_log_pending(&path);
    let e = LogEntry {
        length: (sectors * 4096) as u32,
        tail: 0,
        sequence: 9,
        descriptors: 0,
        last_file_offset: len,
    };
    patch_file(&path, lay.log_offset, &e.bytes(false));
    assert!(assert_bounded(&path).is_none());
}

#[test]
fn vhdx_log_entries_that_each_claim_the_whole_log() {
    // Every sector of a 16 MiB log starts an entry claiming all 16 MiB, with
    // a bad CRC: a search that checksums each would do 4096 x 16 MiB.
    let log_len: u32 = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = vhdx_sample(dir.path(), "claim.vhdx", Some(log_len));
    let lay = vhdx_layout(&path);
    assert_eq!(lay.log_length, u64::from(log_len));
    let len = std::fs::metadata(&path).unwrap().len();
    set_log_pending(&path);
    let e = LogEntry {
        length: log_len,
        tail: 0,
        sequence: 5,
        descriptors: 0,
        last_file_offset: len,
    }
    .bytes(true);
    for s in 0..u64::from(log_len) / 4096 {
        patch_file(&path, lay.log_offset + s * 4096, &e[..64]);
    }
    let err = assert_bounded(&path).expect("the search gives up");
    assert_eq!(
        (err.structure(), err.offset()),
        (Some("VHDX log"), Some(lay.log_offset)),
        "{err}"
    );
    assert!(err.message().contains("passes"), "{err}");
}

// ---------------------------------------------------------------- EVHD

/// The key pair of [`common::test_key`], loaded.
fn evhd_key() -> &'static Arc<PrivateKey> {
    static K: OnceLock<Arc<PrivateKey>> = OnceLock::new();
    K.get_or_init(|| {
        let key = KeyFile::read(&common::test_key().1)
            .and_then(KeyFile::into_private)
            .unwrap();
        Arc::new(key)
    })
}

/// A small EVHD of a 2 MiB raw image, for the key of [`common::test_key`].
fn evhd_sample(dir: &Path, name: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    std::fs::write(&raw, common::mixed_content(2 << 20, 3)).unwrap();
    let path = dir.join(name);
    common::make_evhd(&raw, &path);
    path
}

/// Patch `bytes` at `field` of both header copies and fix their CRCs (the
/// MACs then fail, which needs the key to notice).
fn patch_evhd_headers(path: &Path, field: usize, bytes: &[u8]) {
    for at in COPY_OFFSETS {
        let mut h = file_bytes(path, at, HEADER_SIZE);
        h[field..field + bytes.len()].copy_from_slice(bytes);
        let crc = compute_crc(&h);
        h[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        patch_file(path, at, &h);
    }
}

/// What is patched, the `(field, value)` patches, the field the error names.
type EvhdCase = (&'static str, Vec<(usize, Vec<u8>)>, u64);

#[test]
fn evhd_hostile_counts_are_refused_before_the_key_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = &common::test_key().1;
    let key = evhd_key();
    let probe = evhd_sample(dir.path(), "probe.evhd");
    let h = file_bytes(&probe, 0, HEADER_SIZE);
    let shift = h[56];
    // (field, value, where the error points): recipients count and length,
    // epoch key count, table pages, a virtual size whose (matching) table
    // cannot fit, journal length, slot count.
    let huge_size: u64 = 1 << 60;
    let pages = vhdkit::unstable::evhd::table::pages_for(huge_size >> shift);
    let cases: Vec<EvhdCase> = vec![
        (
            "recipients",
            vec![(94, u16::MAX.to_le_bytes().to_vec())],
            94,
        ),
        (
            "recipients length",
            vec![(96, u32::MAX.to_le_bytes().to_vec())],
            94,
        ),
        (
            "epoch keys",
            vec![(156, u16::MAX.to_le_bytes().to_vec())],
            156,
        ),
        (
            "table pages",
            vec![(68, (1u64 << 40).to_le_bytes().to_vec())],
            68,
        ),
        (
            "virtual size",
            vec![
                (40, huge_size.to_le_bytes().to_vec()),
                (68, pages.to_le_bytes().to_vec()),
            ],
            60,
        ),
        (
            "journal",
            vec![(148, (1u64 << 62).to_le_bytes().to_vec())],
            60,
        ),
        ("slots", vec![(84, (1u64 << 40).to_le_bytes().to_vec())], 60),
    ];
    for (i, (what, patches, field)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("e{i}.evhd"));
        std::fs::copy(&probe, &path).unwrap();
        for (f, v) in &patches {
            patch_evhd_headers(&path, *f, v);
        }
        let at = format!("EVHD header at offset {field:#x}");
        for opts in [OpenOptions::new(), OpenOptions::new().key(key.clone())] {
            let err = open_err_timed(&path, &opts);
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{what}: {err}");
            assert_eq!(err.structure(), Some("EVHD header"), "{what}: {err}");
            assert!(err.to_string().contains(&at), "{what}: {err}");
        }
        assert_cli_fails(&path, None, &[&at]);
        assert_cli_fails(&path, Some(key_path), &[&at]);
    }

    // A value in range with the CRC made right: the MAC catches it.
    let path = dir.path().join("mac.evhd");
    std::fs::copy(&probe, &path).unwrap();
    patch_evhd_headers(&path, 132, &(1u64 << 40).to_le_bytes());
    let err = open_err_timed(&path, &OpenOptions::new().key(key.clone()));
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert_eq!(err.structure(), Some("EVHD header"));
    let mac = err.offset().unwrap();
    assert!(
        COPY_OFFSETS.iter().any(|c| c + MAC_OFFSET as u64 == mac),
        "{err}"
    );
    assert_cli_fails(
        &path,
        Some(key_path),
        &[&format!("EVHD header at offset {mac:#x}")],
    );
}
