//! `resize` and `compact` of EVHD against a flat model (no oracle reads
//! EVHD: the model is the oracle), through the library and the CLI; and
//! the refusal without a key, which leaves the file byte for byte as it
//! was.

mod common;

use std::sync::{Arc, OnceLock};

use common::*;
use vhdkit::compact::{Mode, compact_storage};
use vhdkit::report::{CheckReport, Format, Severity};
use vhdkit::resize::{Target, resize_storage};
use vhdkit::{ErrorKind, EvhdBuilder, EvhdDisk, Hint, KeyFile, MemStorage, PrivateKey, Storage};
use vhdkit::{OpenOptions, VirtualDisk};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const BS: u64 = 4 * KIB;

fn key() -> &'static Arc<PrivateKey> {
    static K: OnceLock<Arc<PrivateKey>> = OnceLock::new();
    K.get_or_init(|| Arc::new(PrivateKey::generate(2048).expect("keygen")))
}

fn keyed() -> OpenOptions {
    OpenOptions::new().key(key().clone())
}

fn no_crash(image: Vec<u8>) -> FaultStorage {
    FaultStorage::new(image, u64::MAX, CrashMode::Prefix { tear: false }, 0)
}

fn check_errors(image: &[u8]) -> Vec<String> {
    let mut report = CheckReport::default();
    vhdkit::unstable::evhd::check::check(
        Box::new(MemStorage::read_only(image.to_vec())),
        std::slice::from_ref(key()),
        &mut report,
    )
    .unwrap();
    report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| format!("{} at {:?}: {}", f.structure, f.offset, f.message))
        .collect()
}

fn content(image: &[u8]) -> Vec<u8> {
    let d = EvhdDisk::open(
        Box::new(MemStorage::read_only(image.to_vec())),
        None,
        &keyed(),
    )
    .unwrap();
    read_disk(&d)
}

/// Random writes, grows (every table path), shrinks, compactions (zero
/// blocks stored by a writer that keeps them), reopening between steps:
/// after each, the content equals the flat model and `check` is clean.
#[test]
fn resize_and_compact_keep_the_content_of_a_flat_model() {
    let size = MIB - 512;
    let probe = no_crash(Vec::new());
    let d = EvhdBuilder::new(size)
        .block_size(BS)
        .recipient(key().public().clone(), "model")
        .signer(key().clone())
        .create(Box::new(probe.clone()), None)
        .unwrap();
    drop(d);
    let mut image = probe.durable();
    let mut model = vec![0u8; size as usize];
    let mut r = Rng::new(14);
    // Sizes that take each path: same pages, pages in place, table moved,
    // table and journal moved; shrinks in between.
    let targets = [
        (MIB + 4096, false),
        (3 * MIB, false),
        (2 * MIB + 1536, true),
        (80 * MIB, false),
        (5 * MIB, true),
        (100 * MIB, false),
        (7 * MIB - 512, true),
    ];
    for (step, &(target, shrink)) in targets.iter().enumerate() {
        // Writes, and a few blocks stored as zeros.
        let fs = no_crash(image);
        let mut d = EvhdDisk::open(Box::new(fs.clone()), None, &keyed().writable(true)).unwrap();
        let len = model.len() as u64;
        for _ in 0..24 {
            let n = (1 + r.below(3 * BS)) as usize;
            let at = r.below(len.min(target) - n as u64);
            let data = random_bytes(n, r.next_u64());
            d.write_at(&data, at).unwrap();
            model[at as usize..at as usize + n].copy_from_slice(&data);
        }
        for _ in 0..6 {
            let b = r.below(len.min(target) / BS);
            d.store_block(b, &vec![0u8; BS as usize]).unwrap();
            model[(b * BS) as usize..((b + 1) * BS) as usize].fill(0);
        }
        d.close().unwrap();
        drop(d);
        image = fs.durable();
        // A shrink cuts only zeros: make the range cut off zero first.
        if shrink {
            let fs = no_crash(image);
            let mut d =
                EvhdDisk::open(Box::new(fs.clone()), None, &keyed().writable(true)).unwrap();
            let cut = vec![0u8; (len - target) as usize];
            d.write_at(&cut, target).unwrap();
            d.close().unwrap();
            drop(d);
            image = fs.durable();
        }
        let fs = no_crash(image);
        let done = resize_storage(
            Arc::new(fs.clone()) as Arc<dyn Storage>,
            None,
            Format::Evhd,
            Target::Size(target),
            shrink,
            &keyed(),
        )
        .unwrap_or_else(|e| panic!("step {step}: resize to {target}: {e}"));
        assert_eq!((done.old_size, done.new_size), (len, target), "step {step}");
        model.resize(target as usize, 0);
        image = fs.durable();
        assert_eq!(
            check_errors(&image),
            Vec::<String>::new(),
            "step {step}: resize"
        );
        assert!(
            content(&image) == model,
            "step {step}: content after resize"
        );
        let mode = if step % 2 == 0 {
            Mode::Full
        } else {
            Mode::Quick
        };
        let fs = no_crash(image);
        let before = fs.durable().len() as u64;
        let rep = compact_storage(Box::new(fs.clone()), None, &keyed(), mode).unwrap();
        image = fs.durable();
        assert!(rep.blocks_dropped >= 1, "step {step}: {rep:?}");
        assert_eq!(rep.size_before, before);
        assert_eq!(rep.size_after, image.len() as u64, "step {step}: {rep:?}");
        assert_eq!(
            check_errors(&image),
            Vec::<String>::new(),
            "step {step}: compact"
        );
        assert!(
            content(&image) == model,
            "step {step}: content after compact"
        );
        // A full compact stores each block once: nothing beyond the last.
        if mode == Mode::Full {
            let d = EvhdDisk::open(
                Box::new(MemStorage::read_only(image.clone())),
                None,
                &keyed(),
            )
            .unwrap();
            let h = d.header();
            let data: u64 = d
                .map(0, d.virtual_size())
                .unwrap()
                .iter()
                .filter(|e| e.kind == vhdkit::ExtentKind::Data)
                .map(|e| e.length)
                .sum();
            let stored = data.div_ceil(BS);
            assert_eq!(h.slot_count, stored, "step {step}");
            assert_eq!(image.len() as u64, h.data_offset + h.slot_count * BS);
        }
    }
}

