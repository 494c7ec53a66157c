//! Golden tests of the on-disk byte layout: the exact bytes each EVHD
//! structure encodes to (recorded from the encoder before the structures
//! were declared with binrw), and images written by an earlier build
//! (`tests/data/evhd/`, made with `vhdkit convert` and `vhdkit write`)
//! that must still open, read the same content and re-encode to the very
//! bytes they hold. The format must not change by a single byte.

use std::sync::Arc;

use rsa::BigUint;
use sha2_10::{Digest, Sha256};
use zeroize::Zeroizing;

use super::cipher::{CipherId, MasterKey};
use super::header::{
    COPY_OFFSETS, CRC_OFFSET, EpochKey, HEADER_SIZE, Header, Origin, SIGNATURE_OFFSET,
};
use super::journal;
use super::keys::{KeyFile, PrivateKey, PublicKey};
use super::recipient::Stanza;
use super::table::{self, ENTRY_SIZE, Entry, PAGE_SIZE};
use crate::fixed::FixedStruct;
use crate::io::MemStorage;
use crate::report::{DiskType, Format};

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An odd modulus of exactly `bits` bits (not an RSA key: enough for the
/// stanza layout).
fn modulus(bits: usize, fill: u8) -> BigUint {
    let mut b = vec![fill; bits.div_ceil(8)];
    b[0] = 0x80 | fill;
    *b.last_mut().unwrap() |= 1;
    BigUint::from_bytes_be(&b)
}

fn stanza(bits: usize, fill: u8, label: &str) -> Stanza {
    let key = PublicKey::from_parts(modulus(bits, fill), BigUint::from(65537u32)).unwrap();
    Stanza {
        wrapped: (0..key.modulus_len()).map(|i| (i * 13 + 5) as u8).collect(),
        key,
        label: label.to_string(),
    }
}

fn entry(i: u64) -> Entry {
    Entry {
        slot: 0x0102_0304_0506_0708 ^ i,
        generation: 9 + i,
        nonce: std::array::from_fn(|k| (k as u8).wrapping_mul(3).wrapping_add(i as u8)),
        tag: std::array::from_fn(|k| 0xf0 ^ k as u8 ^ i as u8),
        epoch: 0x1234 + i as u16,
        flags: 0,
    }
}

fn master_key(cid: &[u8; 16]) -> MasterKey {
    MasterKey::new(Zeroizing::new([9u8; 32]), cid)
}

fn header() -> Header {
    let cid = *b"golden-container";
    Header {
        sequence: 0x1122_3344_5566_7788,
        container_id: cid,
        virtual_size: 10 << 20,
        logical_sector_size: 512,
        physical_sector_size: 4096,
        block_shift: 16,
        cipher: CipherId::Aes256GcmSiv,
        flags: super::header::FLAG_REKEYING,
        table_offset: 0x0022_0000,
        table_pages: 2,
        data_offset: 0x0030_0000,
        slot_count: 3,
        epoch: 7,
        table_root: std::array::from_fn(|k| k as u8),
        epoch_writes: 12345,
        journal_offset: 0x0002_0000,
        journal_len: 0x0020_0000,
        origin: Origin {
            format: Some(Format::Vhdx),
            disk_type: Some(DiskType::Differencing),
            block_size: 32 << 20,
            logical_sector_size: 4096,
            physical_sector_size: 4096,
            disk_id: Some(uuid::Uuid::from_bytes(*b"origin-disk-id!!")),
        },
        epoch_keys: vec![
            EpochKey {
                epoch: 6,
                nonce: [0x61; 12],
                wrapped: std::array::from_fn(|k| 0x40 + k as u8),
            },
            EpochKey {
                epoch: 7,
                nonce: [0x71; 12],
                wrapped: std::array::from_fn(|k| 0x80 + k as u8),
            },
        ],
        recipients: vec![stanza(2048, 0x33, "alpha"), stanza(3072, 0x55, "béta")],
        signer: None,
    }
}

#[test]
fn entry_bytes() {
    let b = entry(1).to_bytes();
    assert_eq!(
        hex(&b),
        "09070605040302010a000000000000000104070a0d101316191c1f22f1f0f3f2f5f4f7f6f9f8fbfafdfcfffe35120000"
    );
    assert_eq!(Entry::parse(&b, 0).unwrap(), entry(1));
}

#[test]
fn table_page_bytes() {
    let key = [7u8; 32];
    let cid = [3u8; 16];
    let entries: Vec<Entry> = (0..3).map(entry).collect();
    let (page, mac) = table::encode_page(&key, &cid, 5, &entries);
    assert_eq!(page.len(), PAGE_SIZE);
    assert_eq!(sha(&page), GOLDEN_PAGE);
    assert_eq!(hex(&mac), GOLDEN_PAGE_MAC);
    assert_eq!(table::verify_page(&key, &cid, 5, &page), Ok(()));
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(&Entry::parse(&page[i * ENTRY_SIZE..], 0).unwrap(), e);
    }
    assert_eq!(hex(&table::root(&[mac, [1; 32]])), GOLDEN_ROOT);
}

