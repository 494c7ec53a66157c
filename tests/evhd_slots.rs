//! Slot numbers in an EVHD block table are checked before any arithmetic
//! with them (issue 18): a table entry naming a slot past the end of the
//! file gives a clear error naming the entry from `map`, `read` and
//! `check`, never a wrapped file offset or a panic, both when the table
//! page is authentic (built with the key: the fuzz harness's re-sealing
//! recomputes page MACs, table root, header MAC and CRC) and when its MAC
//! fails.

mod common;

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhdkit::EvhdBuilder;
use vhdkit::MemStorage;
use vhdkit::report::{CheckReport, Severity, WarningKind};
use vhdkit::unstable::chain::Chain;
use vhdkit::unstable::evhd::header::{COPY_OFFSETS, HEADER_SIZE, Header};
use vhdkit::unstable::evhd::table::{ENTRY_SIZE, PAGE_SIZE};
use vhdkit::{OpenOptions, VirtualDisk};

const BLOCK: u64 = 64 << 10;

/// A 1 MiB EVHD for the test key with blocks 0..4 written.
fn image() -> Vec<u8> {
    let key = harness::test_key();
    let mem = Arc::new(MemStorage::new());
    let mut disk = EvhdBuilder::new(1 << 20)
        .block_size(BLOCK)
        .recipient(key.public().clone(), "test")
        .create(Box::new(mem.clone()), None)
        .expect("create");
    let data: Vec<u8> = (0..4 * BLOCK as usize)
        .map(|i| (i % 251) as u8 + 1)
        .collect();
    disk.write_at(&data, 0).expect("write");
    disk.flush().expect("flush");
    drop(disk);
    mem.to_vec()
}

/// The current header copy of `file`.
fn current(file: &[u8]) -> Header {
    let len = file.len() as u64;
    COPY_OFFSETS
        .iter()
        .filter_map(|&at| {
            Header::decode(&file[at as usize..at as usize + HEADER_SIZE], at, len).ok()
        })
        .max_by_key(|h| h.sequence)
        .expect("a header copy decodes")
}

/// File offset of the table entry of `block` (page 0).
fn entry_offset(h: &Header, block: u64) -> u64 {
    assert!(block < 84);
    h.table_offset + block * ENTRY_SIZE as u64
}

/// `file` with block 1's slot set to `slot`, re-sealed with the key when
/// `seal` (else its table page's MAC fails).
fn with_slot(slot: u64, seal: bool) -> (Vec<u8>, Header) {
    let mut file = image();
    let h = current(&file);
    let at = entry_offset(&h, 1) as usize;
    file[at..at + 8].copy_from_slice(&slot.to_le_bytes());
    if seal {
        harness::evhd_seal::reseal(&mut file, &harness::test_key());
    }
    (file, h)
}

/// Whether `disk`, opened from `file`, warns that block table page 0
/// failed verification.
fn first_page_unreadable(disk: &dyn VirtualDisk, file: &[u8]) -> bool {
    let page_0 = current(file).table_offset;
    disk.info().warnings.iter().any(|w| {
        w.kind == WarningKind::UnreadableTablePage
            && w.structure == Some("EVHD block table")
            && w.offset == Some(page_0)
    })
}

fn open(file: &[u8]) -> vhdkit::Result<Box<dyn VirtualDisk>> {
    vhdkit::unstable::open_storage(
        Box::new(Arc::new(MemStorage::read_only(file.to_vec()))),
        None,
        &OpenOptions::new().key(harness::test_key()),
        &Chain::default(),
    )
}

fn check(file: &[u8]) -> CheckReport {
    let mut report = CheckReport::default();
    vhdkit::unstable::evhd::check::check(
        Box::new(Arc::new(MemStorage::read_only(file.to_vec()))),
        &[harness::test_key()],
        &mut report,
    )
    .expect("check runs");
    report
}

fn key_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/test-key.xml")
}

