//! vhdkit against qemu-img, in the same run on the same files.
//!
//! Builds a 2 GiB raw image of mixed content (half random, an eighth text,
//! the rest zeros, interleaved in 1 MiB pieces), then times
//! raw -> dynamic VHD and dynamic VHD -> raw with both tools and prints the
//! ratios (qemu-img time / vhdkit time: above 1 means vhdkit is faster).
//! Each conversion is run `VHDKIT_BENCH_RUNS` times (default 3) and the best
//! time kept. Run with `cargo bench --bench vs_qemu`; set
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
    let src = dir.join("mixed.raw");
    make_mixed(&src, size);
    let vhdkit = env!("CARGO_BIN_EXE_vhdkit");
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let s = src.to_string_lossy().into_owned();

    println!(
        "source: {} MiB mixed raw image, best of {runs} runs",
        size / MIB
    );
    let mut rows = Vec::new();
    let ours = best(runs, &p("v.vhd"), || {
        run(
            vhdkit,
            &["convert", "-q", "--force", "-O", "vhd", &s, &p("v.vhd")],
        )
    });
    let theirs = best(runs, &p("q.vhd"), || {
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vpc",
                "-o",
                "subformat=dynamic,force_size=on",
                &s,
                &p("q.vhd"),
            ],
        )
    });
    rows.push(("raw -> dynamic VHD", ours, theirs));
    let ours = best(runs, &p("v.raw"), || {
        run(
            vhdkit,
            &[
                "convert",
                "-q",
                "--force",
                "-O",
                "raw",
                &p("q.vhd"),
                &p("v.raw"),
            ],
        )
    });
    let theirs = best(runs, &p("q.raw"), || {
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "vpc",
                "-O",
                "raw",
                &p("q.vhd"),
                &p("q.raw"),
            ],
        )
    });
    rows.push(("dynamic VHD -> raw", ours, theirs));

    // Both tools must have produced the same content.
    assert!(
        run("cmp", &[&s, &p("v.raw")]),
        "vhdkit output differs from the source"
    );
    assert!(
        run("cmp", &[&s, &p("q.raw")]),
        "qemu-img output differs from the source"
    );

    println!(
        "{:<22} {:>10} {:>10} {:>8}",
        "conversion", "vhdkit", "qemu-img", "ratio"
    );
    for (name, ours, theirs) in rows {
        println!(
            "{name:<22} {:>9.3}s {:>9.3}s {:>7.2}x",
            ours.as_secs_f64(),
            theirs.as_secs_f64(),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Best wall time of `runs` runs of `f`, removing `out` before each.
fn best(runs: usize, out: &str, f: impl Fn() -> bool) -> Duration {
    (0..runs)
        .map(|_| {
            let _ = fs::remove_file(out);
            let t = Instant::now();
            assert!(f(), "command failed");
            t.elapsed()
        })
        .min()
        .expect("at least one run")
}

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
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