#[test]
fn journal_record_bytes() {
    let cid = *b"journal-contaner";
    let header = vec![0xabu8; HEADER_SIZE];
    let p1 = vec![0x11u8; PAGE_SIZE];
    let p7 = vec![0x22u8; PAGE_SIZE];
    let rec = journal::encode(&cid, 42, &header, &[(1, &p1), (7, &p7)]);
    assert_eq!(rec.len() as u64, journal::record_len(2));
    assert_eq!(sha(&rec), GOLDEN_JOURNAL);
    let back = journal::decode(0x20000, 1 << 20, &cid, 8, |buf, o| {
        let o = o as usize;
        buf.copy_from_slice(&rec[o..o + buf.len()]);
        Ok(())
    })
    .unwrap()
    .unwrap();
    assert_eq!(back.sequence, 42);
    assert_eq!(back.header, header);
    assert_eq!(back.pages, vec![(1, p1), (7, p7)]);
}

#[test]
fn stanza_bytes() {
    let s = stanza(2048, 0x33, "alpha");
    let mut b = Vec::new();
    s.encode(&mut b);
    assert_eq!(b.len(), s.encoded_len());
    assert_eq!(sha(&b), GOLDEN_STANZA);
    assert_eq!(Stanza::decode(&b, 0).unwrap(), (s, b.len()));
}

#[test]
fn unsigned_header_bytes() {
    let h = header();
    let mk = master_key(&h.container_id);
    let b = h.encode(&mk).unwrap();
    assert_eq!(b.len(), HEADER_SIZE);
    assert_eq!(sha(&b), GOLDEN_HEADER);
    let back = Header::decode(&b, 0, 0x0030_0000 + 3 * (1 << 16)).unwrap();
    assert_eq!(back, h);
    assert!(super::header::verify_mac(&b, &mk));
}

fn test_key() -> Arc<PrivateKey> {
    let k = KeyFile::parse(include_str!("../../fuzz/test-key.xml")).unwrap();
    Arc::new(k.into_private().unwrap())
}

/// A signed copy with its random parts (the PSS signature, the CRC over
/// it) zeroed.
fn without_signature(b: &[u8], sig_len: usize) -> Vec<u8> {
    let mut b = b.to_vec();
    b[CRC_OFFSET..CRC_OFFSET + 4].fill(0);
    b[SIGNATURE_OFFSET..SIGNATURE_OFFSET + sig_len].fill(0);
    b
}

