//! `check` of an EVHD whose header copy a commit's last write tore, with
//! the journal holding that commit: information, not damage. A copy that
//! such a write cannot explain (damaged after the write completed, or in
//! its first sector) stays an error.

mod common;

use std::sync::{Arc, OnceLock};

use vhdkit::report::{CheckReport, FindingKind, Severity};
use vhdkit::unstable::evhd::header::{COPY_OFFSETS, HEADER_SIZE};
use vhdkit::{EvhdBuilder, MemStorage, OpenOptions, PrivateKey, VirtualDisk};

const BS: u64 = 4096;
const SECTOR: usize = 512;

fn key() -> &'static Arc<PrivateKey> {
    static K: OnceLock<Arc<PrivateKey>> = OnceLock::new();
    K.get_or_init(|| Arc::new(PrivateKey::generate(2048).expect("keygen")))
}

fn seq_of(image: &[u8], copy: usize) -> u64 {
    let o = COPY_OFFSETS[copy] as usize + 16;
    u64::from_le_bytes(image[o..o + 8].try_into().unwrap())
}

/// The image before and after one commit, and the copy that commit wrote.
fn before_and_after() -> (Vec<u8>, Vec<u8>, usize) {
    let mem = Arc::new(MemStorage::new());
    let mut d = EvhdBuilder::new(24 * BS)
        .block_size(BS)
        .recipient(key().public().clone(), "k")
        .signer(key().clone())
        .create(Box::new(mem.clone()), None)
        .unwrap();
    d.write_at(&vec![0x42u8; 2 * BS as usize], 0).unwrap();
    d.flush().unwrap();
    let before = mem.to_vec();
    d.write_at(&vec![0x17u8; BS as usize], 5 * BS).unwrap();
    d.flush().unwrap();
    drop(d);
    let after = mem.to_vec();
    let target = usize::from(seq_of(&after, 1) > seq_of(&after, 0));
    assert_eq!(seq_of(&after, target), seq_of(&before, 1 - target) + 1);
    (before, after, target)
}

fn check(image: &[u8], with_key: bool) -> CheckReport {
    let mut report = CheckReport::default();
    let keys = if with_key {
        vec![key().clone()]
    } else {
        vec![]
    };
    vhdkit::unstable::evhd::check::check(
        Box::new(MemStorage::from_vec(image.to_vec())),
        &keys,
        &mut report,
    )
    .expect("check runs");
    report
}

fn errors(r: &CheckReport) -> Vec<String> {
    r.findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| format!("{}: {}", f.structure, f.message))
        .collect()
}

/// The copy the commit was writing holds its first `k` sectors, the rest
/// still the old bytes: what a crash in that write leaves.
fn torn(before: &[u8], after: &[u8], target: usize, k: usize) -> Vec<u8> {
    let mut img = after.to_vec();
    let o = COPY_OFFSETS[target] as usize;
    img[o + k * SECTOR..o + HEADER_SIZE].copy_from_slice(&before[o + k * SECTOR..o + HEADER_SIZE]);
    img
}

#[test]
fn a_copy_torn_by_the_journaled_commit_is_information() {
    let (before, after, target) = before_and_after();
    for k in [1, 2, 64, HEADER_SIZE / SECTOR - 1] {
        let img = torn(&before, &after, target, k);
        let r = check(&img, true);
        assert!(errors(&r).is_empty(), "k {k}: {:?}", r.findings);
        let info = r
            .findings
            .iter()
            .find(|f| f.structure.starts_with("EVHD header copy"))
            .unwrap_or_else(|| panic!("k {k}: no finding for the torn copy: {:?}", r.findings));
        assert_eq!(info.severity, Severity::Info);
        assert_eq!(info.kind, FindingKind::PendingLog);
        assert!(
            info.message.contains("interrupted") && info.message.contains("journal holds"),
            "{}",
            info.message
        );
        assert_eq!(
            info.offset.map(|o| o / HEADER_SIZE as u64),
            Some(target as u64)
        );
        // Without a key the same state is not damage either.
        assert!(errors(&check(&img, false)).is_empty(), "k {k} keyless");
        // A writable open installs the commit: check is then clean.
        let mem = Arc::new(MemStorage::from_vec(img));
        let opts = OpenOptions::new().writable(true).key(key().clone());
        drop(vhdkit::EvhdDisk::open(Box::new(mem.clone()), None, &opts).unwrap());
        let r = check(&mem.to_vec(), true);
        assert!(
            !r.findings
                .iter()
                .any(|f| f.structure.starts_with("EVHD header copy")),
            "k {k}: {:?}",
            r.findings
        );
    }
}

#[test]
fn a_damaged_copy_the_journal_does_not_explain_stays_an_error() {
    let (before, after, target) = before_and_after();
    let o = COPY_OFFSETS[target] as usize;
    // The commit's write completed, then one byte changed (the CRC notices):
    // in the first sector, in the middle, in the MAC.
    for at in [200, 3 * SECTOR + 9, HEADER_SIZE - 5] {
        let mut img = after.clone();
        img[o + at] ^= 0x01;
        for with_key in [true, false] {
            let e = errors(&check(&img, with_key));
            assert!(
                e.iter().any(|e| e.starts_with("EVHD header copy")),
                "byte {at}, key {with_key}: {e:?}"
            );
        }
    }
    // A torn copy whose first sector is not the commit's.
    let mut img = torn(&before, &after, target, 3);
    img[o + 100] ^= 0x01;
    assert!(!errors(&check(&img, true)).is_empty());
    // A torn copy while the journal record is gone: nothing explains it.
    let mut img = torn(&before, &after, target, 3);
    let j = vhdkit::unstable::evhd::JOURNAL_OFFSET as usize;
    img[j] ^= 0x01;
    assert!(!errors(&check(&img, true)).is_empty());
}
