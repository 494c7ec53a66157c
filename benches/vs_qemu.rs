//! vhdkit against qemu-img, in the same run on the same files.
//!
//! Builds a 2 GiB raw image of mixed content (half random, an eighth text,
//! the rest zeros, interleaved in 1 MiB pieces), then times with both tools
//! raw -> dynamic VHD, dynamic VHD -> raw, raw -> dynamic VHDX (32 MiB
//! blocks for both writers) and dynamic VHDX -> raw (both reading the VHDX
//! qemu-img made), and prints the ratios (qemu-img time / vhdkit time: above
//! 1 means vhdkit is faster).
//!
//! On that VHDX it then times 4 KiB reads at a fixed stride that scatters
//! them over the whole disk (the same offsets for both), through the library
//! and with `qemu-img bench` (page cache, queue depth 1 and 16; the better
//! qemu figure is the one compared); and random 4 KiB writes into an empty
//! dynamic VHDX: `qemu-img bench -w -t writeback` against the same writes
//! through the library on a copy of the same empty file. Both go through the
//! page cache and make the data durable once, at the end (qemu-img flushes
//! when it closes the image; vhdkit calls `flush` and `close`); each pays
//! for its own metadata syncs; the results are compared afterwards.
//!
//! Each measurement is run `VHDKIT_BENCH_RUNS` times (default 3), after a
//! `sync`, and the best time kept. Outputs are not synced by either tool
//! (qemu-img's default; vhdkit without `--sync`). Run with `cargo bench --bench vs_qemu`; set
//! `VHDKIT_BENCH_SIZE` (e.g. `256M`) for a quicker look.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn main() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        println!("skipping: qemu-img not installed");
        return;
    }
    let size = std::env::var("VHDKIT_BENCH_SIZE")
        .ok()
        .map(|s| vhdkit::size::parse_size(&s).expect("VHDKIT_BENCH_SIZE"))
        .unwrap_or(2 << 30);
    let runs: usize = std::env::var("VHDKIT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-vs-qemu");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("bench dir");
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let src = p("mixed.raw");
    make_mixed(Path::new(&src), size);
    println!(
        "source: {} MiB mixed raw image, best of {runs} runs",
        size / MIB
    );

    let conversions: [Conversion; 4] = [
        conversion(
            "raw -> dynamic VHD",
            args(&["convert", "-q", "--force", "-O", "vhd", &src, &p("v.vhd")]),
            args(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vpc",
                "-o",
                "subformat=dynamic,force_size=on",
                &src,
                &p("q.vhd"),
            ]),
            p("v.vhd"),
            p("q.vhd"),
        ),
        conversion(
            "dynamic VHD -> raw",
            args(&[
                "convert",
                "-q",
                "--force",
                "-O",
                "raw",
                &p("q.vhd"),
                &p("v.raw"),
            ]),
            args(&[
                "convert",
                "-f",
                "vpc",
                "-O",
                "raw",
                &p("q.vhd"),
                &p("q.raw"),
            ]),
            p("v.raw"),
            p("q.raw"),
        ),
        conversion(
            "raw -> dynamic VHDX",
            args(&[
                "convert",
                "-q",
                "--force",
                "-O",
                "vhdx",
                "--block-size",
                "32M",
                &src,
                &p("v.vhdx"),
            ]),
            args(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "-o",
                "subformat=dynamic,block_size=33554432",
                &src,
                &p("q.vhdx"),
            ]),
            p("v.vhdx"),
            p("q.vhdx"),
        ),
        conversion(
            "dynamic VHDX -> raw",
            args(&[
                "convert",
                "-q",
                "--force",
                "-O",
                "raw",
                &p("q.vhdx"),
                &p("x.raw"),
            ]),
            args(&[
                "convert",
                "-f",
                "vhdx",
                "-O",
                "raw",
                &p("q.vhdx"),
                &p("y.raw"),
            ]),
            p("x.raw"),
            p("y.raw"),
        ),
    ];
    let vhdkit = env!("CARGO_BIN_EXE_vhdkit");
    println!(
        "{:<22} {:>10} {:>10} {:>8}",
        "conversion", "vhdkit", "qemu-img", "ratio"
    );
    for c in &conversions {
        let name = c.name;
        let ours = best(runs, &c.ours_out, || run(vhdkit, &c.ours));
        let theirs = best(runs, &c.qemu_out, || run("qemu-img", &c.qemu));
        println!(
            "{name:<22} {:>9.3}s {:>9.3}s {:>7.2}x",
            ours.as_secs_f64(),
            theirs.as_secs_f64(),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
    // Both tools must have produced the same content.
    assert!(
        run(vhdkit, &args(&["compare", &src, &p("v.vhdx")])),
        "vhdkit's VHDX differs from the source"
    );
    for out in [p("v.raw"), p("q.raw"), p("x.raw"), p("y.raw")] {
        assert!(
            run("cmp", &args(&[&src, &out])),
            "{out} differs from the source"
        );
    }

    let count = 200_000u64;
    let ours = (0..runs)
        .map(|_| strided_reads(&dir.join("q.vhdx"), size, count))
        .min()
        .expect("runs");
    let theirs = [1u32, 16]
        .iter()
        .map(|depth| {
            best(runs, &p("unused"), || {
                run(
                    "qemu-img",
                    &args(&[
                        "bench",
                        "-q",
                        "-f",
                        "vhdx",
                        "-t",
                        "writeback",
                        "-c",
                        &count.to_string(),
                        "-d",
                        &depth.to_string(),
                        "-s",
                        "4096",
                        "-S",
                        &STRIDE.to_string(),
                        &p("q.vhdx"),
                    ]),
                )
            })
        })
        .min()
        .expect("depths");
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    println!(
        "4 KiB strided reads, dynamic VHDX: vhdkit {:.0}/s, qemu-img bench {:.0}/s, ratio {:.2}x",
        rate(ours),
        rate(theirs),
        rate(ours) / rate(theirs)
    );
    let (ours, theirs, count) = random_writes(&dir, size, runs);
    println!(
        "4 KiB random writes, dynamic VHDX ({count}, step {STEP}): vhdkit {:.3}s, qemu-img bench {:.3}s, ratio {:.2}x",
        ours.as_secs_f64(),
        theirs.as_secs_f64(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    let _ = fs::remove_dir_all(&dir);
}

/// One conversion run by both tools.
struct Conversion {
    name: &'static str,
    ours: Vec<String>,
    qemu: Vec<String>,
    ours_out: String,
    qemu_out: String,
}

fn conversion(
    name: &'static str,
    ours: Vec<String>,
    qemu: Vec<String>,
    ours_out: String,
    qemu_out: String,
) -> Conversion {
    Conversion {
        name,
        ours,
        qemu,
        ours_out,
        qemu_out,
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Distance between the write benchmark's requests: a prime number of
/// 4 KiB pages (about 409 MiB), so consecutive requests land in different
/// blocks and every block is hit.
const STEP: u64 = 104_729 * 4096;

/// Time `count` random 4 KiB writes into an empty dynamic VHDX of `size`
/// bytes with qemu-img bench and with the vhdkit library, best of `runs`.
fn random_writes(dir: &Path, size: u64, runs: usize) -> (Duration, Duration, u64) {
    let count: u64 = std::env::var("VHDKIT_BENCH_WRITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let empty = dir.join("empty.vhdx");
    let _ = fs::remove_file(&empty);
    assert!(run(
        "qemu-img",
        &args(&[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "subformat=dynamic,block_size=33554432",
            &empty.to_string_lossy(),
            &size.to_string(),
        ])
    ));
    let q = dir.join("bench-q.vhdx");
    let v = dir.join("bench-v.vhdx");
    let mut theirs = Duration::MAX;
    let mut ours = Duration::MAX;
    for _ in 0..runs {
        fs::copy(&empty, &q).expect("copy");
        let _ = Command::new("sync").status();
        let t = Instant::now();
        assert!(run(
            "qemu-img",
            &args(&[
                "bench",
                "-q",
                "-w",
                "-f",
                "vhdx",
                "-t",
                "writeback",
                "-c",
                &count.to_string(),
                "-s",
                "4096",
                "-S",
                &STEP.to_string(),
                "--pattern=165",
                &q.to_string_lossy(),
            ])
        ));
        theirs = theirs.min(t.elapsed());

        fs::copy(&empty, &v).expect("copy");
        let _ = Command::new("sync").status();
        let t = Instant::now();
        library_writes(&v, size, count);
        ours = ours.min(t.elapsed());
    }
    // Same requests, same result.
    assert!(
        run(
            env!("CARGO_BIN_EXE_vhdkit"),
            &args(&["compare", &q.to_string_lossy(), &v.to_string_lossy()])
        ),
        "qemu-img bench and vhdkit wrote different content"
    );
    (ours, theirs, count)
}

/// The write benchmark through the library: open, write, flush, close.
fn library_writes(path: &Path, size: u64, count: u64) {
    use vhdkit::VirtualDisk;
    let storage = vhdkit::FileStorage::open(path, true).expect("open");
    let mut disk = vhdkit::unstable::vhdx::VhdxDisk::open(
        Box::new(storage),
        Some(path.to_path_buf()),
        &vhdkit::OpenOptions::new().writable(true),
        &vhdkit::unstable::chain::Chain::default(),
    )
    .expect("open VHDX");
    let buf = [165u8; 4096];
    let mut offset = 0u64;
    for _ in 0..count {
        disk.write_at(&buf, offset).expect("write");
        offset = (offset + STEP) % size;
    }
    disk.flush().expect("flush");
    disk.close().expect("close");
}

/// Distance between consecutive 4 KiB reads: a prime number of 4 KiB units
/// (about 31 MiB), so the offsets visit blocks all over the disk.
const STRIDE: u64 = 7_919 * 4096;

/// Time `count` 4 KiB reads through the library at the offsets `qemu-img
/// bench -S STRIDE` uses: start at 0, add the stride, wrap at the end.
fn strided_reads(path: &Path, size: u64, count: u64) -> Duration {
    let disk = vhdkit::open(path, &vhdkit::OpenOptions::new()).expect("open VHDX");
    assert_eq!(disk.virtual_size(), size);
    let mut buf = [0u8; 4096];
    let mut off = 0u64;
    let t = Instant::now();
    for _ in 0..count {
        disk.read_at(&mut buf, off).expect("read");
        off += STRIDE;
        if off + 4096 > size {
            off = 0;
        }
    }
    t.elapsed()
}

/// Best wall time of `runs` runs of `f`, removing `out` before each.
fn best(runs: usize, out: &str, f: impl Fn() -> bool) -> Duration {
    (0..runs)
        .map(|_| {
            let _ = fs::remove_file(out);
            // Start every run with no dirty pages pending, so that one run's
            // write-back does not throttle the next one.
            let _ = Command::new("sync").status();
            let t = Instant::now();
            assert!(f(), "command failed");
            t.elapsed()
        })
        .min()
        .expect("at least one run")
}

fn run(cmd: &str, args: &[String]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Write `size` bytes: per 8 MiB, 4 MiB random, 1 MiB text, 3 MiB zeros.
fn make_mixed(path: &Path, size: u64) {
    let mut f = fs::File::create(path).expect("create source");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let text: Vec<u8> = b"The quick brown fox jumps over the lazy dog. vhdkit bench text.\n"
        .iter()
        .copied()
        .cycle()
        .take(MIB as usize)
        .collect();
    let zeros = vec![0u8; MIB as usize];
    let mut random = vec![0u8; MIB as usize];
    for i in 0..size / MIB {
        match i % 8 {
            0..=3 => {
                for w in random.chunks_exact_mut(8) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    w.copy_from_slice(&rng.to_le_bytes());
                }
                f.write_all(&random).expect("write");
            }
            4 => f.write_all(&text).expect("write"),
            _ => f.write_all(&zeros).expect("write"),
        }
    }
    f.sync_all().expect("sync");
}
