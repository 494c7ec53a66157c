//! Tampering with an EVHD is detected: single-byte flips sampled over every
//! structure, swapped data slots, an older copy of one block restored
//! together with its table page; and no plaintext window in the file.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use vhdkit::CipherId;
use vhdkit::MemStorage;
use vhdkit::PrivateKey;
use vhdkit::report::{CheckReport, Severity};
use vhdkit::unstable::evhd::header::{COPY_OFFSETS, HEADER_SIZE, Header, RECIPIENTS_OFFSET};
use vhdkit::unstable::evhd::table::PAGE_SIZE;
use vhdkit::{EvhdBuilder, EvhdDisk};
use vhdkit::{OpenOptions, VirtualDisk};

/// Test keys, generated once per test binary (RSA generation is slow).
fn keys() -> &'static [Arc<PrivateKey>; 2] {
    static K: OnceLock<[Arc<PrivateKey>; 2]> = OnceLock::new();
    K.get_or_init(|| [0, 1].map(|_| Arc::new(PrivateKey::generate(2048).expect("keygen"))))
}

const BS: u64 = 4096;
const SIZE: u64 = 48 * BS;

/// Text-like plaintext without repeats: a line number in every line.
fn plaintext(len: usize, salt: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 64);
    let mut i = 0u32;
    while v.len() < len {
        v.extend_from_slice(format!("line {salt}:{i:08} of the secret document, ").as_bytes());
        i += 1;
    }
    v.truncate(len);
    v
}

fn opts() -> OpenOptions {
    OpenOptions::new().key(keys()[0].clone())
}

/// A small image: blocks 0..40 written (8..12 twice, 20..24 zero), flushed.
fn build(cipher: CipherId) -> (Vec<u8>, Vec<u8>) {
    let mem = Arc::new(MemStorage::new());
    let mut d = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .cipher(cipher)
        .recipient(keys()[0].public().clone(), "first")
        .recipient(keys()[1].public().clone(), "second")
        .create(Box::new(mem.clone()), None)
        .expect("create");
    let mut content = vec![0u8; SIZE as usize];
    let p = plaintext(40 * BS as usize, 1);
    d.write_at(&p, 0).unwrap();
    content[..p.len()].copy_from_slice(&p);
    d.flush().unwrap();
    let q = plaintext(4 * BS as usize, 2);
    d.write_at(&q, 8 * BS).unwrap();
    content[8 * BS as usize..12 * BS as usize].copy_from_slice(&q);
    d.write_at(&vec![0u8; 4 * BS as usize], 20 * BS).unwrap();
    content[20 * BS as usize..24 * BS as usize].fill(0);
    d.flush().unwrap();
    drop(d);
    (mem.to_vec(), content)
}

/// Whether opening, reading everything or `check` reports a problem.
fn detected(image: Vec<u8>, content: &[u8]) -> bool {
    let storage = MemStorage::from_vec(image.clone());
    match EvhdDisk::open(Box::new(storage), None, &opts()) {
        Err(_) => return true,
        Ok(d) => {
            let mut buf = vec![0u8; SIZE as usize];
            match d.read_at(&mut buf, 0) {
                Err(_) => return true,
                Ok(()) => assert_eq!(buf, content, "a read returned wrong data without an error"),
            }
        }
    }
    let mut report = CheckReport::default();
    vhdkit::unstable::evhd::check::check(
        Box::new(MemStorage::from_vec(image)),
        &[keys()[0].clone()],
        &mut report,
    )
    .expect("check runs");
    report.worst() == Some(Severity::Error)
}

fn header_of(image: &[u8]) -> Header {
    let [a, b] = COPY_OFFSETS.map(|o| {
        Header::decode(
            &image[o as usize..o as usize + HEADER_SIZE],
            o,
            image.len() as u64,
        )
        .expect("valid copy")
    });
    if b.sequence > a.sequence { b } else { a }
}

