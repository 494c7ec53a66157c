//! Re-sealing an EVHD file after its bytes were changed, so that the
//! fuzzer's mutations of the structures behind the checksums and MACs
//! (table entries, header fields, journal records) reach the code behind
//! those checks instead of stopping at them.
//!
//! [`reseal`] works on the file's bytes with the library's own encoding
//! functions and the test key: every header copy gets its CRC fixed and,
//! where it decodes and the test key unwraps its master key, its table
//! pages and table root, its MAC and CRC recomputed; a journal record gets
//! its header, pages and CRC recomputed the same way. What no longer
//! decodes keeps a valid CRC at least, so range checks see the mutation.
//!
//! All header authentication goes through [`seal_header`], which also
//! re-signs a signed (version 2) header copy whose signer is the test key,
//! so mutations of signed images get past the signature check too.

use vhdkit::PrivateKey;
use vhdkit::unstable::evhd::cipher::MasterKey;
use vhdkit::unstable::evhd::header::{self, COPY_OFFSETS, HEADER_SIZE, Header};
use vhdkit::unstable::evhd::table::{self, PAGE_SIZE};
use vhdkit::unstable::evhd::{journal, signature};

/// Where the header copy `at` (a file offset or a journal record's copy)
/// lies in `file`, if the file holds all of it.
fn copy_range(file: &[u8], at: u64) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(at).ok()?;
    let end = start.checked_add(HEADER_SIZE)?;
    (end <= file.len()).then_some(start..end)
}