#[test]
fn signed_header_bytes() {
    let key = test_key();
    let mut h = header();
    h.recipients
        .push(Stanza::wrap(key.public(), "signer", &[5u8; 32]).unwrap());
    // The wrapping is randomised (OAEP): fix it for the golden bytes.
    let last = h.recipients.len() - 1;
    h.recipients[last].wrapped = vec![0x77; key.public().modulus_len()];
    let mk = master_key(&h.container_id);
    let (b, rec) = h.encode_signed(&mk, &key).unwrap();
    assert_eq!(rec.fingerprint, key.fingerprint());
    assert_eq!(
        sha(&without_signature(&b, rec.signature.len())),
        GOLDEN_SIGNED
    );
    let back = Header::decode(&b, HEADER_SIZE as u64, 0x0030_0000 + 3 * (1 << 16)).unwrap();
    h.signer = Some(rec);
    assert_eq!(back, h);
    assert!(super::header::verify_mac(&b, &mk));
}

/// The file a sparse form (`fuzz/src/lib.rs`) describes.
fn unsparse(data: &[u8]) -> Vec<u8> {
    let mut rest = data.strip_prefix(b"vhdkSPRS".as_slice()).unwrap();
    let mut file = Vec::new();
    loop {
        let off = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let len = u16::from_le_bytes(rest[4..6].try_into().unwrap()) as usize;
        file.resize(file.len().max(off + len), 0);
        file[off..off + len].copy_from_slice(&rest[6..6 + len]);
        rest = &rest[6 + len..];
        if len == 0 {
            return file;
        }
    }
}

/// The content `tests/data/evhd/*.evhd.sparse` were converted from, with
/// the write the signed one got afterwards.
fn content(signed: bool) -> Vec<u8> {
    let mut d = vec![0u8; 64 << 10];
    for blk in 0..16usize {
        if blk % 3 != 0 {
            for j in 0..4096 {
                d[blk * 4096 + j] = ((blk * 7 + j) % 251) as u8;
            }
        }
    }
    if signed {
        d[8192..8192 + 6000].fill(0x5a);
    }
    d
}

/// An image written by an earlier build opens with the same content, and
/// every structure in it decodes and re-encodes to the bytes it holds.
fn old_image(data: &[u8], signed: bool) {
    use crate::disk::VirtualDisk;
    let file = unsparse(data);
    let key = test_key();
    let opts = crate::OpenOptions::new().key(key.clone());
    let d =
        super::EvhdDisk::open(Box::new(MemStorage::from_vec(file.clone())), None, &opts).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    d.read_at(&mut buf, 0).unwrap();
    assert!(buf == content(signed), "content differs");
    assert_eq!(d.signature().is_trusted(), signed);
    drop(d);

    let len = file.len() as u64;
    for at in COPY_OFFSETS {
        let b = &file[at as usize..at as usize + HEADER_SIZE];
        let h = Header::decode(b, at, len).unwrap();
        assert_eq!(h.signer.is_some(), signed);
        let (mk, _, _) = super::open::unlock(&h, b, at, std::slice::from_ref(&key)).unwrap();
        match &h.signer {
            None => assert!(h.encode(&mk).unwrap() == b, "copy at {at:#x} re-encodes"),
            Some(rec) => {
                let (again, _) = h.encode_signed(&mk, &key).unwrap();
                let n = rec.signature.len();
                assert!(without_signature(&again, n) == without_signature(b, n));
            }
        }
        // The table pages as this copy's MACs describe them.
        let t = h.table_offset as usize;
        for p in 0..h.table_pages as usize {
            let page = &file[t + p * PAGE_SIZE..t + (p + 1) * PAGE_SIZE];
            let entries = table::Page::parse(page, 0).unwrap().entries;
            assert!(table::Page::parse(page, 0).unwrap().to_bytes() == page);
            let (again, _) = table::encode_page(&mk.table_mac, &h.container_id, p as u64, &entries);
            assert!(again == page, "table page {p} re-encodes");
        }
    }
    let h = Header::decode(&file[..HEADER_SIZE], 0, len).unwrap();
    let j = h.journal_offset as usize;
    let rec = journal::decode(
        h.journal_offset,
        h.journal_len,
        &h.container_id,
        h.table_pages,
        |buf, o| {
            let o = j + o as usize;
            buf.copy_from_slice(&file[o..o + buf.len()]);
            Ok(())
        },
    )
    .unwrap()
    .expect("a journal record");
    let pages: Vec<(u64, &[u8])> = rec.pages.iter().map(|(p, b)| (*p, &b[..])).collect();
    let again = journal::encode(&h.container_id, rec.sequence, &rec.header, &pages);
    assert!(
        again == file[j..j + again.len()],
        "the journal record re-encodes"
    );
}

