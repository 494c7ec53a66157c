//! A fall back to the older EVHD header copy that the journal does not
//! confirm (the newest commit rolled back by damaging the current copy and
//! the journal) is a warning on open and an error in `check`; the states a
//! crash leaves never warn.

mod common;

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use common::torn::{Faulty, Handle};
use common::{code_out_err, patch_file, test_key, vhdkit, vhdkit_ok};
use vhdkit::MemStorage;
use vhdkit::PrivateKey;
use vhdkit::report::{FindingKind, Severity, Warning, WarningKind};
use vhdkit::unstable::evhd::JOURNAL_OFFSET;
use vhdkit::unstable::evhd::header::{COPY_OFFSETS, HEADER_SIZE};
use vhdkit::{CheckReport, OpenOptions, VirtualDisk};
use vhdkit::{EvhdBuilder, EvhdDisk, EvhdImage};

const FELL_BACK: &str = "fell back to the older header copy";

fn keys() -> &'static [Arc<PrivateKey>; 2] {
    static K: OnceLock<[Arc<PrivateKey>; 2]> = OnceLock::new();
    K.get_or_init(|| [0, 1].map(|_| Arc::new(PrivateKey::generate(2048).expect("keygen"))))
}

fn opts(writable: bool) -> OpenOptions {
    OpenOptions::new().writable(writable).key(keys()[0].clone())
}

fn seq_of(image: &[u8], copy: usize) -> u64 {
    let o = COPY_OFFSETS[copy] as usize + 16;
    u64::from_le_bytes(image[o..o + 8].try_into().unwrap())
}

/// The copy (0 = A, 1 = B) with the higher sequence.
fn current(image: &[u8]) -> usize {
    usize::from(seq_of(image, 1) > seq_of(image, 0))
}

fn check_lib(image: &[u8], with_key: bool) -> CheckReport {
    let mut report = CheckReport::default();
    let k = if with_key {
        vec![keys()[0].clone()]
    } else {
        Vec::new()
    };
    vhdkit::unstable::evhd::check::check(
        Box::new(MemStorage::from_vec(image.to_vec())),
        &k,
        &mut report,
    )
    .expect("check runs");
    report
}

fn fallback_findings(r: &CheckReport) -> Vec<String> {
    r.findings
        .iter()
        .filter(|f| f.kind == FindingKind::RolledBack)
        .map(|f| f.message.clone())
        .collect()
}

fn open_warnings(image: &[u8], o: &OpenOptions) -> Vec<Warning> {
    let storage = Box::new(MemStorage::from_vec(image.to_vec()));
    // Without a key the image opens locked.
    let warnings = if o.keys.is_empty() {
        EvhdImage::open(storage, None, o).map(|d| d.warnings().to_vec())
    } else {
        EvhdDisk::open(storage, None, o).map(|d| d.warnings().to_vec())
    };
    warnings.unwrap_or_else(|e| panic!("open: {e}"))
}

const BS: u64 = 4096;
const BLOCKS: u64 = 24;
const SIZE: u64 = BLOCKS * BS;

/// An image whose last commit changed only the header (a recipient was
/// added): falling back to the copy before it opens without any other
/// error, so only the fall-back check can notice.
fn image_with_header_commit() -> Vec<u8> {
    let mem = Arc::new(MemStorage::new());
    let mut d = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .recipient(keys()[0].public().clone(), "first")
        .signer(keys()[0].clone())
        .create(Box::new(mem.clone()), None)
        .unwrap();
    d.write_at(&vec![0x42u8; 3 * BS as usize], BS).unwrap();
    d.flush().unwrap();
    d.add_recipient(keys()[1].public(), "second").unwrap();
    drop(d);
    mem.to_vec()
}

fn rollback(image: &mut [u8]) -> (usize, u64) {
    let cur = current(image);
    let seq = seq_of(image, cur);
    // One byte of the current copy (a reserved zero byte: only the CRC
    // notices) and one of the journal magic.
    image[COPY_OFFSETS[cur] as usize + 200] ^= 0x01;
    image[JOURNAL_OFFSET as usize] ^= 0x01;
    (cur, seq)
}