#[test]
fn every_sampled_flip_is_detected() {
    for cipher in [CipherId::Aes256Gcm, CipherId::Aes256GcmSiv] {
        let (image, content) = build(cipher);
        assert!(
            !detected(image.clone(), &content),
            "the clean image is fine"
        );
        let h = header_of(&image);
        let stanzas_end =
            RECIPIENTS_OFFSET + h.recipients.iter().map(|s| s.encoded_len()).sum::<usize>();
        let mut offsets: Vec<(String, usize)> = Vec::new();
        for (name, base) in [("header A", 0usize), ("header B", HEADER_SIZE)] {
            // Every byte of the fixed fields, the epoch keys and a stride
            // over the recipient stanzas, the reserved space and the MAC.
            for o in (0..RECIPIENTS_OFFSET).step_by(3) {
                offsets.push((name.into(), base + o));
            }
            for o in (RECIPIENTS_OFFSET..stanzas_end).step_by(17) {
                offsets.push((format!("{name} stanza"), base + o));
            }
            for o in (stanzas_end..HEADER_SIZE).step_by(1021) {
                offsets.push((format!("{name} tail"), base + o));
            }
            for o in HEADER_SIZE - 32..HEADER_SIZE {
                offsets.push((format!("{name} MAC"), base + o));
            }
        }
        let t = h.table_offset as usize;
        for o in (t..t + h.table_pages as usize * PAGE_SIZE).step_by(7) {
            offsets.push(("block table".into(), o));
        }
        // Data: the slots blocks reference now (read from the table).
        let d =
            EvhdDisk::open(Box::new(MemStorage::from_vec(image.clone())), None, &opts()).unwrap();
        let extents = d.map(0, SIZE).unwrap();
        for e in extents.iter().filter(|e| e.file_offset.is_some()) {
            let fo = e.file_offset.unwrap() as usize;
            for o in (fo..fo + e.length as usize).step_by(613) {
                offsets.push(("data".into(), o));
            }
        }
        let mut missed = Vec::new();
        for (what, o) in &offsets {
            let mut img = image.clone();
            img[*o] ^= 0x01 << (o % 8);
            if !detected(img, &content) {
                missed.push(format!("{what} at {o:#x}"));
            }
        }
        assert!(
            missed.is_empty(),
            "{cipher:?}: {} of {} flips undetected: {:?}",
            missed.len(),
            offsets.len(),
            &missed[..missed.len().min(20)]
        );
        eprintln!("{cipher:?}: {} flips, all detected", offsets.len());
    }
}

#[test]
fn swapped_slots_are_detected() {
    let (image, content) = build(CipherId::Aes256Gcm);
    let d = EvhdDisk::open(Box::new(MemStorage::from_vec(image.clone())), None, &opts()).unwrap();
    let ext = d.map(0, 2 * BS).unwrap();
    let (a, b) = if ext.len() == 1 {
        let a = ext[0].file_offset.unwrap() as usize;
        (a, a + BS as usize)
    } else {
        (
            ext[0].file_offset.unwrap() as usize,
            ext[1].file_offset.unwrap() as usize,
        )
    };
    let mut img = image.clone();
    let (x, y) = (
        image[a..a + BS as usize].to_vec(),
        image[b..b + BS as usize].to_vec(),
    );
    img[a..a + BS as usize].copy_from_slice(&y);
    img[b..b + BS as usize].copy_from_slice(&x);
    let err = {
        let d = EvhdDisk::open(Box::new(MemStorage::from_vec(img.clone())), None, &opts()).unwrap();
        let mut buf = vec![0u8; BS as usize];
        d.read_at(&mut buf, 0).unwrap_err()
    };
    assert_eq!(err.kind(), vhdkit::ErrorKind::Authentication);
    assert_eq!(err.offset(), Some(a as u64), "{err}");
    assert!(err.to_string().contains("block 0"), "{err}");
    assert!(detected(img, &content));
}

#[test]
fn older_block_with_its_table_page_is_detected() {
    let mem = Arc::new(MemStorage::new());
    let mut d = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .recipient(keys()[0].public().clone(), "first")
        .create(Box::new(mem.clone()), None)
        .unwrap();
    d.write_at(&plaintext(SIZE as usize, 3), 0).unwrap();
    d.flush().unwrap();
    let old = mem.to_vec();
    let old_map = d.map(5 * BS, BS).unwrap();
    d.write_at(&plaintext(BS as usize, 4), 5 * BS).unwrap();
    d.flush().unwrap();
    let new = mem.to_vec();
    let h = header_of(&new);
    // Restore block 5's old slot bytes and its old table page.
    let mut img = new.clone();
    let page = h.table_offset as usize; // block 5 lives in page 0
    img[page..page + PAGE_SIZE].copy_from_slice(&old[page..page + PAGE_SIZE]);
    let slot = old_map[0].file_offset.unwrap() as usize;
    img[slot..slot + BS as usize].copy_from_slice(&old[slot..slot + BS as usize]);
    let err = EvhdDisk::open(Box::new(MemStorage::from_vec(img)), None, &opts()).unwrap_err();
    assert_eq!(err.kind(), vhdkit::ErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("table root"), "{err}");
}

#[test]
fn no_plaintext_window_in_the_file() {
    let (image, content) = build(CipherId::Aes256Gcm);
    const W: usize = 64;
    let mut windows = HashSet::new();
    // Only windows that lie wholly inside the text (which has no zero
    // bytes): a window of mostly zeros around the zeroed blocks would also
    // "match" wherever the container has zero padding next to one random
    // byte equal to its single text byte - a few percent of runs.
    for w in content.windows(W) {
        if w.iter().all(|&b| b != 0) {
            windows.insert(w);
        }
    }
    let leaks = image.windows(W).filter(|w| windows.contains(w)).count();
    assert_eq!(
        leaks, 0,
        "{leaks} plaintext windows of {W} bytes appear in the container"
    );
}
