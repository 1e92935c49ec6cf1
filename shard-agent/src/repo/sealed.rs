//! Encryption at rest: a layer over any repository that seals every object
//! it stores with XChaCha20-Poly1305 and opens (authenticates, then
//! decrypts) every object it reads.
//!
//! An object as stored:
//!
//! ```text
//! "SHCTSEAL" | version 1 | cipher 1 (XChaCha20-Poly1305) | key id (8) | nonce (24) | ciphertext | tag (16)
//! ```
//!
//! The header and the object's key are the associated data, so a changed
//! byte anywhere, or an object moved or copied to another key (another
//! backup's manifest put in this one's place), fails authentication before
//! a byte of it is used. The key id names the key (a hash of it, never the
//! key): a repository records which key sealed each object and nothing
//! else about it. Nonces are random (192 bits: no practical chance of a
//! repeat under one key).
//!
//! The same layer without a key ([`SealedRepository::plain`]) refuses to
//! hand out sealed objects as if they were plain, so reading an encrypted
//! repository without its key is a clear error, not garbage.

use std::borrow::Cow;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use topology::{Encryption, RepositoryKey};

use super::{RepoError, Repository, UnknownKey};

const MAGIC: &[u8; 8] = b"SHCTSEAL";
const VERSION: u8 = 1;
const CIPHER_XCHACHA20_POLY1305: u8 = 1;
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = MAGIC.len() + 2 + KEY_ID_LEN + NONCE_LEN;
/// The name of the cipher, for messages and `show`.
pub const CIPHER_NAME: &str = "xchacha20-poly1305";

/// What names a key in sealed objects: the first bytes of a hash of it.
pub fn key_id(key: &RepositoryKey) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::new()
        .chain_update(b"shardcut repository key id v1\0")
        .chain_update(key.expose())
        .finalize();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

/// A new random key (for `shardcut keygen`).
pub fn generate_key() -> RepositoryKey {
    let key = chacha20poly1305::Key::generate();
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&key);
    RepositoryKey::from_bytes(bytes)
}

/// A key id as written in objects and messages.
pub fn key_id_text(key: &RepositoryKey) -> String {
    hex(&key_id(key))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key ready for use.
struct Sealer {
    id: [u8; KEY_ID_LEN],
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    fn new(key: &RepositoryKey) -> Self {
        Sealer {
            id: key_id(key),
            cipher: XChaCha20Poly1305::new(&(*key.expose()).into()),
        }
    }
}

pub struct SealedRepository {
    inner: Arc<dyn Repository>,
    /// The key new objects are sealed with, then older keys that still
    /// open objects; empty for a repository without encryption.
    keys: Vec<Sealer>,
}

impl std::fmt::Debug for SealedRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRepository")
            .field("inner", &self.inner)
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl SealedRepository {
    /// Seals with `encryption.key`; opens objects of it and of its old keys.
    pub fn new(inner: Arc<dyn Repository>, encryption: &Encryption) -> Self {
        let keys = std::iter::once(&encryption.key)
            .chain(&encryption.old_keys)
            .map(Sealer::new)
            .collect();
        SealedRepository { inner, keys }
    }

    /// No key: objects are stored as they are, and a sealed object read is
    /// refused with [`RepoError::KeyRequired`].
    pub fn plain(inner: Arc<dyn Repository>) -> Self {
        SealedRepository {
            inner,
            keys: Vec::new(),
        }
    }

    /// The ids of the keys this layer knows, the sealing key first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| hex(&k.id)).collect()
    }

    /// `data` as stored under `key`: sealed, or as it is without a key.
    fn seal<'d>(&self, key: &str, data: &'d [u8]) -> Result<Cow<'d, [u8]>, RepoError> {
        let Some(sealer) = self.keys.first() else {
            return Ok(Cow::Borrowed(data));
        };
        let nonce = XNonce::generate();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.push(CIPHER_XCHACHA20_POLY1305);
        header.extend_from_slice(&sealer.id);
        header.extend_from_slice(&nonce);
        let aad = associated(&header, key);
        let sealed = sealer
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: data,
                    aad: &aad,
                },
            )
            .map_err(|_| RepoError::Sealing {
                location: self.inner.location(),
                key: key.to_string(),
            })?;
        header.extend_from_slice(&sealed);
        Ok(Cow::Owned(header))
    }

    fn open(&self, key: &str, stored: Vec<u8>) -> Result<Vec<u8>, RepoError> {
        let location = || self.inner.location();
        let is_sealed = stored.starts_with(MAGIC);
        if self.keys.is_empty() {
            if is_sealed {
                return Err(RepoError::KeyRequired {
                    location: location(),
                    key: key.to_string(),
                    key_id: stored
                        .get(MAGIC.len() + 2..MAGIC.len() + 2 + KEY_ID_LEN)
                        .map(hex)
                        .unwrap_or_default()
                        .into(),
                });
            }
            return Ok(stored);
        }
        if !is_sealed {
            return Err(RepoError::NotSealed {
                location: location(),
                key: key.to_string(),
            });
        }
        let tampered = || RepoError::Tampered {
            location: location(),
            key: key.to_string(),
        };
        if stored.len() < HEADER_LEN + 16
            || stored[MAGIC.len()] != VERSION
            || stored[MAGIC.len() + 1] != CIPHER_XCHACHA20_POLY1305
        {
            return Err(tampered());
        }
        let (header, body) = stored.split_at(HEADER_LEN);
        let id = &header[MAGIC.len() + 2..MAGIC.len() + 2 + KEY_ID_LEN];
        let Some(sealer) = self.keys.iter().find(|k| k.id == id) else {
            return Err(RepoError::UnknownKey(Box::new(UnknownKey {
                location: location(),
                key: key.to_string(),
                key_id: hex(id),
                known: self.key_ids().join(", "),
            })));
        };
        let nonce = XNonce::try_from(&header[HEADER_LEN - NONCE_LEN..]).map_err(|_| tampered())?;
        let aad = associated(header, key);
        sealer
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| tampered())
    }
}

