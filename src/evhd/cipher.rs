//! The symmetric layer: master key, derived subkeys, per-epoch data keys and
//! the block cipher.
//!
//! Key hierarchy (all HKDF-SHA256 with salt = container id):
//!
//! ```text
//! MK (32 random bytes, RSA-OAEP-wrapped per recipient)
//!  ├─ K_hdr  = HKDF(MK, "evhd/v1/header-mac")   HMAC-SHA256 key of the header
//!  ├─ K_tbl  = HKDF(MK, "evhd/v1/table-mac")    HMAC-SHA256 key of table pages
//!  └─ K_wrap = HKDF(MK, "evhd/v1/epoch-wrap")   AES-256-GCM key wrapping epoch keys
//! K_data(e): 32 random bytes per key epoch, stored wrapped under K_wrap
//! ```
//!
//! Data keys are random rather than derived from MK so that `rekey` can
//! replace MK while blocks of the old epochs are still being re-encrypted
//! (both generations of keys are reachable from the new MK), and so that a
//! party who kept the old MK learns nothing about blocks written after a
//! completed rekey.

use aes_gcm_siv::Aes256GcmSiv;
use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2_10::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, ErrorKind, Result};

/// Bytes of a master key, data key and subkey: AES-256 and HMAC-SHA256 keys.
pub const KEY_LEN: usize = 32;
/// Bytes of an AES-GCM / AES-GCM-SIV nonce (96 bits).
pub const NONCE_LEN: usize = 12;
/// Bytes of an authentication tag.
pub const TAG_LEN: usize = 16;
/// HKDF info of the header MAC key.
pub const INFO_HEADER_MAC: &[u8] = b"evhd/v1/header-mac";
/// HKDF info of the table page MAC key.
pub const INFO_TABLE_MAC: &[u8] = b"evhd/v1/table-mac";
/// HKDF info of the key that wraps the epoch keys.
pub const INFO_EPOCH_WRAP: &[u8] = b"evhd/v1/epoch-wrap";
/// Domain prefix of a data block's associated data.
pub const BLOCK_AAD_DOMAIN: &[u8] = b"evhd/v1/blk";
/// Domain prefix of an epoch key's associated data.
pub const EPOCH_AAD_DOMAIN: &[u8] = b"evhd/v1/ek";

/// Which AEAD encrypts the data blocks (header byte 57).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CipherId {
    /// AES-256-GCM (id 1): the fastest with AES-NI and carry-less multiply.
    #[default]
    Aes256Gcm,
    /// AES-256-GCM-SIV (id 2, RFC 8452): nonce-misuse resistant.
    Aes256GcmSiv,
}

impl CipherId {
    /// The on-disk id.
    pub fn id(self) -> u8 {
        match self {
            CipherId::Aes256Gcm => 1,
            CipherId::Aes256GcmSiv => 2,
        }
    }

    /// The cipher of on-disk id `id`.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(CipherId::Aes256Gcm),
            2 => Some(CipherId::Aes256GcmSiv),
            _ => None,
        }
    }

    /// Name as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CipherId::Aes256Gcm => "aes-256-gcm",
            CipherId::Aes256GcmSiv => "aes-256-gcm-siv",
        }
    }

    /// Parse a command-line name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "aes-256-gcm" => Ok(CipherId::Aes256Gcm),
            "aes-256-gcm-siv" => Ok(CipherId::Aes256GcmSiv),
            _ => Err(Error::invalid_argument(format!(
                "unknown cipher {s:?} (expected aes-256-gcm or aes-256-gcm-siv)"
            ))),
        }
    }
}

/// Fill `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}

/// A 32-byte secret that is wiped when dropped.
pub type Secret = Zeroizing<[u8; KEY_LEN]>;

/// A fresh random secret.
pub fn random_secret() -> Secret {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    random_bytes(&mut k[..]);
    k
}

/// HMAC-SHA256 of the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Comparison of two MACs in time independent of their content (`subtle`'s
/// `ConstantTimeEq`; only the lengths, which are public, may end it early).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
}

