//! `vhdkit serve` against clients nobody here wrote: qemu-img (convert,
//! compare, map), qemu-io (writes, write-zeroes, trims), and libnbd's
//! nbdinfo and nbdcopy. Every format and chain vhdkit opens is served, and
//! what the clients see is checked against vhdkit's own reading of the
//! image; writes are checked against a model and by both checkers.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::procs::{WAIT_LIMIT, kill_if_running, wait_bounded};
use common::*;

/// A running `vhdkit serve` and the first URI it printed.
struct Served {
    child: Child,
    uri: String,
}

impl Served {
    /// Start `vhdkit serve ARGS --socket DIR/nbd.sock` and wait for its URI.
    fn start(dir: &Path, args: &[&str]) -> Served {
        let sock = dir.join("nbd.sock");
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        all.extend(["--socket", sock.to_str().unwrap()]);
        let (mut served, lines) = Served::spawn(&all, 1);
        served.uri = match lines.first() {
            Some(l) if !l.is_empty() => l.trim().to_string(),
            _ => {
                kill_if_running(&mut served.child);
                panic!("vhdkit serve printed no URI");
            }
        };
        assert_eq!(
            served.uri,
            format!(
                "nbd+unix:///{}?socket={}",
                uri_name(&served.uri),
                sock.display()
            )
        );
        served
    }