/// Fix the CRC of a header copy.
pub fn fix_crc(copy: &mut [u8]) {
    let crc = header::compute_crc(copy);
    copy[header::CRC_OFFSET..header::CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Authenticate a header copy under `mk` for the table whose root is
/// `root`: the root, the MAC, a fresh signature by `key` when the copy is
/// a signed (version 2) one whose signer record names `key` with its
/// modulus length, then the CRC over all of it. A signer record naming
/// another key (or a mangled one) keeps its bytes, so the signature checks
/// see the mutation.
pub fn seal_header(copy: &mut [u8], mk: &MasterKey, root: &[u8; 32], key: &PrivateKey) {
    copy[100..132].copy_from_slice(root);
    let mac = header::compute_mac(copy, mk);
    copy[header::MAC_OFFSET..].copy_from_slice(&mac);
    let version = u32::from_le_bytes(copy[8..12].try_into().expect("4 bytes"));
    let rec = &copy[header::SIGNER_OFFSET..header::SIGNER_OFFSET + header::SIGNER_RECORD];
    let fp = key.fingerprint();
    let len = key.public().modulus_len();
    if version == header::VERSION_SIGNED
        && rec[..32] == fp.0
        && usize::from(u16::from_le_bytes([rec[32], rec[33]])) == len
    {
        let id: [u8; 16] = copy[24..40].try_into().expect("16 bytes");
        let seq = u64::from_le_bytes(copy[16..24].try_into().expect("8 bytes"));
        let msg = signature::message(&id, seq, &fp, &mac);
        if let Ok(sig) = key.sign_pss(&msg) {
            copy[header::SIGNATURE_OFFSET..header::SIGNATURE_OFFSET + len].copy_from_slice(&sig);
        }
    }
    fix_crc(copy);
}

/// Decode a header copy (after fixing its CRC) and unwrap its master key
/// with `key`; `None` when either fails.
fn unlock(copy: &[u8], at: u64, file_len: u64, key: &PrivateKey) -> Option<(Header, MasterKey)> {
    let h = Header::decode(copy, at, file_len).ok()?;
    let stanza = h
        .recipients
        .iter()
        .find(|s| s.key.fingerprint() == key.fingerprint())?;
    let raw = key.unwrap_key(&stanza.wrapped).ok()?;
    let mk = MasterKey::from_unwrapped(&raw, &h.container_id).ok()?;
    Some((h, mk))
}

/// Re-MAC page `index` in place; returns its MAC.
pub fn seal_page(page: &mut [u8], mk: &MasterKey, container_id: &[u8; 16], index: u64) -> [u8; 32] {
    let mac = table::page_mac(
        mk.table_mac(),
        container_id,
        index,
        &page[..table::MAC_OFFSET],
    );
    page[table::MAC_OFFSET..table::RESERVED_OFFSET].copy_from_slice(&mac);
    mac
}

/// Re-seal the EVHD in `file` under `key` (see the module text). The
/// current copy (highest sequence among those the key unlocks) is sealed
/// for the table as it now is; the other one is left as it is while its
/// MAC verifies (it commits an older table), else sealed the same way.
/// An image nothing was changed in comes out unchanged.
pub fn reseal(file: &mut [u8], key: &PrivateKey) {
    let len = file.len() as u64;
    let mut copies = Vec::new();
    for at in COPY_OFFSETS {
        let Some(r) = copy_range(file, at) else {
            continue;
        };
        fix_crc(&mut file[r.clone()]);
        if let Some((h, mk)) = unlock(&file[r.clone()], at, len, key) {
            copies.push((r, h, mk));
        }
    }
    let Some(cur) = copies.iter().map(|(_, h, _)| h.sequence).max() else {
        return;
    };
    let mut table_macs: Option<Vec<[u8; 32]>> = None;
    for (r, h, mk) in copies {
        if h.sequence != cur && header::verify_mac(&file[r.clone()], &mk) {
            continue;
        }
        // The layout was checked against the file's length by decode.
        let t0 = h.table_offset as usize;
        let pages = h.table_pages as usize;
        let mut macs = Vec::with_capacity(pages);
        for p in 0..pages {
            let page = &mut file[t0 + p * PAGE_SIZE..t0 + (p + 1) * PAGE_SIZE];
            macs.push(if table_macs.is_some() {
                table::stored_mac(page)
            } else {
                seal_page(page, &mk, &h.container_id, p as u64)
            });
        }
        table_macs = Some(macs.clone());
        seal_header(&mut file[r], &mk, &table::root(&macs), key);
        reseal_journal(file, &h, key, &macs);
    }
}

/// Re-seal a journal record at the journal offset `h` names: its pages,
/// its header copy (for the table with its pages applied) and its CRC.
fn reseal_journal(file: &mut [u8], h: &Header, key: &PrivateKey, table_macs: &[[u8; 32]]) {
    let j0 = h.journal_offset as usize;
    let Some(head) = file.get(j0..j0 + journal::RECORD_HEADER) else {
        return;
    };
    if head[0..8] != journal::MAGIC {
        return;
    }
    let n = u64::from_le_bytes(head[40..48].try_into().expect("8 bytes"));
    if n > h.table_pages || journal::record_len(n) > h.journal_len {
        return;
    }
    let rec_len = journal::record_len(n) as usize;
    let Some(rec) = file.get_mut(j0..j0 + rec_len) else {
        return;
    };
    rec[48..56].copy_from_slice(&(rec_len as u64).to_le_bytes());
    let idx = journal::RECORD_HEADER + HEADER_SIZE;
    let body = idx + (n as usize * 8).next_multiple_of(PAGE_SIZE);
    let copy_at = (j0 + journal::RECORD_HEADER) as u64;
    let copy = &mut rec[journal::RECORD_HEADER..journal::RECORD_HEADER + HEADER_SIZE];
    fix_crc(copy);
    // The record's copy may name other keys; its pages are sealed with its own.
    let Some((_, mk)) = unlock(copy, copy_at, u64::MAX, key) else {
        let crc = vhdkit::unstable::checksum::crc32c_with_zeroed_field(rec, 12);
        rec[12..16].copy_from_slice(&crc.to_le_bytes());
        return;
    };
    let mut macs = table_macs.to_vec();
    for i in 0..n as usize {
        let p = u64::from_le_bytes(rec[idx + 8 * i..idx + 8 * i + 8].try_into().expect("8"));
        if p >= h.table_pages {
            continue;
        }
        let page = &mut rec[body + i * PAGE_SIZE..body + (i + 1) * PAGE_SIZE];
        macs[p as usize] = seal_page(page, &mk, &h.container_id, p);
    }
    let copy = &mut rec[journal::RECORD_HEADER..journal::RECORD_HEADER + HEADER_SIZE];
    seal_header(copy, &mk, &table::root(&macs), key);
    let crc = vhdkit::unstable::checksum::crc32c_with_zeroed_field(rec, 12);
    rec[12..16].copy_from_slice(&crc.to_le_bytes());
}