/// The per-container master key and the subkeys derived from it.
pub struct MasterKey {
    mk: Secret,
    /// HMAC key of the header copies.
    pub(crate) header_mac: Secret,
    /// HMAC key of the block table pages.
    pub(crate) table_mac: Secret,
    /// AES-256-GCM key that wraps the epoch data keys.
    pub(crate) epoch_wrap: Secret,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Derive the subkeys of `mk` for the container `container_id`.
    pub fn new(mk: Secret, container_id: &[u8; 16]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(container_id), &mk[..]);
        let derive = |info: &[u8]| {
            let mut k = Zeroizing::new([0u8; KEY_LEN]);
            hk.expand(info, &mut k[..])
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            k
        };
        MasterKey {
            header_mac: derive(INFO_HEADER_MAC),
            table_mac: derive(INFO_TABLE_MAC),
            epoch_wrap: derive(INFO_EPOCH_WRAP),
            mk,
        }
    }

    /// A new random master key.
    pub fn generate(container_id: &[u8; 16]) -> Self {
        Self::new(random_secret(), container_id)
    }

    /// From the bytes an RSA recipient unwrapped.
    pub fn from_unwrapped(bytes: &[u8], container_id: &[u8; 16]) -> Result<Self> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::new(
                ErrorKind::Authentication,
                format!(
                    "unwrapped master key has {} bytes, expected {KEY_LEN}",
                    bytes.len()
                ),
            )
        })?;
        Ok(Self::new(Zeroizing::new(arr), container_id))
    }

    /// The raw master key, for wrapping to recipients.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.mk
    }

    /// The HMAC key of the block table pages (tools that reseal a table
    /// they changed, such as the fuzz targets).
    pub fn table_mac(&self) -> &[u8; KEY_LEN] {
        &self.table_mac
    }
}

/// Associated data of epoch key `epoch`'s wrapping:
/// `"evhd/v1/ek" || container id || u16le epoch`.
fn epoch_aad(container_id: &[u8; 16], epoch: u16) -> Vec<u8> {
    let mut aad = EPOCH_AAD_DOMAIN.to_vec();
    aad.extend_from_slice(container_id);
    aad.extend_from_slice(&epoch.to_le_bytes());
    aad
}

/// Wrap the data key of `epoch` under `K_wrap` (AES-256-GCM, random nonce):
/// returns the nonce and the 32-byte ciphertext followed by the 16-byte tag.
pub fn wrap_epoch_key(
    mk: &MasterKey,
    container_id: &[u8; 16],
    epoch: u16,
    key: &Secret,
) -> ([u8; NONCE_LEN], [u8; KEY_LEN + TAG_LEN]) {
    let aead = gcm_key(&mk.epoch_wrap);
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce);
    let mut out = [0u8; KEY_LEN + TAG_LEN];
    out[..KEY_LEN].copy_from_slice(&key[..]);
    let tag = gcm_seal(
        &aead,
        &nonce,
        &epoch_aad(container_id, epoch),
        &mut out[..KEY_LEN],
    );
    out[KEY_LEN..].copy_from_slice(&tag);
    (nonce, out)
}

/// Undo [`wrap_epoch_key`]; `None` when the tag does not verify.
pub fn unwrap_epoch_key(
    mk: &MasterKey,
    container_id: &[u8; 16],
    epoch: u16,
    nonce: &[u8; NONCE_LEN],
    wrapped: &[u8; KEY_LEN + TAG_LEN],
) -> Option<Secret> {
    let aead = gcm_key(&mk.epoch_wrap);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&wrapped[..KEY_LEN]);
    let tag: [u8; TAG_LEN] = wrapped[KEY_LEN..].try_into().expect("16-byte tag");
    gcm_open(
        &aead,
        nonce,
        &epoch_aad(container_id, epoch),
        &mut key[..],
        &tag,
    )
    .then_some(key)
}

/// Associated data of one data block write:
/// `"evhd/v1/blk" || container id || u64le block index || u64le generation`.
/// It binds the ciphertext to its container, its place on the virtual disk
/// and its version, so moved, swapped or replayed blocks fail to decrypt.
pub fn block_aad(container_id: &[u8; 16], block: u64, generation: u64) -> [u8; 43] {
    let mut aad = [0u8; 43];
    aad[..11].copy_from_slice(BLOCK_AAD_DOMAIN);
    aad[11..27].copy_from_slice(container_id);
    aad[27..35].copy_from_slice(&block.to_le_bytes());
    aad[35..43].copy_from_slice(&generation.to_le_bytes());
    aad
}

/// The data key of one key epoch, ready to encrypt blocks.
///
/// Nonces are 96 random bits per block write, stored in the block table
/// entry: with AES-256-GCM that is safe for about 2^32 writes per key, so
/// the writer starts a new epoch (a new random key) before that.
pub struct DataKey {
    epoch: u16,
    secret: Secret,
    aead: Aead,
}

enum Aead {
    Gcm(Box<LessSafeKey>),
    Siv(Box<Aes256GcmSiv>),
}

