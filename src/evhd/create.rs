//! Creating a container: [`EvhdBuilder`] lays out the header copies,
//! journal, block table and data area, wraps a fresh master key for every
//! recipient and commits the first header (signed when a signer is given).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::cipher::{self, CipherId, DataKey, MasterKey, random_bytes, random_secret};
use super::disk::Unlocked;
use super::header::{self, COPY_OFFSETS, EpochKey, Header, Origin};
use super::keys::{PrivateKey, PublicKey};
use super::recipient::{self, Stanza};
use super::signature::Status;
use super::table::{self, Entry, PAGE_SIZE};
use super::{DATA_ALIGN, DEFAULT_BLOCK_SHIFT, EvhdDisk, EvhdImage, JOURNAL_OFFSET, TABLE};
use super::{journal, signed_by_self};
use crate::error::{Error, Result};
use crate::io::{Storage, io_err};

/// What `convert` needs to create an EVHD.
#[derive(Debug, Clone, Default)]
pub struct EvhdOptions {
    /// Recipients and their labels.
    pub recipients: Vec<(PublicKey, String)>,
    /// Data block cipher.
    pub cipher: CipherId,
    /// What the content was converted from.
    pub origin: Origin,
    /// A recipient's private key that signs every commit (`None`: the
    /// image stays unsigned until a key holder writes or signs it).
    pub signer: Option<Arc<PrivateKey>>,
}

/// Creates a container: consuming setters, then [`EvhdBuilder::create`].
#[derive(Debug, Clone)]
pub struct EvhdBuilder {
    size: u64,
    block_size: u64,
    cipher: CipherId,
    recipients: Vec<(PublicKey, String)>,
    origin: Origin,
    logical_sector_size: u32,
    physical_sector_size: u32,
    signer: Option<Arc<PrivateKey>>,
}

impl EvhdBuilder {
    /// A container for a virtual disk of `size` bytes, 64 KiB blocks, AES-256-GCM.
    pub fn new(size: u64) -> Self {
        EvhdBuilder {
            size,
            block_size: 1 << DEFAULT_BLOCK_SHIFT,
            cipher: CipherId::Aes256Gcm,
            recipients: Vec::new(),
            origin: Origin::default(),
            logical_sector_size: 512,
            physical_sector_size: 512,
            signer: None,
        }
    }

    /// Sign every commit (the first header included) with `key`, the
    /// private key of one of the recipients.
    pub fn signer(mut self, key: Arc<PrivateKey>) -> Self {
        self.signer = Some(key);
        self
    }

    /// Block size: a power of two from 4 KiB to 1 MiB.
    pub fn block_size(mut self, bytes: u64) -> Self {
        self.block_size = bytes;
        self
    }

    /// Data block cipher.
    pub fn cipher(mut self, c: CipherId) -> Self {
        self.cipher = c;
        self
    }

    /// Add a recipient.
    pub fn recipient(mut self, key: PublicKey, label: &str) -> Self {
        self.recipients
            .push((key, recipient::truncate_label(label)));
        self
    }

    /// Record what the content was converted from.
    pub fn origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// Logical and physical sector sizes (512 or 4096).
    pub fn sector_sizes(mut self, logical: u32, physical: u32) -> Self {
        self.logical_sector_size = logical;
        self.physical_sector_size = physical;
        self
    }