    /// Start `vhdkit ARGS` and read the first `n` lines it prints (fewer
    /// if it prints fewer within the wait limit); `uri` is left empty.
    fn spawn(args: &[&str], n: usize) -> (Served, Vec<String>) {
        let mut child = Command::new(vhdkit_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vhdkit serve");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let lines: Vec<String> = BufReader::new(out)
                .lines()
                .take(n)
                .map_while(Result::ok)
                .collect();
            let _ = tx.send(lines);
        });
        let lines = rx.recv_timeout(WAIT_LIMIT).unwrap_or_default();
        let served = Served {
            child,
            uri: String::new(),
        };
        (served, lines)
    }

    /// SIGTERM: the server must flush and exit 0.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(r, 0);
        self.wait();
    }

    /// Wait for the server to exit (after `--once`'s client) with status 0.
    fn wait(&mut self) {
        let st = wait_bounded(&mut self.child, "vhdkit serve");
        assert!(st.success(), "vhdkit serve exited with {st:?}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

/// The export name in an `nbd+unix:///NAME?socket=...` URI.
fn uri_name(uri: &str) -> &str {
    let rest = uri.strip_prefix("nbd+unix:///").unwrap_or("");
    rest.split('?').next().unwrap_or("")
}

/// Run a client command; panics with its output unless it succeeds.
fn client(prog: &str, args: &[&str]) -> Vec<u8> {
    run(Command::new(prog).args(args).stdin(Stdio::null())).stdout
}

/// Runs of `(start, length, zero)` merged where neighbours agree.
fn merged(runs: impl IntoIterator<Item = (u64, u64, bool)>) -> Vec<(u64, u64, bool)> {
    let mut v: Vec<(u64, u64, bool)> = Vec::new();
    for (s, l, z) in runs {
        if l == 0 {
            continue;
        }
        match v.last_mut() {
            Some(last) if last.2 == z && last.0 + last.1 == s => last.1 += l,
            _ => v.push((s, l, z)),
        }
    }
    v
}

/// vhdkit's map of `image`: zero runs, and the rest (stored here or in a
/// parent) as data.
fn vhdkit_map(image: &Path, extra: &[&str]) -> Vec<(u64, u64, bool)> {
    let mut args = vec!["map", "--json", s(image)];
    args.extend_from_slice(extra);
    let v: serde_json::Value = serde_json::from_slice(&vhdkit_ok(&args)).unwrap();
    merged(v.as_array().unwrap().iter().map(|e| {
        (
            e["start"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            e["kind"] == "zero",
        )
    }))
}

/// The map of the differencing `child` over `parent`, its parent runs
/// resolved through the parent's map (zeros past the parent's end): what
/// the export's block status reports, holes in the base included.
fn chain_map(child: &Path, parent: &Path) -> Vec<(u64, u64, bool)> {
    let kinds = |image: &Path| -> Vec<(u64, u64, String)> {
        let out = vhdkit_ok(["map", "--json", s(image)]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    e["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let base = kinds(parent);
    let mut runs = Vec::new();
    for (start, len, kind) in kinds(child) {
        if kind != "parent" {
            runs.push((start, len, kind == "zero"));
            continue;
        }
        let end = start + len;
        let mut covered = start;
        for (b, bl, bk) in &base {
            let (from, to) = ((*b).max(start), (b + bl).min(end));
            if from < to {
                runs.push((from, to - from, bk == "zero"));
                covered = to;
            }
        }
        runs.push((covered, end - covered, true));
    }
    merged(runs)
}

/// `qemu-img map --output=json` of the export.
fn qemu_map(uri: &str) -> Vec<(u64, u64, bool)> {
    let out = client("qemu-img", &["map", "-f", "raw", "--output=json", uri]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    merged(v.as_array().unwrap().iter().map(|e| {
        let zero = e["zero"].as_bool().unwrap() && !e["data"].as_bool().unwrap();
        (
            e["start"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            zero,
        )
    }))
}

/// `nbdinfo --map` of the export: `start length type description` lines;
/// type bit 1 is "reads as zeros".
fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, bool)> {
    let out = String::from_utf8(client("nbdinfo", &["--map", uri])).unwrap();
    merged(out.lines().map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let t: u32 = f[2].parse().unwrap();
        (f[0].parse().unwrap(), f[1].parse().unwrap(), t & 2 != 0)
    }))
}

/// The images of acceptance 1 in `dir`: name, path, extra serve options.
fn images(dir: &Path) -> Vec<(&'static str, PathBuf, Vec<String>)> {
    let size = 12 << 20;
    let raw = dir.join("base.raw");
    write_raw(&raw, &mixed_content(size, 15));
    let conv = |name: &str, args: &[&str]| {
        let p = dir.join(name);
        let mut a = vec!["convert", "-q"];
        a.extend_from_slice(args);
        a.extend_from_slice(&[s(&raw), s(&p)]);
        vhdkit_ok(&a);
        p
    };
    let vhd_fixed = conv("fixed.vhd", &["-O", "vhd", "-t", "fixed"]);
    let vhd_dyn = conv("dyn.vhd", &["-O", "vhd", "--block-size", "512K"]);
    let vhdx512 = conv("s512.vhdx", &["-O", "vhdx", "--block-size", "1M"]);
    let vhdx4k = conv(
        "s4k.vhdx",
        &["-O", "vhdx", "--block-size", "1M", "--sector-size", "4096"],
    );
    let child = |parent: &Path, name: &str| {
        let p = dir.join(name);
        vhdkit_ok(["create", "--parent", s(parent), s(&p)]);
        vhdkit_ok([
            "write",
            s(&p),
            "--offset",
            "1536K",
            "--pattern",
            "0x77",
            "--length",
            "1M",
        ]);
        vhdkit_ok([
            "write",
            s(&p),
            "--offset",
            "7M",
            "--pattern",
            "0",
            "--length",
            "64K",
        ]);
        p
    };
    let vhd_child = child(&vhd_dyn, "child.vhd");
    let vhdx_child = child(&vhdx512, "child.vhdx");
    let evhd = dir.join("enc.evhd");
    make_evhd(&vhdx512, &evhd);
    let key = s(&test_key().1).to_string();
    vec![
        ("raw", raw.clone(), vec!["-f".into(), "raw".into()]),
        ("vhd fixed", vhd_fixed, vec![]),
        ("vhd dynamic", vhd_dyn, vec![]),
        ("vhd differencing", vhd_child, vec![]),
        ("vhdx 512", vhdx512, vec![]),
        ("vhdx 4k", vhdx4k, vec![]),
        ("vhdx differencing", vhdx_child, vec![]),
        ("evhd", evhd, vec!["--key".into(), key]),
    ]
}

/// Acceptance 1 and 2: every format read through the export equals
/// vhdkit's raw conversion, and the maps agree with `vhdkit map`.
#[test]
fn clients_read_every_format_as_vhdkit_does() {
    if !require_tool("qemu-img") || !require_tool("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (what, image, extra) in images(dir.path()) {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let reference = dir.path().join("ref.raw");
        let mut a = vec!["convert", "-q", "-O", "raw", "--force"];
        a.extend_from_slice(&extra);
        a.extend_from_slice(&[s(&image), s(&reference)]);
        vhdkit_ok(&a);
        let expected_map = match what {
            "vhd differencing" => chain_map(&image, &dir.path().join("dyn.vhd")),
            "vhdx differencing" => chain_map(&image, &dir.path().join("s512.vhdx")),
            _ => vhdkit_map(&image, &extra),
        };
        assert!(
            expected_map.iter().any(|r| r.2) || ["fixed", "raw"].iter().any(|w| what.contains(w)),
            "{what}: the image should have holes to serve"
        );

        let mut args = vec![s(&image), "--read-only"];
        args.extend_from_slice(&extra);
        let served = Served::start(dir.path(), &args);
        let out = dir.path().join("out.raw");
        client(
            "qemu-img",
            &["convert", "-f", "raw", "-O", "raw", &served.uri, s(&out)],
        );
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&reference).unwrap(),
            "{what}: qemu-img convert of the export differs from vhdkit convert"
        );
        client(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                &served.uri,
                s(&reference),
            ],
        );
        assert_eq!(qemu_map(&served.uri), expected_map, "{what}: qemu-img map");
        assert_eq!(
            nbdinfo_map(&served.uri),
            expected_map,
            "{what}: nbdinfo --map"
        );
        served.stop();
        std::fs::remove_file(&out).unwrap();
    }
}

/// Acceptance 3: writes, write-zeroes (with and without NO_HOLE), trims
/// and FUA writes through qemu-io; the image the server closed passes both
/// checkers and reads back the model.
#[test]
fn qemu_io_writes_reach_the_image() {
    if !require_tool("qemu-img") || !require_tool("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 12usize << 20;
    let original = mixed_content(size, 33);
    let raw = dir.path().join("w.raw");
    write_raw(&raw, &original);
    let cases: [(&str, &[&str], Option<&str>); 4] = [
        (
            "w.vhdx",
            &["-O", "vhdx", "--block-size", "1M"],
            Some("vhdx"),
        ),
        // qemu-img cannot open 4K-sector VHDX: vhdkit checks it alone.
        (
            "w4k.vhdx",
            &["-O", "vhdx", "--block-size", "1M", "--sector-size", "4096"],
            None,
        ),
        ("w.vhd", &["-O", "vhd", "--block-size", "512K"], Some("vpc")),
        ("w2.raw", &["-O", "raw"], None),
    ];
    for (name, conv, qfmt) in cases {
        let image = dir.path().join(name);
        let mut a = vec!["convert", "-q"];
        a.extend_from_slice(conv);
        a.extend_from_slice(&[s(&raw), s(&image)]);
        vhdkit_ok(&a);
        let fmt: &[&str] = if name.ends_with(".raw") {
            &["-f", "raw"]
        } else {
            &[]
        };
        let mut args = vec![s(&image), "--once"];
        args.extend_from_slice(fmt);
        let mut served = Served::start(dir.path(), &args);
        client(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0x5a 0 64k",
                "-c",
                "write -P 0x3c 1000 3000",
                "-c",
                "write -z 2M 1M",
                "-c",
                "write -z -u 4M 2M",
                "-c",
                "discard 8M 2M",
                "-c",
                "write -f -P 0x22 11M 4k",
                "-c",
                "read -P 0x3c 1000 3000",
                "-c",
                "flush",
                &served.uri,
            ],
        );
        served.wait();
        let mut model = original.clone();
        model[..64 << 10].fill(0x5a);
        model[1000..4000].fill(0x3c);
        model[2 << 20..3 << 20].fill(0);
        model[4 << 20..6 << 20].fill(0);
        model[11 << 20..(11 << 20) + 4096].fill(0x22);
        let back = dir.path().join("back.raw");
        let mut a = vec!["convert", "-q", "-O", "raw", "--force"];
        a.extend_from_slice(fmt);
        a.extend_from_slice(&[s(&image), s(&back)]);
        vhdkit_ok(&a);
        let got = std::fs::read(&back).unwrap();
        assert_eq!(got.len(), size, "{name}");
        // A trim leaves either the old bytes or zeros.
        let (t0, t1) = (8usize << 20, 10usize << 20);
        for blk in (t0..t1).step_by(512) {
            let g = &got[blk..blk + 512];
            assert!(
                g == &original[blk..blk + 512] || g.iter().all(|&b| b == 0),
                "{name}: trimmed sector at {blk:#x} reads neither old data nor zeros"
            );
        }
        model[t0..t1].copy_from_slice(&got[t0..t1]);
        assert!(
            got == model,
            "{name}: the image does not read back the model"
        );
        if !name.ends_with(".raw") {
            vhdkit_ok(["check", s(&image)]);
        }
        if let Some(q) = qfmt {
            // qemu-img checks VHDX only; it reads both.
            if q == "vhdx" {
                client("qemu-img", &["check", "-f", q, s(&image)]);
            }
            write_raw(&back, &model);
            client(
                "qemu-img",
                &["compare", "-f", q, "-F", "raw", s(&image), s(&back)],
            );
        }
    }
}

/// Acceptance 3: nbdcopy copies a 1 GiB image into a writable export over
/// several connections, and the content matches.
#[test]
fn nbdcopy_fills_an_export_over_several_connections() {
    if !require_tool("nbdcopy") || !require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(1 << 30).unwrap();
        let mut rng = Rng::new(7);
        for i in 0..48u64 {
            let at = i * (21 << 20) + rng.below(1 << 20) * 512 % (8 << 20);
            let len = 4096 + rng.below(2 << 20) as usize;
            f.write_all_at(&random_bytes(len, i), at).unwrap();
        }
    }
    let dst = dir.path().join("dst.vhdx");
    vhdkit_ok(["create", "--block-size", "2M", s(&dst), "1G"]);
    let served = Served::start(dir.path(), &[s(&dst)]);
    client(
        "nbdcopy",
        &[
            "--connections=4",
            "--requests=16",
            "--flush",
            s(&src),
            &served.uri,
        ],
    );
    served.stop();
    vhdkit_ok(["check", s(&dst)]);
    client("qemu-img", &["check", "-f", "vhdx", s(&dst)]);
    client(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vhdx", s(&src), s(&dst)],
    );
}

/// `--bind` with port 0 prints the TCP URI of the port taken; `--pid-file`
/// holds the server's pid while it serves and is gone after SIGTERM; two
/// images are two exports; a file where the socket should go is refused,
/// a stale socket replaced.
#[test]
fn serve_options_tcp_pid_file_exports_and_sockets() {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.vhdx");
    let b = dir.path().join("b.vhd");
    vhdkit_ok(["create", s(&a), "4M"]);
    vhdkit_ok(["create", s(&b), "8M"]);
    let pid = dir.path().join("serve.pid");
    let (mut served, lines) = Served::spawn(
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--pid-file",
            s(&pid),
            "--export-name",
            "first",
            s(&a),
            s(&b),
        ],
        2,
    );
    assert_eq!(lines.len(), 2, "one URI per export: {lines:?}");
    assert!(lines[0].starts_with("nbd://127.0.0.1:") && lines[0].ends_with("/first"));
    assert!(lines[1].ends_with("/b"), "{lines:?}");
    assert!(!lines[0].contains(":0/"), "the port taken is printed");
    let written = std::fs::read_to_string(&pid).unwrap();
    assert_eq!(written.trim(), served.child.id().to_string());
    for (uri, size) in [(&lines[0], "4194304"), (&lines[1], "8388608")] {
        let info = String::from_utf8(client("qemu-img", &["info", "-f", "raw", uri])).unwrap();
        assert!(info.contains(size), "{uri}: {info}");
    }
    served.uri = lines[0].clone();
    served.stop();
    assert!(!pid.exists(), "the pid file is removed on exit");

    // A regular file where the socket should be: refused, left alone.
    let f = dir.path().join("not-a-socket");
    std::fs::write(&f, b"keep me").unwrap();
    let err = vhdkit_fails(Some(1), &["serve", "--socket", s(&f), s(&a)]);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&f).unwrap(), b"keep me");
    // A socket nobody listens on any more is replaced.
    let stale = dir.path().join("nbd.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut served = Served::start(dir.path(), &[s(&a), "--once", "--read-only"]);
    client("qemu-img", &["info", "-f", "raw", &served.uri]);
    served.wait();
    assert!(!stale.exists(), "the socket is removed on exit");
}