/// Run the CLI on `file`; it must fail, and its output (stdout, then
/// stderr) is returned.
fn cli_fails(file: &[u8], args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slot.evhd");
    std::fs::write(&path, file).unwrap();
    let key = key_path();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--key", key.to_str().unwrap(), path.to_str().unwrap()]);
    let out = common::vhdkit(&all);
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "vhdkit {all:?} succeeded: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn resealing_an_untouched_image_changes_nothing() {
    // The re-sealing the fuzz target and these tests rely on recomputes
    // exactly what the library wrote.
    let file = image();
    let mut again = file.clone();
    harness::evhd_seal::reseal(&mut again, &harness::test_key());
    assert!(file == again, "reseal changed an untouched image");
    // And a re-sealed change passes the MACs: block 1 moved to block 2's
    // slot with its tag is a well-formed table that authenticates (and
    // then fails as a duplicate slot, by the table's own checks).
    let h = current(&file);
    let (a, b) = (entry_offset(&h, 1) as usize, entry_offset(&h, 2) as usize);
    let mut moved = file.clone();
    moved.copy_within(b..b + 8, a);
    // Unsealed, the page fails its MAC: the disk opens with the page
    // marked bad.
    let disk = open(&moved).expect("a bad page opens");
    assert!(
        first_page_unreadable(disk.as_ref(), &moved),
        "{:?}",
        disk.info().warnings
    );
    drop(disk);
    harness::evhd_seal::reseal(&mut moved, &harness::test_key());
    let err = open(&moved).err().expect("duplicate slot fails");
    assert!(err.message().contains("used twice"), "{err}");
}

#[test]
fn authentic_slot_past_the_file_is_an_error_naming_the_entry() {
    for slot in [1_000_000, u64::MAX / 2, u64::MAX] {
        let (file, h) = with_slot(slot, true);
        let entry = entry_offset(&h, 1);
        // Open (so map and read) refuses the table, naming the entry.
        let err = open(&file).err().expect("open must fail");
        assert_eq!(err.offset(), Some(entry), "{err}");
        assert!(
            err.message().contains("block 1") && err.message().contains(&slot.to_string()),
            "{err}"
        );
        // check: an error finding at the entry.
        let r = check(&file);
        assert!(
            r.findings
                .iter()
                .any(|f| f.severity == Severity::Error && f.offset == Some(entry)),
            "{:#?}",
            r.findings
        );
        // The CLI: map, read and check fail with the entry's offset.
        let hex = format!("{entry:#x}");
        for args in [
            &["map"][..],
            &["read", "--offset", "0", "--length", "512"][..],
        ] {
            let err = cli_fails(&file, args);
            assert!(
                err.contains("block 1") && err.contains(&hex),
                "{args:?}: {err}"
            );
        }
        // check reports the entry as an error finding (exit 2).
        let err = cli_fails(&file, &["check"]);
        assert!(err.contains("block 1") && err.contains(&hex), "{err}");
    }
}

#[test]
fn unverified_slot_past_the_file_is_an_error_not_a_wrapped_offset() {
    // u64::MAX overflowed `data_offset + (slot - 1) * block size` in `map`.
    for slot in [1_000_000, u64::MAX] {
        let (file, h) = with_slot(slot, false);
        let disk = open(&file).expect("a bad page still opens");
        assert!(
            first_page_unreadable(disk.as_ref(), &file),
            "{:?}",
            disk.info().warnings
        );
        let page_at = format!("{:#x}", h.table_offset);
        let err = disk.map(0, disk.virtual_size()).expect_err("map fails");
        assert_eq!(err.offset(), Some(h.table_offset), "{err}");
        assert!(err.message().contains("block 0"), "{err}");
        let err = disk.map(BLOCK, 10).expect_err("map of block 1 fails");
        assert!(err.message().contains("block 1"), "{err}");
        let mut buf = vec![0u8; 512];
        let err = disk.read_at(&mut buf, BLOCK).expect_err("read fails");
        assert!(err.message().contains("block 1"), "{err}");
        // Blocks of other pages map as before: none here beyond page 0.
        let r = check(&file);
        assert!(
            r.findings.iter().any(|f| f.severity == Severity::Error
                && f.offset == Some(h.table_offset)
                && f.structure == "EVHD block table"),
            "{:#?}",
            r.findings
        );
        let err = cli_fails(&file, &["map"]);
        assert!(err.contains("page 0") && err.contains(&page_at), "{err}");
    }
}