/// Without a key, resize and compact are refused with a typed hint and a
/// message that names the need and no CLI option; the image is untouched.
#[test]
fn without_a_key_nothing_changes() {
    let probe = no_crash(Vec::new());
    let mut d = EvhdBuilder::new(4 * MIB)
        .block_size(BS)
        .recipient(key().public().clone(), "refuse")
        .create(Box::new(probe.clone()), None)
        .unwrap();
    d.write_at(&random_bytes(64 * KIB as usize, 1), 0).unwrap();
    d.store_block(40, &vec![0u8; BS as usize]).unwrap();
    d.close().unwrap();
    drop(d);
    let image = probe.durable();
    let hash = sha256_hex(&image);
    for (target, shrink) in [(8 * MIB, false), (2 * MIB, true)] {
        let fs = no_crash(image.clone());
        let e = resize_storage(
            Arc::new(fs.clone()) as Arc<dyn Storage>,
            None,
            Format::Evhd,
            Target::Size(target),
            shrink,
            &OpenOptions::new(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyRequired, "{e}");
        assert_eq!(e.hint(), Some(Hint::Key), "{e}");
        assert!(e.to_string().contains("private key"), "{e}");
        assert!(!e.to_string().contains("--"), "{e}");
        assert_eq!(fs.count(), 0, "a storage operation was made");
        assert_eq!(sha256_hex(&fs.durable()), hash);
    }
    let fs = no_crash(image.clone());
    let e =
        compact_storage(Box::new(fs.clone()), None, &OpenOptions::new(), Mode::Full).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyRequired, "{e}");
    assert_eq!(e.hint(), Some(Hint::Key), "{e}");
    assert_eq!(sha256_hex(&fs.durable()), hash);
}

/// Through the CLI: without `--key` an error naming the key and the file
/// byte for byte unchanged; with it, resize and compact, then `vhdkit
/// check` clean and the content as the model says.
#[test]
fn cli_resize_and_compact_with_and_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let img = dir.path().join("disk.evhd");
    let size = 6 * MIB;
    let mut model = mixed_content(size as usize, 3);
    model[(4 * MIB) as usize..].fill(0);
    write_raw(&raw, &model);
    make_evhd(&raw, &img);
    let key_path = &test_key().1;
    let before = file_sha256(&img);
    for args in [
        vec!["resize", s(&img), "12M"],
        vec!["resize", s(&img), "5M", "--shrink"],
    ] {
        let out = vhdkit(&args);
        let (code, _, err) = code_out_err(&out);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains("key") && err.contains("--key"), "{err}");
        assert_eq!(file_sha256(&img), before, "{args:?} changed the image");
    }
    let k = s(key_path);
    vhdkit_ok(["resize", s(&img), "12M", "--key", k]);
    model.resize(12 * MIB as usize, 0);
    vhdkit_ok(["resize", s(&img), "5M", "--shrink", "--key", k]);
    model.truncate(5 * MIB as usize);
    vhdkit_ok(["compact", s(&img), "--key", k]);
    vhdkit_ok(["check", "--key", k, s(&img)]);
    let private = Arc::new(KeyFile::read(key_path).unwrap().into_private().unwrap());
    let d = vhdkit::open(&img, &OpenOptions::new().key(private)).unwrap();
    assert_eq!(d.virtual_size(), 5 * MIB);
    assert!(
        read_disk(d.as_ref()) == model,
        "content after the CLI resize and compact"
    );
}
