//! EVHD throughput: raw -> evhd and evhd -> raw for both ciphers, against
//! `openssl speed -evp aes-256-gcm` (one process and `-multi` over every
//! core) in the same run. Prints GB/s (10^9 bytes per second).
//!
//! The source is incompressible random data (no zero blocks to skip), so
//! every byte goes through the cipher. Run with `cargo bench --bench evhd`;
//! `VHDKIT_BENCH_SIZE` (default 1G) and `VHDKIT_BENCH_RUNS` (default 3,
//! best kept) tune it.
//!
//! Before each timed run the bench touches and frees twice the image size
//! of memory. Virtual machines that hand freed memory back to their host
//! (virtio-balloon free page reporting, as on the machine these numbers
//! come from) make the first touch of such memory a host page fault; the
//! page cache of a run's fresh output file is then two to three times as
//! slow to fill, whatever writes it, and runs vary by that much. Touching
//! the memory first gives every case, the plain copy included, memory the
//! host has already backed.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let size = std::env::var("VHDKIT_BENCH_SIZE")
        .ok()
        .map(|s| vhdkit::size::parse_size(&s).expect("VHDKIT_BENCH_SIZE"))
        .unwrap_or(1 << 30);
    let runs: usize = std::env::var("VHDKIT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-evhd");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("bench dir");
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let vhdkit = env!("CARGO_BIN_EXE_vhdkit");

    // Random source data.
    {
        let mut f = fs::File::create(p("src.raw")).expect("create source");
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..size / (1 << 20) {
            for c in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).expect("write source");
        }
    }
    run(vhdkit, &["keygen", "--bits", "2048", "-o", &p("k.xml")]);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "source: {} MiB random raw image, best of {runs} runs, {threads} cores",
        size >> 20
    );
    let convert = |args: &[&str]| run(vhdkit, &[&["convert", "-q", "--force"], args].concat());
    // The floor: the same copy without encryption (reading the source and
    // writing the output through the page cache).
    let copy = best(runs, size, &p("plain.raw"), || {
        convert(&["-O", "raw", &p("src.raw"), &p("plain.raw")])
    });
    println!(
        "{:<16} raw -> raw  {:>6.2} GB/s   (no encryption: the copy alone)",
        "none",
        gbps(size, copy)
    );
    let _ = fs::remove_file(p("plain.raw"));
    for cipher in ["aes-256-gcm", "aes-256-gcm-siv"] {
        let enc = best(runs, size, &p("x.evhd"), || {
            convert(&[
                "-O",
                "evhd",
                "--cipher",
                cipher,
                "--recipient",
                &p("k.xml"),
                &p("src.raw"),
                &p("x.evhd"),
            ])
        });
        let dec = best(runs, size, &p("x.raw"), || {
            convert(&["-O", "raw", "--key", &p("k.xml"), &p("x.evhd"), &p("x.raw")])
        });
        println!(
            "{cipher:<16} raw -> evhd {:>6.2} GB/s   evhd -> raw {:>6.2} GB/s",
            gbps(size, enc),
            gbps(size, dec)
        );
    }
    match (openssl_speed(None), openssl_speed(Some(threads))) {
        (Some(one), Some(all)) => println!(
            "openssl speed -evp aes-256-gcm (64 KiB): {one:.2} GB/s one core, {all:.2} GB/s on {threads} cores"
        ),
        _ => println!("openssl speed: not available"),
    }
}

fn gbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

fn run(bin: &str, args: &[&str]) {
    let out = Command::new(bin).args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn best(runs: usize, size: u64, output: &str, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let _ = fs::remove_file(output);
            // No dirty pages from the previous run may throttle this one.
            let _ = Command::new("sync").status();
            warm_memory(2 * size);
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .expect("at least one run")
}

/// Write to every page of `bytes` of fresh memory, then free it (see the
/// module comment).
fn warm_memory(bytes: u64) {
    let mut v = vec![0u8; bytes as usize];
    for page in v.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&v);
}

/// GB/s of `openssl speed -evp aes-256-gcm` on 64 KiB buffers.
fn openssl_speed(multi: Option<usize>) -> Option<f64> {
    let mut args = vec![
        "speed".to_string(),
        "-seconds".into(),
        "2".into(),
        "-bytes".into(),
        "65536".into(),
    ];
    if let Some(n) = multi {
        args.extend(["-multi".into(), n.to_string()]);
    }
    args.extend(["-evp".into(), "aes-256-gcm".into()]);
    let out = Command::new("openssl").args(&args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Last line: "AES-256-GCM   1234567.89k" (thousands of bytes per second).
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().starts_with("aes-256-gcm"))?;
    let v = line
        .split_whitespace()
        .last()?
        .trim_end_matches('k')
        .parse::<f64>()
        .ok()?;
    Some(v * 1000.0 / 1e9)
}