#[test]
fn rolled_back_header_warns_on_open_and_is_a_check_error() {
    let mut image = image_with_header_commit();
    assert!(open_warnings(&image, &opts(false)).is_empty());
    assert!(fallback_findings(&check_lib(&image, true)).is_empty());
    let (cur, seq) = rollback(&mut image);
    let older = 1 - cur;
    let names = ["A", "B"];

    // Opening still works (the older copy is a complete state) but says so.
    for o in [opts(false), OpenOptions::new()] {
        let w = open_warnings(&image, &o);
        let w = w
            .iter()
            .find(|w| w.kind == WarningKind::CommitMayBeLost)
            .map(|w| w.message.as_str())
            .unwrap_or_else(|| panic!("no fall-back warning among {w:?}"));
        assert!(
            w.contains(&format!(
                "header copy {} at {:#x} (sequence {})",
                names[older],
                COPY_OFFSETS[older],
                seq - 1
            )),
            "{w}"
        );
        assert!(
            w.contains(&format!(
                "header copy {} at {:#x} is unusable",
                names[cur], COPY_OFFSETS[cur]
            )),
            "{w}"
        );
        assert!(
            w.contains(&format!("its sequence field reads {seq}")),
            "{w}"
        );
        assert!(
            w.contains(&format!("journal at {JOURNAL_OFFSET:#x}")),
            "{w}"
        );
        assert!(w.contains("newest commit may have been lost"), "{w}");
    }
    // The rollback is real: the recipient added last is gone.
    let d = EvhdDisk::open(
        Box::new(MemStorage::from_vec(image.clone())),
        None,
        &opts(false),
    )
    .unwrap();
    assert_eq!(d.recipients().len(), 1);

    for with_key in [false, true] {
        let r = check_lib(&image, with_key);
        assert_eq!(r.exit_code(), 2, "{:?}", r.findings);
        let f = fallback_findings(&r);
        assert_eq!(f.len(), 1, "{:?}", r.findings);
        assert!(
            r.findings
                .iter()
                .any(|x| x.severity == Severity::Error && x.kind == FindingKind::RolledBack)
        );
    }
}

/// When the lost commit changed table pages, the older copy no longer
/// matches the table: open fails, and the error says what preceded it.
#[test]
fn rolled_back_data_commit_fails_to_open_and_says_why() {
    let mut image = image_with_header_commit();
    {
        let mem = Arc::new(MemStorage::from_vec(image.clone()));
        let mut d = EvhdDisk::open(Box::new(mem.clone()), None, &opts(true)).unwrap();
        d.write_at(&vec![0x24u8; BS as usize], 9 * BS).unwrap();
        d.flush().unwrap();
        drop(d);
        image = mem.to_vec();
    }
    rollback(&mut image);
    let e = EvhdDisk::open(
        Box::new(MemStorage::from_vec(image.clone())),
        None,
        &opts(false),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("table root mismatch") && e.contains(FELL_BACK),
        "{e}"
    );
    assert_eq!(check_lib(&image, true).exit_code(), 2);
}

/// Replacing the current copy by the older one and damaging the journal
/// leaves two valid copies of one sequence: no healthy image has that.
#[test]
fn two_copies_of_the_older_sequence_are_a_fallback() {
    let mut image = image_with_header_commit();
    let cur = current(&image);
    let older = 1 - cur;
    let o = COPY_OFFSETS[older] as usize;
    let c = COPY_OFFSETS[cur] as usize;
    let copy = image[o..o + HEADER_SIZE].to_vec();
    image[c..c + HEADER_SIZE].copy_from_slice(&copy);
    image[JOURNAL_OFFSET as usize + 3] ^= 0x10;
    let w = open_warnings(&image, &opts(false));
    assert!(
        w.iter().any(|w| w.kind == WarningKind::CommitMayBeLost),
        "{w:?}"
    );
    assert_eq!(check_lib(&image, false).exit_code(), 2);
}