/// The table's data area has room for exactly the slots written: slot 4
/// is the last, slot 5 lies past the file.
#[test]
fn the_first_slot_past_the_data_area_is_refused() {
    let h = current(&image());
    assert_eq!(h.slot_count, 4);
    assert_eq!(h.slot_offset(4), Some(h.data_offset + 3 * BLOCK));
    assert_eq!(h.slot_offset(5), None);
    assert_eq!(h.slot_offset(0), None);
    let (file, _) = with_slot(5, true);
    let err = open(&file).err().expect("slot 5 is past the data area");
    assert!(err.message().contains("slot 5"), "{err}");
    let _ = PAGE_SIZE;
}

/// The fuzz target's sealed form reaches the table checks: the committed
/// regression input changes block 0's slot to `u64::MAX` in a sealed seed,
/// and the re-sealed file fails on that entry, not on a MAC.
#[test]
fn sealed_fuzz_input_reaches_the_slot_check() {
    let input = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/open_evhd/sealed-slot-past-the-file"),
    )
    .unwrap();
    let file = harness::evhd_bytes(&input);
    let err = open(&file).err().expect("open must fail");
    assert!(
        err.message().contains("block 0") && err.message().contains(&u64::MAX.to_string()),
        "{err}"
    );
    // Without re-sealing the same change only fails the page MAC.
    let mut plain = harness::SPARSE_MAGIC.to_vec();
    plain.extend_from_slice(&input[harness::SEAL_MAGIC.len()..]);
    let plain = harness::image_bytes(&plain);
    let disk = open(&plain).expect("opens with a bad page");
    assert!(
        first_page_unreadable(disk.as_ref(), &plain),
        "{:?}",
        disk.info().warnings
    );
}

#[test]
fn resealing_re_signs_a_signed_image() {
    // A signed image (the test key signs its commits): a change to a table
    // entry's generation, re-sealed, must still open with a trusted
    // signature required, so mutations reach the code behind the signature
    // check; unsealed, the same change fails the page MAC.
    let key = harness::test_key();
    let mem = Arc::new(MemStorage::new());
    let mut disk = EvhdBuilder::new(1 << 20)
        .block_size(BLOCK)
        .recipient(key.public().clone(), "test")
        .signer(key.clone())
        .create(Box::new(mem.clone()), None)
        .expect("create");
    disk.write_at(&vec![7u8; BLOCK as usize], 0).expect("write");
    disk.flush().expect("flush");
    drop(disk);
    let file = mem.to_vec();
    let h = current(&file);
    assert!(h.signer.is_some(), "the image is signed");
    let mut changed = file.clone();
    let gen_at = entry_offset(&h, 3) as usize + 8;
    changed[gen_at] ^= 1;
    let strict = |bytes: &[u8]| {
        let opts = OpenOptions::new().key(key.clone()).require_signed(true);
        vhdkit::unstable::open_storage(
            Box::new(MemStorage::from_vec(bytes.to_vec())),
            None,
            &opts,
            &Chain::default(),
        )
    };
    strict(&file).expect("the original opens");
    let disk = strict(&changed).expect("a bad page still opens");
    assert!(
        !disk.info().warnings.is_empty(),
        "the page MAC fails unsealed"
    );
    drop(disk);
    harness::evhd_seal::reseal(&mut changed, &key);
    let old_sig = h.signer.as_ref().map(|r| r.signature.clone());
    let new_sig = current(&changed).signer.map(|r| r.signature);
    assert!(new_sig.is_some() && new_sig != old_sig, "a new signature");
    let disk = strict(&changed).expect("re-sealed and re-signed, it opens with --require-signed");
    assert!(
        disk.info().warnings.is_empty(),
        "{:?}",
        disk.info().warnings
    );
}
