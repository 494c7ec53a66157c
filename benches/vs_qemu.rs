//! vhdkit against qemu-img, in the same run on the same files.
//!
//! Builds a 2 GiB raw image of mixed content (half random, an eighth text,
//! the rest zeros, interleaved in 1 MiB pieces), then times
//! raw -> dynamic VHD and dynamic VHD -> raw with both tools and prints the
//! ratios (qemu-img time / vhdkit time: above 1 means vhdkit is faster).
//! Then, on a dynamic VHDX made from the same image by qemu-img: VHDX -> raw
//! with both tools, and 4 KiB reads at a fixed stride that scatters them over
//! the whole disk (the same offsets for both), through the library and with
//! `qemu-img bench` (page cache, queue depth 1 and 16; the better qemu figure
//! is the one compared).
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

    let conversions: [Conversion; 3] = [
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
    // The VHDX input, written by qemu-img.
    assert!(run(
        "qemu-img",
        &args(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            "subformat=dynamic",
            &src,
            &p("q.vhdx")
        ])
    ));

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