    /// Lay out and write an empty container into `storage`.
    pub fn create(self, storage: Box<dyn Storage>, path: Option<PathBuf>) -> Result<EvhdDisk> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !header::BLOCK_SHIFTS.contains(&(bs.trailing_zeros() as u8)) {
            return Err(Error::invalid_argument(format!(
                "EVHD block size {bs}; expected a power of two from 4 KiB to 1 MiB"
            )));
        }
        if self.size == 0 {
            return Err(Error::invalid_argument(
                "an EVHD needs a virtual size above zero",
            ));
        }
        for s in [self.logical_sector_size, self.physical_sector_size] {
            if !header::SECTOR_SIZES.contains(&s) {
                return Err(Error::invalid_argument(format!(
                    "sector size {s}; expected 512 or 4096"
                )));
            }
        }
        if self.recipients.is_empty() {
            return Err(
                Error::invalid_argument("an EVHD needs at least one recipient")
                    .with_hint(crate::Hint::Recipient),
            );
        }
        let fps: BTreeSet<[u8; 32]> = self
            .recipients
            .iter()
            .map(|(k, _)| k.fingerprint().0)
            .collect();
        if fps.len() != self.recipients.len() {
            return Err(Error::invalid_argument(
                "the same recipient key is given twice",
            ));
        }
        if let Some(k) = &self.signer
            && !fps.contains(&k.fingerprint().0)
        {
            return Err(Error::invalid_argument(format!(
                "the signing key {} is not one of the recipients; sign with a recipient's private key",
                k.fingerprint().short()
            )));
        }
        let mut container_id = [0u8; 16];
        random_bytes(&mut container_id);
        let mk = MasterKey::generate(&container_id);
        let data_key = DataKey::new(self.cipher, 0, random_secret());
        let (nonce, wrapped) = cipher::wrap_epoch_key(&mk, &container_id, 0, data_key.secret());
        let recipients = self
            .recipients
            .iter()
            .map(|(k, l)| Stanza::wrap(k, l, mk.bytes()))
            .collect::<Result<Vec<_>>>()?;
        let block_shift = bs.trailing_zeros() as u8;
        let blocks = self.size.div_ceil(bs);
        let table_pages = table::pages_for(blocks);
        let journal_len = journal::region_len(table_pages);
        let table_offset = JOURNAL_OFFSET + journal_len;
        let data_offset =
            (table_offset + table_pages * PAGE_SIZE as u64).next_multiple_of(DATA_ALIGN);
        let entries = vec![Entry::default(); blocks as usize];
        let mut table_bytes = Vec::with_capacity((table_pages as usize) * PAGE_SIZE);
        let mut macs = Vec::with_capacity(table_pages as usize);
        for p in 0..table_pages {
            let (page, mac) = table::encode_page(&mk.table_mac, &container_id, p, &[]);
            table_bytes.extend_from_slice(&page);
            macs.push(mac);
        }
        let header = Header {
            sequence: 1,
            container_id,
            virtual_size: self.size,
            logical_sector_size: self.logical_sector_size,
            physical_sector_size: self.physical_sector_size,
            block_shift,
            cipher: self.cipher,
            flags: 0,
            table_offset,
            table_pages,
            data_offset,
            slot_count: 0,
            epoch: 0,
            table_root: table::root(&macs),
            epoch_writes: 0,
            journal_offset: JOURNAL_OFFSET,
            journal_len,
            origin: self.origin,
            epoch_keys: vec![EpochKey {
                epoch: 0,
                nonce,
                wrapped,
            }],
            recipients,
            signer: None,
        };
        // Unsigned images too leave room for a signature, so that a key
        // holder can sign them later.
        let stanzas: usize = header.recipients.iter().map(|s| s.encoded_len()).sum();
        let room = header::SIGNATURE_OFFSET - header::RECIPIENTS_OFFSET;
        if stanzas > room {
            return Err(Error::invalid_argument(format!(
                "the recipient stanzas take {stanzas} bytes; the header has room for {room} beside a signature: use fewer or smaller keys"
            )));
        }
        let mut header = header;
        let (bytes, status) = match &self.signer {
            Some(k) => {
                let (b, rec) = header.encode_signed(&mk, k)?;
                let status = signed_by_self(&header, &rec);
                header.signer = Some(rec);
                (b, status)
            }
            None => (header.encode(&mk)?, Status::Unsigned),
        };
        // Old content must go, but truncating a fresh file is not free: on
        // ext4 it makes the final close start writing back the whole file
        // and wait for the queue (a second per GiB here).
        if !storage.is_empty().map_err(io_err("EVHD file", 0))? {
            storage.set_len(0).map_err(io_err("EVHD file", 0))?;
        }
        storage
            .write_at(&table_bytes, table_offset)
            .map_err(io_err(TABLE, table_offset))?;
        for o in COPY_OFFSETS {
            storage
                .write_at(&bytes, o)
                .map_err(io_err(header::STRUCTURE, o))?;
        }
        // A record of the first commit (ignored on open: its sequence is
        // current), so that the journal magic is there from the start: format
        // detection takes it for a trace of EVHD when both header copies are
        // lost.
        let record = journal::encode(&container_id, header.sequence, &bytes, &[]);
        storage
            .write_at(&record, JOURNAL_OFFSET)
            .map_err(io_err(journal::STRUCTURE, JOURNAL_OFFSET))?;
        storage
            .set_len(data_offset)
            .map_err(io_err("EVHD file", 0))?;
        storage.flush().map_err(io_err("EVHD file", 0))?;
        let image = EvhdImage {
            storage: Arc::from(storage),
            path,
            header,
            current_copy: 0,
            warnings: Vec::new(),
            signature: status,
        };
        let state = Unlocked {
            mk,
            key: None,
            signers: self.signer.into_iter().collect(),
            data_keys: vec![data_key],
            entries,
            macs,
            bad_pages: BTreeMap::new(),
            dirty: BTreeSet::new(),
            header_dirty: false,
            committed: Vec::new(),
            pending_free: Vec::new(),
            free: BTreeSet::new(),
        };
        Ok(EvhdDisk::new(image, state, true))
    }
}