#[test]
fn unsigned_image_of_an_earlier_build() {
    old_image(
        include_bytes!("../../tests/data/evhd/unsigned.evhd.sparse"),
        false,
    );
}

#[test]
fn signed_image_of_an_earlier_build() {
    old_image(
        include_bytes!("../../tests/data/evhd/signed.evhd.sparse"),
        true,
    );
}

const GOLDEN_PAGE: &str = "70281ad2421f1061c5fc67b38fcdf1b4609ce684a096b839513161ca1c0a5d55";
const GOLDEN_PAGE_MAC: &str = "333314fef3ec2cffc48f6a3b22a71ac06896cb8370084fb5abfdac08c4835b52";
const GOLDEN_ROOT: &str = "669ba76ea65ece5f0c84e33c1e7d3d0e787f70eff79b2eae2caee8b7c3b5efad";
const GOLDEN_JOURNAL: &str = "57eb456d64f104e55c8636206c69dae653801557d53d7e0b00c79ba8b5f6a78b";
const GOLDEN_STANZA: &str = "d53b345420e46da7e2c996d2acba49cc2e1cd48c85f9e86c0c8f227109db23a7";
const GOLDEN_HEADER: &str = "f240e3b10cfb55cfcc92aea9db89ec20ae419d9ab1faad2f44910d0fcc8880c1";
const GOLDEN_SIGNED: &str = "23d0b1cc1098c52910ac5ec71a4238a39c0b8eadc7c11f558e22f40d38fee764";

/// Every structure declared with binrw is as long as its size says.
#[test]
fn declared_sizes_match_the_layout() {
    use crate::fixed::assert_layout;
    let h = header();
    assert_layout(&h.to_raw_for_test());
    assert_layout(&entry(0));
    assert_layout(&table::Page::new(&[entry(0)]));
    assert_layout(&h.epoch_keys[0]);
    let rec = journal::encode(&[1; 16], 1, &[0; HEADER_SIZE], &[]);
    assert_layout(&journal::RecordHeader::parse(&rec, 0).unwrap());
    let mut s = Vec::new();
    stanza(2048, 0x33, "a").encode(&mut s);
    assert_layout(&super::recipient::StanzaHead::parse(&s, 0).unwrap());
}

/// A wrong magic or version names the structure, the byte offset and
/// what was expected, with the error kind of each.
#[test]
fn magic_and_version_errors() {
    use crate::error::ErrorKind;
    let h = header();
    let mk = master_key(&h.container_id);
    let good = h.encode(&mk).unwrap();
    let mut b = good.clone();
    b[3] ^= 0x20;
    let e = Header::decode(&b, 0x10000, u64::MAX).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert_eq!(e.offset(), Some(0x10000));
    assert_eq!(e.structure(), Some(super::header::STRUCTURE));
    assert!(e.message().contains("expected \"EVHDCRPT\""), "{e}");
    let mut b = good.clone();
    b[8] = 3;
    let e = Header::decode(&b, 0x10000, u64::MAX).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(e.offset(), Some(0x10008));
    assert!(e.message().contains("format version 3"), "{e}");
    let mut b = good.clone();
    b[CRC_OFFSET] ^= 1;
    let e = Header::decode(&b, 0, u64::MAX).unwrap_err();
    assert_eq!(e.offset(), Some(CRC_OFFSET as u64));
    let mut s = Vec::new();
    stanza(2048, 0x33, "a").encode(&mut s);
    s[0] = 2;
    let e = Stanza::decode(&s, 0x400).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(e.offset(), Some(0x400));
    assert!(e.message().contains("stanza type 2"), "{e}");
}
