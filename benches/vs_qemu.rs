//! vhdkit against qemu-img, in the same run on the same files.
//!
//! Builds a 2 GiB raw image of mixed content (half random, an eighth text,
//! the rest zeros, interleaved in 1 MiB pieces), then times with both tools
//! raw -> dynamic VHD, dynamic VHD -> raw, raw -> dynamic VHDX and
//! dynamic VHDX -> raw (both reading the same qemu-made VHDX; 32 MiB blocks
//! for both writers), and random 4 KiB writes into an empty dynamic VHDX of
//! the same size: `qemu-img bench -w` against the same writes through the
//! vhdkit library on a copy of the same empty file. It prints the ratios
//! (qemu-img time / vhdkit time: above 1 means vhdkit is faster).
//!
//! Cache mode of the write benchmark: both go through the host page cache
//! and make the data durable once, at the end (`qemu-img bench -t
//! writeback`, which flushes when it closes the image; vhdkit's
//! `FileStorage` with buffered `pwrite`, then `flush` and `close`). Each
//! side pays for its own metadata syncs on block allocation. The offsets
//! are qemu-img bench's: request `i` at `(i * STEP) mod size`, with STEP a
//! prime number of 4 KiB pages so the requests scatter over every block;
//! both results are compared afterwards.
//!
//! Each measurement is run `VHDKIT_BENCH_RUNS` times (default 3) and the best
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

    let ours = best(runs, &p("v.vhdx"), || {
        run(
            vhdkit,
            &[
                "convert",
                "-q",
                "--force",
                "-O",
                "vhdx",
                "--block-size",
                "32M",
                &s,
                &p("v.vhdx"),
            ],
        )
    });
    let theirs = best(runs, &p("q.vhdx"), || {
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "-o",
                "subformat=dynamic,block_size=33554432",
                &s,
                &p("q.vhdx"),
            ],
        )
    });
    rows.push(("raw -> dynamic VHDX", ours, theirs));
    assert!(
        run(vhdkit, &["compare", &s, &p("v.vhdx")]),
        "vhdkit's VHDX differs from the source"
    );
    let ours = best(runs, &p("vx.raw"), || {
        run(
            vhdkit,
            &[
                "convert",
                "-q",
                "--force",
                "-O",
                "raw",
                &p("q.vhdx"),
                &p("vx.raw"),
            ],
        )
    });
    let theirs = best(runs, &p("qx.raw"), || {
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "vhdx",
                "-O",
                "raw",
                &p("q.vhdx"),
                &p("qx.raw"),
            ],
        )
    });
    rows.push(("dynamic VHDX -> raw", ours, theirs));
    assert!(
        run("cmp", &[&s, &p("vx.raw")]),
        "vhdkit VHDX -> raw differs"
    );
    assert!(
        run("cmp", &[&s, &p("qx.raw")]),
        "qemu-img VHDX -> raw differs"
    );

    let (ours, theirs, count) = random_writes(&dir, size, runs);
    rows.push(("4K random writes VHDX", ours, theirs));
    println!("random writes: {count} x 4 KiB, step {STEP} bytes");

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
        "{:<24} {:>10} {:>10} {:>8}",
        "conversion", "vhdkit", "qemu-img", "ratio"
    );
    for (name, ours, theirs) in rows {
        println!(
            "{name:<24} {:>9.3}s {:>9.3}s {:>7.2}x",
            ours.as_secs_f64(),
            theirs.as_secs_f64(),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
    let _ = fs::remove_dir_all(&dir);
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
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "subformat=dynamic,block_size=33554432",
            &empty.to_string_lossy(),
            &size.to_string(),
        ]
    ));
    let q = dir.join("bench-q.vhdx");
    let v = dir.join("bench-v.vhdx");
    let mut theirs = Duration::MAX;
    let mut ours = Duration::MAX;
    for _ in 0..runs {
        fs::copy(&empty, &q).expect("copy");
        let t = Instant::now();
        assert!(run(
            "qemu-img",
            &[
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
            ]
        ));
        theirs = theirs.min(t.elapsed());

        fs::copy(&empty, &v).expect("copy");
        let t = Instant::now();
        library_writes(&v, size, count);
        ours = ours.min(t.elapsed());
    }
    // Same requests, same result.
    assert!(
        run(
            env!("CARGO_BIN_EXE_vhdkit"),
            &["compare", &q.to_string_lossy(), &v.to_string_lossy()]
        ),
        "qemu-img bench and vhdkit wrote different content"
    );
    (ours, theirs, count)
}

/// The write benchmark through the library: open, write, flush, close.
fn library_writes(path: &Path, size: u64, count: u64) {
    use vhdkit::VirtualDisk;
    let storage = vhdkit::io::FileStorage::open(path, true).expect("open");
    let mut disk = vhdkit::vhdx::VhdxDisk::open(
        Box::new(storage),
        Some(path.to_path_buf()),
        &vhdkit::OpenOptions::new().writable(true),
        &vhdkit::parent::Chain::default(),
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