/// Damage to the current copy alone is what a torn header write leaves:
/// the journal's record of that commit is replayed, nothing warns.
#[test]
fn damaged_current_copy_with_its_journal_record_is_quiet() {
    let mut image = image_with_header_commit();
    let cur = current(&image);
    image[COPY_OFFSETS[cur] as usize + 200] ^= 0x01;
    let d = EvhdDisk::open(
        Box::new(MemStorage::from_vec(image.clone())),
        None,
        &opts(false),
    )
    .unwrap();
    assert_eq!(d.recipients().len(), 2, "the record was replayed");
    assert!(
        !d.warnings()
            .iter()
            .any(|w| w.kind == WarningKind::CommitMayBeLost)
    );
    for with_key in [false, true] {
        assert!(fallback_findings(&check_lib(&image, with_key)).is_empty());
    }
}

/// A journal record whose CRCs were made to fit but whose header does not
/// verify cannot confirm the older copy: with the key, that is a fall back.
#[test]
fn forged_journal_record_does_not_confirm() {
    let mut image = image_with_header_commit();
    let cur = current(&image);
    // Damage the newest copy; the journal's record of its sequence is then
    // the commit open would replay. Flip a reserved byte of the header in
    // it (covered by the MAC) and refresh the header and record CRCs.
    image[COPY_OFFSETS[cur] as usize + 200] ^= 0x01;
    let j = JOURNAL_OFFSET as usize;
    let len = u64::from_le_bytes(image[j + 48..j + 56].try_into().unwrap()) as usize;
    let h = j + 4096;
    image[h + 200] ^= 0x01;
    let hcrc = vhdkit::unstable::checksum::crc32c_with_zeroed_field(&image[h..h + HEADER_SIZE], 12);
    image[h + 12..h + 16].copy_from_slice(&hcrc.to_le_bytes());
    let rcrc = vhdkit::unstable::checksum::crc32c_with_zeroed_field(&image[j..j + len], 12);
    image[j + 12..j + 16].copy_from_slice(&rcrc.to_le_bytes());
    let w = open_warnings(&image, &opts(false));
    let hit = w.iter().find(|w| w.kind == WarningKind::CommitMayBeLost);
    let hit = hit.map_or_else(
        || panic!("no fall-back warning among {w:?}"),
        |w| &w.message,
    );
    assert!(hit.contains("does not verify"), "{hit}");
    let r = check_lib(&image, true);
    assert_eq!(r.exit_code(), 2, "{:?}", r.findings);
    assert_eq!(fallback_findings(&r).len(), 1, "{:?}", r.findings);
}

/// The command-line tool: `info` lists the warning, other commands print
/// it on stderr, `check` exits 2 and `check --json` says corrupt.
#[test]
fn cli_reports_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, vec![0x11u8; 1 << 20]).unwrap();
    let img = dir.path().join("d.evhd");
    common::make_evhd(&raw, &img);
    let key = test_key().1.clone();
    let key2 = dir.path().join("second.xml");
    vhdkit_ok([
        OsStr::new("keygen"),
        OsStr::new("--bits"),
        OsStr::new("2048"),
        OsStr::new("-o"),
        key2.as_os_str(),
    ]);
    let k = key.as_os_str();
    vhdkit_ok([
        OsStr::new("recipients"),
        OsStr::new("add"),
        img.as_os_str(),
        OsStr::new("--key"),
        k,
        OsStr::new("--recipient"),
        key2.as_os_str(),
    ]);
    let clean = vhdkit([OsStr::new("check"), OsStr::new("--key"), k, img.as_os_str()]);
    assert_eq!(code_out_err(&clean).0, 0, "{:?}", code_out_err(&clean));

    let mut bytes = std::fs::read(&img).unwrap();
    let (cur, _) = rollback(&mut bytes);
    let at = COPY_OFFSETS[cur] + 200;
    patch_file(&img, at, &[bytes[at as usize]]);
    patch_file(&img, JOURNAL_OFFSET, &[bytes[JOURNAL_OFFSET as usize]]);

    let info = common::info_json(&img);
    let warnings = info["warnings"].to_string();
    assert!(warnings.contains(FELL_BACK), "{warnings}");

    let read = vhdkit([
        OsStr::new("read"),
        img.as_os_str(),
        OsStr::new("--key"),
        k,
        OsStr::new("--offset"),
        OsStr::new("0"),
        OsStr::new("--length"),
        OsStr::new("512"),
    ]);
    let (code, out, err) = code_out_err(&read);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), 512);
    assert!(
        err.contains("vhdkit: warning:") && err.contains(FELL_BACK),
        "{err}"
    );

    for args in [vec!["check"], vec!["check", "--key"]] {
        let mut a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        if args.len() == 2 {
            a.push(k);
        }
        a.push(img.as_os_str());
        let (code, out, _) = code_out_err(&vhdkit(&a));
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(FELL_BACK), "{out}");
        a.insert(1, OsStr::new("--json"));
        let (code, out, _) = code_out_err(&vhdkit(&a));
        assert_eq!(code, 2);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], "corrupt", "{v}");
    }
}