/// Send `sig` to the server.
fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(r, 0);
}

/// SIGINT stops the server even when its socket file was removed (the
/// stop does not go by the path): it exits 0 with the writes flushed.
#[test]
fn sigint_stops_a_server_whose_socket_file_is_gone() {
    if !require_tool("qemu-io") || !require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.vhdx");
    vhdkit_ok(["create", s(&img), "4M"]);
    let mut served = Served::start(dir.path(), &[s(&img)]);
    client(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 0 64k", &served.uri],
    );
    std::fs::remove_file(dir.path().join("nbd.sock")).unwrap();
    signal(&served.child, libc::SIGINT);
    served.wait();
    let mut want = vec![0u8; 4 << 20];
    want[..64 << 10].fill(0x5a);
    let raw = dir.path().join("want.raw");
    std::fs::write(&raw, &want).unwrap();
    vhdkit_ok(["check", s(&img)]);
    client(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vhdx", s(&raw), s(&img)],
    );
}

/// A second signal exits at once (130) but still removes the socket and
/// the pid file; whichever way the server ends, neither is left behind.
#[test]
fn a_second_signal_leaves_no_socket_or_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.vhdx");
    vhdkit_ok(["create", s(&img), "4M"]);
    let pid = dir.path().join("serve.pid");
    let mut served = Served::start(dir.path(), &[s(&img), "--pid-file", s(&pid)]);
    assert!(pid.exists());
    signal(&served.child, libc::SIGINT);
    signal(&served.child, libc::SIGINT);
    let st = wait_bounded(&mut served.child, "vhdkit serve");
    assert!(matches!(st.code(), Some(0 | 130)), "{st:?}");
    assert!(!pid.exists(), "the pid file is removed ({st:?})");
    assert!(
        !dir.path().join("nbd.sock").exists(),
        "the socket is removed ({st:?})"
    );
}