/// The associated data of an object: its header, then its key.
fn associated(header: &[u8], key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + key.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(key.as_bytes());
    aad
}

impl Repository for SealedRepository {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn reference(&self) -> String {
        match self.keys.first() {
            Some(k) => super::reference::with_key(&self.inner.reference(), &hex(&k.id)),
            None => self.inner.reference(),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        self.inner.put(key, &self.seal(key, data)?)
    }

    /// Without a key the file goes to the inner repository as it is (in
    /// pieces where it can). With one, the file is sealed as one object,
    /// in memory: files stored this way are capture segments, which are
    /// bounded in size (and read whole by the replay in any case).
    fn put_file(&self, key: &str, file: &mut std::fs::File) -> Result<(), RepoError> {
        if self.keys.is_empty() {
            return self.inner.put_file(key, file);
        }
        let data = super::read_whole(&self.location(), key, file)?;
        self.put(key, &data)
    }

    /// The sealed bytes are what the inner store verifies: they were made
    /// here from `data`, and opening them authenticates them.
    fn put_verified(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        self.inner.put_verified(key, &self.seal(key, data)?)
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        self.inner.put_if_absent(key, &self.seal(key, data)?)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, RepoError> {
        let stored = self.inner.get(key)?;
        self.open(key, stored)
    }

    /// `max` is the plaintext's recorded size; the sealed object is larger
    /// by its header and tag.
    fn get_at_most(&self, key: &str, max: u64) -> Result<Vec<u8>, RepoError> {
        let overhead = if self.keys.is_empty() {
            0
        } else {
            (HEADER_LEN + 16) as u64
        };
        // Sizes in the error are the plaintext's, as recorded.
        let stored = match self.inner.get_at_most(key, max.saturating_add(overhead)) {
            Err(RepoError::TooLarge {
                location,
                key,
                size,
                ..
            }) => {
                return Err(RepoError::TooLarge {
                    location,
                    key,
                    size: size.saturating_sub(overhead),
                    max,
                })
            }
            other => other?,
        };
        self.open(key, stored)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
        self.inner.list(prefix)
    }

    fn list_folder(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
        self.inner.list_folder(prefix)
    }

    fn put_unsynced(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        self.inner.put_unsynced(key, &self.seal(key, data)?)
    }

    fn sync_objects(&self, keys: &[&str]) -> Result<(), RepoError> {
        self.inner.sync_objects(keys)
    }

    fn delete(&self, key: &str) -> Result<(), RepoError> {
        self.inner.delete(key)
    }

    fn delete_folder(&self, prefix: &str) -> Result<(), RepoError> {
        self.inner.delete_folder(prefix)
    }

    fn sync_names(&self, keys: &[&str]) -> Result<(), RepoError> {
        self.inner.sync_names(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MemoryRepository;

    fn key(byte: u8) -> RepositoryKey {
        RepositoryKey::from_bytes([byte; 32])
    }

    fn sealed(
        inner: &Arc<MemoryRepository>,
        key: RepositoryKey,
        old: Vec<RepositoryKey>,
    ) -> SealedRepository {
        SealedRepository::new(inner.clone(), &Encryption { key, old_keys: old })
    }

    #[test]
    fn behaves_as_a_repository() {
        let inner = Arc::new(MemoryRepository::default());
        crate::repo::contract::check(&sealed(&inner, key(1), vec![]));
        crate::repo::contract::check(&SealedRepository::plain(Arc::new(
            MemoryRepository::default(),
        )));
    }

    #[test]
    fn stores_no_plaintext_and_reads_it_back() {
        let inner = Arc::new(MemoryRepository::default());
        let repo = sealed(&inner, key(1), vec![]);
        let marker = b"marker-7f3a-in-a-row";
        repo.put("backups/a/chunk", marker).unwrap();
        let stored = inner.get("backups/a/chunk").unwrap();
        assert!(!stored.windows(marker.len()).any(|w| w == marker));
        assert!(stored.starts_with(MAGIC));
        assert_eq!(repo.get("backups/a/chunk").unwrap(), marker);
        // Two seals of the same bytes differ (random nonces).
        repo.put("backups/a/again", marker).unwrap();
        assert_ne!(inner.get("backups/a/again").unwrap(), stored);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let inner = Arc::new(MemoryRepository::default());
        let repo = sealed(&inner, key(1), vec![]);
        repo.put("m", b"{\"manifest\": 1}").unwrap();
        let stored = inner.get("m").unwrap();
        for i in 0..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 0x01;
            inner.put("m", &bad).unwrap();
            let err = repo.get("m").unwrap_err();
            assert!(
                matches!(
                    err,
                    RepoError::Tampered { .. }
                        | RepoError::NotSealed { .. }
                        | RepoError::UnknownKey { .. }
                ),
                "byte {i}: {err}"
            );
        }
        // Cut short, too.
        inner.put("m", &stored[..stored.len() - 1]).unwrap();
        assert!(matches!(repo.get("m"), Err(RepoError::Tampered { .. })));
    }

    #[test]
    fn an_object_moved_to_another_key_is_refused() {
        let inner = Arc::new(MemoryRepository::default());
        let repo = sealed(&inner, key(1), vec![]);
        repo.put("backups/a/manifest.json", b"a").unwrap();
        repo.put("backups/b/manifest.json", b"b").unwrap();
        let a = inner.get("backups/a/manifest.json").unwrap();
        inner.put("backups/b/manifest.json", &a).unwrap();
        let err = repo.get("backups/b/manifest.json").unwrap_err();
        assert!(matches!(err, RepoError::Tampered { .. }), "{err}");
        assert!(err.to_string().contains("backups/b/manifest.json"), "{err}");
    }

    #[test]
    fn plain_objects_are_refused_in_a_sealed_repository() {
        let inner = Arc::new(MemoryRepository::default());
        inner.put("m", b"{}").unwrap();
        let err = sealed(&inner, key(1), vec![]).get("m").unwrap_err();
        assert!(matches!(err, RepoError::NotSealed { .. }), "{err}");
        assert!(!err.is_key_problem());
    }

    #[test]
    fn wrong_and_missing_keys_are_named() {
        let inner = Arc::new(MemoryRepository::default());
        sealed(&inner, key(1), vec![]).put("m", b"x").unwrap();
        let id = hex(&key_id(&key(1)));
        let err = sealed(&inner, key(2), vec![]).get("m").unwrap_err();
        assert!(err.is_key_problem(), "{err}");
        assert!(err.to_string().contains(&id), "{err}");
        assert!(err.to_string().contains(&hex(&key_id(&key(2)))), "{err}");
        let err = SealedRepository::plain(inner.clone()).get("m").unwrap_err();
        assert!(matches!(err, RepoError::KeyRequired { .. }), "{err}");
        assert!(err.is_key_problem());
        assert!(err.to_string().contains(&id), "{err}");
        // No key text in any message.
        assert!(!err.to_string().contains(&key(1).to_text()));
    }

    #[test]
    fn old_keys_open_what_they_sealed() {
        let inner = Arc::new(MemoryRepository::default());
        sealed(&inner, key(1), vec![])
            .put("old", b"before")
            .unwrap();
        let rotated = sealed(&inner, key(2), vec![key(1)]);
        rotated.put("new", b"after").unwrap();
        assert_eq!(rotated.get("old").unwrap(), b"before");
        assert_eq!(rotated.get("new").unwrap(), b"after");
        // New objects carry the new key's id.
        let stored = inner.get("new").unwrap();
        assert_eq!(&stored[10..18], &key_id(&key(2)));
    }

    #[test]
    fn key_ids_are_stable() {
        // The id is part of the format: objects name their key by it.
        assert_eq!(hex(&key_id(&key(0))).len(), 16);
        assert_eq!(key_id(&key(7)), key_id(&key(7)));
        assert_ne!(key_id(&key(7)), key_id(&key(8)));
    }
}