/// Flushes of data, an epoch change and header-only commits: every kind of
/// commit.
fn workload(d: &mut EvhdDisk) -> vhdkit::Result<()> {
    for i in 0..6u64 {
        d.write_at(&vec![i as u8 + 1; BS as usize + 300], (i * 3) % BLOCKS * BS)?;
        if i % 2 == 1 {
            d.flush()?;
        }
    }
    d.add_recipient(keys()[1].public(), "second")?;
    d.write_at(&vec![0u8; BS as usize], 0)?;
    d.flush()?;
    let fp = keys()[1].fingerprint().hex();
    d.remove_recipient(&fp[..16])?;
    d.write_at(&vec![9u8; 2 * BS as usize], 5 * BS)?;
    d.flush()
}

/// No state a crash leaves, nor the installation of its journal record
/// (crashed at every step too), warns or is a fall-back finding.
fn assert_quiet(image: &[u8], what: &str) {
    for o in [opts(false), OpenOptions::new()] {
        let w = open_warnings(image, &o);
        assert!(
            !w.iter().any(|w| w.kind == WarningKind::CommitMayBeLost),
            "{what}: {w:?}"
        );
    }
    for with_key in [false, true] {
        let f = fallback_findings(&check_lib(image, with_key));
        assert!(f.is_empty(), "{what}: {f:?}");
    }
}

#[test]
fn crash_states_do_not_warn() {
    let mem = Arc::new(MemStorage::new());
    let d = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .recipient(keys()[0].public().clone(), "crash")
        .signer(keys()[0].clone())
        .create(Box::new(mem.clone()), None)
        .unwrap();
    drop(d);
    let base = mem.to_vec();
    assert_quiet(&base, "fresh image");
    let count = Faulty::new(base.clone(), u64::MAX);
    {
        let mut d = EvhdDisk::open(Box::new(Handle(count.clone())), None, &opts(true)).unwrap();
        workload(&mut d).unwrap();
    }
    let total = count.ops.load(Ordering::SeqCst);
    assert_quiet(&count.data.lock().unwrap(), "finished workload");
    let mut installs = 0;
    for n in 1..=total {
        let f = Faulty::new(base.clone(), n);
        if let Ok(mut d) = EvhdDisk::open(Box::new(Handle(f.clone())), None, &opts(true)) {
            let _ = workload(&mut d);
        }
        let image = f.data.lock().unwrap().clone();
        assert_quiet(&image, &format!("crash at op {n}"));
        // Installing a pending record (a writable open), crashed at each
        // of its operations.
        let c = Faulty::new(image.clone(), u64::MAX);
        drop(EvhdDisk::open(Box::new(Handle(c.clone())), None, &opts(true)).unwrap());
        let steps = c.ops.load(Ordering::SeqCst);
        for k in 1..=steps {
            installs += 1;
            let f = Faulty::new(image.clone(), k);
            let _ = EvhdDisk::open(Box::new(Handle(f.clone())), None, &opts(true));
            let after = f.data.lock().unwrap().clone();
            assert_quiet(&after, &format!("crash at op {n}, install step {k}"));
        }
    }
    assert!(installs > 0, "some crash points left a record to install");
    eprintln!("{total} crash points and {installs} install crash points quiet");
}