/// `--key` with several images applies to the EVHD ones; the others are
/// served without it. With one image that is not EVHD it is still refused.
#[test]
fn a_key_serves_mixed_images() {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d.vhdx");
    vhdkit_ok(["create", s(&d), "4M"]);
    let e = dir.path().join("e.evhd");
    make_evhd(&d, &e);
    let key = &test_key().1;
    let err = vhdkit_fails(Some(1), &["serve", s(&d), "--key", s(key)]);
    assert!(err.contains("--key is for encrypted"), "{err}");
    let sock = dir.path().join("nbd.sock");
    let (served, lines) = Served::spawn(
        &[
            "serve",
            "--read-only",
            "--key",
            s(key),
            "--socket",
            s(&sock),
            s(&d),
            s(&e),
        ],
        2,
    );
    assert_eq!(lines.len(), 2, "one URI per export: {lines:?}");
    for uri in &lines {
        let info = String::from_utf8(client("qemu-img", &["info", "-f", "raw", uri])).unwrap();
        assert!(info.contains("4194304"), "{uri}: {info}");
    }
    served.stop();
}

/// Two images with the same stem: the error names the way out. A bind to
/// an address other than loopback warns that the export is unauthenticated
/// and writable.
#[test]
fn same_stems_and_open_binds_are_told() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    let a = dir.path().join("x.vhdx");
    let b = dir.path().join("b").join("x.vhd");
    vhdkit_ok(["create", s(&a), "4M"]);
    vhdkit_ok(["create", s(&b), "4M"]);
    let err = vhdkit_fails(Some(1), &["serve", s(&a), s(&b)]);
    assert!(err.contains("(use --export-name)"), "{err}");

    let mut child = Command::new(vhdkit_bin())
        .args(["serve", "--bind", "0.0.0.0:0", s(&a)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(err).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT_LIMIT).unwrap_or_default();
    let served = Served {
        child,
        uri: String::new(),
    };
    served.stop();
    assert!(
        line.contains("no authentication") && line.contains("write"),
        "{line}"
    );
}