/// An AES-256-GCM key. ring's implementation is used for GCM: with AES-NI
/// and carry-less multiply it runs about six times faster here than the
/// `aes-gcm` crate (7 against 1.2 GB/s per core), which the throughput
/// target needs. The tests check it against `aes-gcm` byte for byte.
/// ring does not wipe its expanded key schedule on drop; the raw key
/// (in [`Secret`]) is wiped.
fn gcm_key(secret: &Secret) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &secret[..]).expect("32-byte AES-256 key"))
}

/// AES-256-GCM encryption in place; returns the tag.
fn gcm_seal(
    key: &LessSafeKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> [u8; TAG_LEN] {
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
        .expect("a block is within AES-GCM's message limit");
    tag.as_ref().try_into().expect("16-byte tag")
}

/// AES-256-GCM decryption in place; `false` when the tag does not verify.
fn gcm_open(
    key: &LessSafeKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    key.open_in_place_separate_tag(
        Nonce::assume_unique_for_key(*nonce),
        Aad::from(aad),
        Tag::from(*tag),
        buf,
        0..,
    )
    .is_ok()
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey(epoch {})", self.epoch)
    }
}

impl DataKey {
    /// The key of `epoch` for `cipher`.
    pub fn new(cipher: CipherId, epoch: u16, secret: Secret) -> Self {
        let aead = match cipher {
            CipherId::Aes256Gcm => Aead::Gcm(Box::new(gcm_key(&secret))),
            CipherId::Aes256GcmSiv => Aead::Siv(Box::new(
                Aes256GcmSiv::new_from_slice(&secret[..]).expect("32-byte key"),
            )),
        };
        DataKey {
            epoch,
            secret,
            aead,
        }
    }

    /// The epoch this key belongs to.
    pub fn epoch(&self) -> u16 {
        self.epoch
    }

    /// The raw key, for wrapping.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Encrypt `buf` in place; returns the tag.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        match &self.aead {
            Aead::Gcm(a) => gcm_seal(a, nonce, aad, buf),
            Aead::Siv(a) => a
                .encrypt_in_place_detached(aes_gcm_siv::Nonce::from_slice(nonce), aad, buf)
                .expect("a block is within AES-GCM-SIV's message limit")
                .into(),
        }
    }

    /// Decrypt `buf` in place; `false` (and `buf` wiped) when the tag fails.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        let ok = match &self.aead {
            Aead::Gcm(a) => gcm_open(a, nonce, aad, buf, tag),
            Aead::Siv(a) => a
                .decrypt_in_place_detached(
                    aes_gcm_siv::Nonce::from_slice(nonce),
                    aad,
                    buf,
                    aes_gcm_siv::Tag::from_slice(tag),
                )
                .is_ok(),
        };
        if !ok {
            buf.zeroize();
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ct_eq` is equality: any differing byte or length makes it false.
    #[test]
    fn ct_eq_is_equality() {
        let a = [7u8; 32];
        assert!(ct_eq(&a, &a));
        for i in [0, 15, 31] {
            let mut b = a;
            b[i] ^= 1;
            assert!(!ct_eq(&a, &b), "byte {i} differs");
        }
        assert!(!ct_eq(&a, &a[..31]));
        assert!(ct_eq(&[], &[]));
    }

    /// ring's AES-256-GCM agrees with the RustCrypto `aes-gcm` crate.
    #[test]
    fn ring_gcm_matches_aes_gcm() {
        let secret = random_secret();
        let key = DataKey::new(CipherId::Aes256Gcm, 0, secret.clone());
        let other = aes_gcm::Aes256Gcm::new_from_slice(&secret[..]).unwrap();
        for len in [0usize, 1, 15, 16, 4096, 65536 + 7] {
            let mut nonce = [0u8; NONCE_LEN];
            random_bytes(&mut nonce);
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut a = plain.clone();
            let tag = key.seal(&nonce, b"aad", &mut a);
            let mut b = plain.clone();
            let tag2 = other
                .encrypt_in_place_detached(aes_gcm::Nonce::from_slice(&nonce), b"aad", &mut b)
                .unwrap();
            assert_eq!(a, b);
            assert_eq!(&tag[..], &tag2[..]);
            assert!(key.open(&nonce, b"aad", &mut a, &tag));
            assert_eq!(a, plain);
            let mut bad = tag;
            bad[0] ^= 1;
            assert!(!key.open(&nonce, b"aad", &mut b, &bad));
        }
    }
}
