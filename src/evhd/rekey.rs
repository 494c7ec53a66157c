//! The key lifecycle of an unlocked container: recipients added and
//! removed, `sign`, and `rekey` (a new master key, every block
//! re-encrypted).

use zeroize::Zeroizing;

use super::EvhdDisk;
use super::cipher::{self, DataKey, MasterKey, random_secret};
use super::header::{self, EpochKey};
use super::keys::{Fingerprint, PublicKey};
use super::recipient::Stanza;
use crate::error::{Error, ErrorKind, Result};

impl EvhdDisk {
    /// Add a recipient (needs the container unlocked and writable); commits.
    pub fn add_recipient(&mut self, key: &PublicKey, label: &str) -> Result<()> {
        self.ensure_writable()?;
        if self
            .image
            .header
            .recipients
            .iter()
            .any(|s| s.key.fingerprint() == key.fingerprint())
        {
            return Err(Error::invalid_argument(format!(
                "key {} is already a recipient",
                key.fingerprint().short()
            )));
        }
        let st = &mut self.state;
        let stanza = Stanza::wrap(key, label, st.mk.bytes())?;
        self.image.header.recipients.push(stanza);
        st.header_dirty = true;
        self.commit().inspect_err(|_| {
            self.image.header.recipients.pop();
        })
    }

    /// Remove the recipient whose fingerprint starts with `prefix` (hex, at
    /// least 8 digits); commits. The last recipient cannot be removed.
    pub fn remove_recipient(&mut self, prefix: &str) -> Result<Stanza> {
        self.ensure_writable()?;
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < 8 {
            return Err(Error::invalid_argument(
                "give at least 8 hex digits of the fingerprint",
            ));
        }
        let matches: Vec<usize> = self
            .image
            .header
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, s)| s.key.fingerprint().hex().starts_with(&prefix))
            .map(|(i, _)| i)
            .collect();
        let i = match matches[..] {
            [i] => i,
            [] => {
                return Err(Error::invalid_argument(format!(
                    "no recipient has a fingerprint starting with {prefix}"
                )));
            }
            _ => {
                return Err(Error::invalid_argument(format!(
                    "fingerprint prefix {prefix} is ambiguous"
                )));
            }
        };
        if self.image.header.recipients.len() == 1 {
            return Err(Error::invalid_argument("cannot remove the last recipient"));
        }
        let removed = self.image.header.recipients.remove(i);
        self.state.header_dirty = true;
        if let Err(e) = self.commit() {
            self.image.header.recipients.insert(i, removed);
            return Err(e);
        }
        Ok(removed)
    }

    /// Sign the current state: commit pending changes, or with none a new
    /// header (sequence + 1) that changes nothing else, signed by the key
    /// that opened the image. Returns the signer's fingerprint.
    pub fn sign(&mut self) -> Result<Fingerprint> {
        self.ensure_writable()?;
        let st = &mut self.state;
        if st.signers.is_empty() {
            return Err(Error::new(
                ErrorKind::KeyRequired,
                "no private key to sign with: open the image with the key of a recipient",
            ));
        }
        st.header_dirty = true;
        self.commit()?;
        self.image
            .header
            .signer
            .as_ref()
            .map(|r| r.fingerprint)
            .ok_or_else(|| Error::invalid_argument("the commit was not signed"))
    }

    /// Replace the master key and re-encrypt every block under a fresh data
    /// key, committing every `REKEY_BATCH` blocks. Resumes an interrupted
    /// rekey. `progress` gets (blocks done, blocks to do).
    pub fn rekey(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        self.ensure_writable()?;
        if !&self.state.bad_pages.is_empty() {
            return Err(Error::new(
                ErrorKind::NeedsRepair,
                "the block table has damaged pages; rekey would lose their blocks",
            ));
        }
        self.commit()?;
        if !self.rekey_in_progress() {
            let cid = self.image.header.container_id;
            let new_mk = MasterKey::generate(&cid);
            let st = &mut self.state;
            let epoch = self
                .image
                .header
                .epoch_keys
                .iter()
                .map(|k| k.epoch)
                .max()
                .unwrap_or(0)
                .wrapping_add(1);
            st.data_keys.push(DataKey::new(
                self.image.header.cipher,
                epoch,
                random_secret(),
            ));
            if st.data_keys.len() > header::MAX_EPOCH_KEYS {
                st.data_keys.pop();
                return Err(Error::new(
                    ErrorKind::NeedsRepair,
                    "too many live key epochs to start a rekey",
                ));
            }
            let mut h = self.image.header.clone();
            h.epoch_keys = st
                .data_keys
                .iter()
                .map(|k| {
                    let (nonce, wrapped) =
                        cipher::wrap_epoch_key(&new_mk, &cid, k.epoch(), k.secret());
                    EpochKey {
                        epoch: k.epoch(),
                        nonce,
                        wrapped,
                    }
                })
                .collect();
            h.recipients = h
                .recipients
                .iter()
                .map(|s| Stanza::wrap(&s.key, &s.label, new_mk.bytes()))
                .collect::<Result<_>>()?;
            h.flags |= header::FLAG_REKEYING;
            h.epoch = epoch;
            h.epoch_writes = 0;
            self.image.header = h;
            st.mk = new_mk;
            st.header_dirty = true;
            st.dirty = (0..self.image.header.table_pages).collect();
            self.commit()?;
        }
        let todo: Vec<u64> = {
            let st = &self.state;
            let cur = self.image.header.epoch;
            (0..st.entries.len() as u64)
                .filter(|&b| {
                    let e = &st.entries[b as usize];
                    e.slot != 0 && e.epoch != cur
                })
                .collect()
        };
        let total = todo.len() as u64;
        let mut done = 0;
        progress(0, total);
        for batch in todo.chunks(self.rekey_batch) {
            let plain: Vec<(u64, Zeroizing<Vec<u8>>)> = batch
                .iter()
                .map(|&b| self.read_block(b).map(|p| (b, p)))
                .collect::<Result<_>>()?;
            let refs: Vec<(u64, &[u8])> = plain.iter().map(|(b, p)| (*b, &p[..])).collect();
            self.write_blocks(&refs)?;
            self.commit()?;
            done += batch.len() as u64;
            progress(done, total);
        }
        self.image.header.flags &= !header::FLAG_REKEYING;
        self.state.header_dirty = true;
        self.prune_epoch_keys();
        self.commit()
    }
}
