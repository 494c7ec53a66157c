//! Replays every input of the fuzz corpora (`fuzz/corpus/<target>/`) and
//! every crash ever found (`fuzz/regressions/<target>/`) through the fuzz
//! targets' own bodies, so a fixed bug stays fixed without the fuzzer.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files under `dir/<target>/`, sorted.
fn inputs(dir: &Path, target: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir.join(target)) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Run `target` on each file; name every input that panicked.
fn replay(dir: &str) -> usize {
    let base = root().join(dir);
    let mut count = 0;
    let mut failed = Vec::new();
    for (name, run) in harness::TARGETS {
        for path in inputs(&base, name) {
            // A running fuzzer may remove a file while this reads the folder.
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            count += 1;
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "inputs that panic: {failed:#?}");
    count
}

#[test]
fn corpora_replay_without_panics() {
    let n = replay("corpus");
    println!("replayed {n} corpus inputs");
    // Every target has a committed corpus.
    for (name, _) in harness::TARGETS {
        assert!(
            !inputs(&root().join("corpus"), name).is_empty(),
            "fuzz/corpus/{name} is empty"
        );
    }
}

#[test]
fn crash_regressions_stay_fixed() {
    let n = replay("regressions");
    println!("replayed {n} former crashes");
}

#[test]
fn sparse_inputs_decode() {
    let mut d = harness::SPARSE_MAGIC.to_vec();
    d.extend_from_slice(&10u32.to_le_bytes());
    d.extend_from_slice(&2u16.to_le_bytes());
    d.extend_from_slice(b"ab");
    d.extend_from_slice(&20u32.to_le_bytes());
    d.extend_from_slice(&0u16.to_le_bytes());
    let f = harness::image_bytes(&d);
    assert_eq!(f.len(), 20);
    assert_eq!(&f[10..12], b"ab");
    assert_eq!(harness::image_bytes(b"plain"), b"plain");
}
