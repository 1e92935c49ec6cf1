//! The backup repository: a flat key/value store shaped like an object store.
//!
//! Keys are `/`-separated paths (`backups/<id>/chunks/...`). The interface is
//! put/get/list/delete plus a conditional put-if-absent for locks; nothing
//! relies on directories or renames, so an S3-compatible backend can
//! implement the same trait. A `put` is atomic: a reader sees either no
//! object or the whole object, never a prefix.

mod direct;
mod local;
mod memory;
mod null;
pub mod reference;
mod s3;
mod sealed;

use std::io;

/// Mode of every file a directory repository writes: a backup holds every
/// row of every database, readable by its owner only.
pub(crate) const FILE_MODE: u32 = 0o600;

pub use local::LocalRepository;
pub use memory::MemoryRepository;
pub use null::NullRepository;
pub use s3::S3Repository;
pub use sealed::{generate_key, key_id_text, SealedRepository, CIPHER_NAME};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("repository {location}: object {key} not found")]
    NotFound { location: String, key: String },
    #[error("repository {location}: object {key} already exists")]
    AlreadyExists { location: String, key: String },
    #[error("repository {location}: {op} {key}: {source}")]
    Io {
        location: String,
        op: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("repository {location}: invalid key `{key}`")]
    InvalidKey { location: String, key: String },
    /// A path inside a directory repository is a symbolic link, which
    /// shardcut never makes: it is not followed.
    #[error("repository {location}: {path} is a symbolic link, which shardcut never makes; it is not followed (was the repository tampered with?)")]
    Symlink { location: String, path: String },
    /// An object of a directory repository is not a regular file (a FIFO,
    /// a device, a folder), which shardcut never makes: it is not read (a
    /// FIFO would block the reader or feed it without end).
    #[error("repository {location}: object {key} is not a regular file (a FIFO, device or folder), which shardcut never makes; it is not read (was the repository tampered with?)")]
    NotAFile { location: String, key: String },
    /// The object store refused the credentials or the request. `what` is
    /// the operation and the key (`put backups/…`).
    #[error("repository {location}: {what}: access denied (check the repository's access_key and secret_key, and the bucket's permissions): {message}")]
    Denied {
        location: String,
        what: String,
        message: Box<str>,
    },
    /// Any other failure of the object store, after its retries.
    #[error("repository {location}: {what}: {message}")]
    Store {
        location: String,
        what: String,
        message: Box<str>,
    },
    #[error("repository {location}: object {key} is encrypted (key id {key_id}) but the topology gives no key: set repository.encryption.key_file or key_env")]
    KeyRequired {
        location: String,
        key: String,
        key_id: Box<str>,
    },
    #[error(transparent)]
    UnknownKey(Box<UnknownKey>),
    #[error("repository {location}: object {key} is not encrypted but the repository is: refused (was it replaced, or written without the key?)")]
    NotSealed { location: String, key: String },
    #[error("repository {location}: object {key} fails authentication: it was changed, damaged, or moved from another key; nothing from it is used")]
    Tampered { location: String, key: String },
    #[error("repository {location}: cannot encrypt {key}")]
    Sealing { location: String, key: String },
    /// An object larger than what names it says it is: not read.
    #[error("repository {location}: object {key} is {size} bytes, more than the {max} it may take: not read (was it replaced?)")]
    TooLarge {
        location: String,
        key: String,
        size: u64,
        max: u64,
    },
    /// A verified put found other bytes in the store than it wrote.
    #[error("repository {location}: {key} was written but the store holds other bytes ({detail})")]
    Unverified {
        location: String,
        key: String,
        detail: Box<str>,
    },
}

impl RepoError {
    /// A full disk or quota is worth naming plainly: the fix is space, not a retry.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, RepoError::Io { source, .. } if source.raw_os_error() == Some(28) || source.kind() == io::ErrorKind::StorageFull)
    }

    /// A missing or wrong encryption key: the fix is the right key (the
    /// command line's invalid-input exit code), not a repair.
    pub fn is_key_problem(&self) -> bool {
        matches!(
            self,
            RepoError::KeyRequired { .. } | RepoError::UnknownKey { .. }
        )
    }
}

/// An object sealed with a key the topology does not give.
#[derive(Debug, thiserror::Error)]
#[error("repository {location}: object {key} is encrypted with key id {key_id}, which is not a configured key (known: {known}): wrong key? give the right one in repository.encryption (key_file, or old_key_files for older backups)")]
pub struct UnknownKey {
    pub location: String,
    pub key: String,
    pub key_id: String,
    pub known: String,
}

/// Storage for backups. Implementations must be safe to share between
/// threads; agents of many shards write into one repository at once.
pub trait Repository: Send + Sync + std::fmt::Debug {
    /// Where the repository is, for messages (never contains secrets).
    fn location(&self) -> String;
    /// How a remote agent is told to open this repository
    /// ([`reference::Reference`]): a directory's path by default.
    fn reference(&self) -> String {
        self.location()
    }
    /// Stores `data` under `key`, replacing any object there. Atomic.
    fn put(&self, key: &str, data: &[u8]) -> Result<(), RepoError>;
    /// Stores the whole of `file` (from its start) under `key`, as `put`
    /// does. Repositories that can copy it over in pieces do, so that an
    /// object larger than memory can be stored; the default reads it whole.
    fn put_file(&self, key: &str, file: &mut std::fs::File) -> Result<(), RepoError> {
        let data = read_whole(&self.location(), key, file)?;
        self.put(key, &data)
    }
    /// Stores `data` as `put` does, then confirms that the store holds
    /// exactly these bytes (copies to a replica). By default the object is
    /// read back and compared; stores that answer a put with a hash of
    /// what they stored compare that instead.
    fn put_verified(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        self.put(key, data)?;
        read_back_matches(self, key, data)
    }
    /// Stores `data` under `key` as `put` does, except that its bytes need
    /// not be durable yet: [`Repository::sync_objects`] makes them so. A
    /// backup of many small tables syncs its chunks in one pass at the end
    /// of each shard's dump instead of one at a time, which the file system
    /// does for a fraction of the cost (docs/BENCHMARKS.md, "Many tables").
    /// By default, `put`.
    fn put_unsynced(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        self.put(key, data)
    }
    /// Makes the bytes and the names of `keys` durable, objects stored with
    /// `put_unsynced` included. By default, [`Repository::sync_names`]
    /// (every `put` is durable already).
    fn sync_objects(&self, keys: &[&str]) -> Result<(), RepoError> {
        self.sync_names(keys)
    }
    /// Stores `data` under `key` only if nothing is there yet (locks).
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<(), RepoError>;
    fn get(&self, key: &str) -> Result<Vec<u8>, RepoError>;
    /// As `get`, for an object whose size is recorded elsewhere (a chunk in
    /// its manifest, a segment in its description): one larger than `max`
    /// is refused with [`RepoError::TooLarge`] before it is read into
    /// memory. The default reads it first; the directory and S3
    /// repositories look at its size before.
    fn get_at_most(&self, key: &str, max: u64) -> Result<Vec<u8>, RepoError> {
        let data = self.get(key)?;
        check_size(&self.location(), key, data.len() as u64, max)?;
        Ok(data)
    }
    /// Whether an object is stored under `key`, without reading it (any
    /// object is larger than 0 bytes, so a present one is refused as too
    /// large).
    fn exists(&self, key: &str) -> Result<bool, RepoError> {
        match self.get_at_most(key, 0) {
            Ok(_) | Err(RepoError::TooLarge { .. }) => Ok(true),
            Err(RepoError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// Every key that starts with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, RepoError>;
    /// What lies directly in the folder `prefix` (which ends with `/`),
    /// sorted, each name once: objects by their name, folders by their
    /// name and a `/`. Without walking the folders: finding the backups
    /// of a repository that holds thousands of tables' chunks per backup
    /// lists a few hundred names, not every chunk. The default derives it
    /// from [`Repository::list`]; the directory and S3 repositories ask
    /// for one level only.
    fn list_folder(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
        let mut out: Vec<String> = self
            .list(prefix)?
            .iter()
            .filter_map(|k| k.strip_prefix(prefix))
            .map(|rest| match rest.find('/') {
                Some(i) => rest[..=i].to_string(),
                None => rest.to_string(),
            })
            .collect();
        out.dedup();
        Ok(out)
    }
    /// Deletes `key`; deleting a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), RepoError>;
    /// Deletes every object in the folder `prefix` (which ends with `/`)
    /// and below: a backup's folder, once nothing may write there. The
    /// directory repository also removes what a killed process left there
    /// (its `.tmp-*` files) and the emptied directories. By default, each
    /// listed key.
    fn delete_folder(&self, prefix: &str) -> Result<(), RepoError> {
        for key in self.list(prefix)? {
            self.delete(&key)?;
        }
        Ok(())
    }
    /// Makes the names of `keys` durable, as they are now (put or deleted).
    /// A put returns once its object's bytes are durable, but a file system
    /// may still lose a new name, or bring back a deleted one, after a
    /// crash until the directories that hold it are synced. Commit points
    /// call this on what they depend on before they write (a manifest
    /// after its chunks) and on themselves after, so that a command that
    /// reported success stays successful through a power loss.
    fn sync_names(&self, keys: &[&str]) -> Result<(), RepoError>;
}

/// Refuses an object of `size` bytes where at most `max` are expected.
pub(crate) fn check_size(location: &str, key: &str, size: u64, max: u64) -> Result<(), RepoError> {
    if size > max {
        return Err(RepoError::TooLarge {
            location: location.to_string(),
            key: key.to_string(),
            size,
            max,
        });
    }
    Ok(())
}

/// The whole of `file`, from its start: what `put_file` stores as `key`.
pub(crate) fn read_whole(
    location: &str,
    key: &str,
    file: &mut std::fs::File,
) -> Result<Vec<u8>, RepoError> {
    use std::io::{Read, Seek};
    let mut data = Vec::new();
    file.seek(std::io::SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut data))
        .map_err(|source| RepoError::Io {
            location: location.to_string(),
            op: "read the file to store as",
            key: key.to_string(),
            source,
        })?;
    Ok(data)
}

/// Reads `key` back from `repo` and compares it with `data`.
pub(crate) fn read_back_matches(
    repo: &(impl Repository + ?Sized),
    key: &str,
    data: &[u8],
) -> Result<(), RepoError> {
    let back = repo.get_at_most(key, data.len() as u64)?;
    if back == data {
        Ok(())
    } else {
        Err(RepoError::Unverified {
            location: repo.location(),
            key: key.to_string(),
            detail: format!("read back {} bytes, wrote {}", back.len(), data.len()).into(),
        })
    }
}

/// Keys are relative, `/`-separated, without `.` or `..` segments, so no key
/// can escape the repository on a filesystem backend.
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\0'))
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour every backend must have, run against each of them.
    use super::*;

    pub fn check(repo: &dyn Repository) {
        assert!(matches!(repo.get("a/b"), Err(RepoError::NotFound { .. })));
        repo.put("a/b", b"one").unwrap();
        repo.put("a/c/d", b"two").unwrap();
        repo.put("z", b"three").unwrap();
        assert_eq!(repo.get("a/b").unwrap(), b"one");
        // A size recorded elsewhere bounds what is read.
        assert_eq!(repo.get_at_most("a/b", 3).unwrap(), b"one");
        assert!(matches!(
            repo.get_at_most("a/b", 2),
            Err(RepoError::TooLarge {
                size: 3,
                max: 2,
                ..
            })
        ));
        assert!(matches!(
            repo.get_at_most("missing", 9),
            Err(RepoError::NotFound { .. })
        ));
        repo.put("a/b", b"uno").unwrap();
        assert_eq!(repo.get("a/b").unwrap(), b"uno");
        assert_eq!(repo.list("a/").unwrap(), vec!["a/b", "a/c/d"]);
        assert_eq!(repo.list("").unwrap(), vec!["a/b", "a/c/d", "z"]);
        // One level: the object, and the folder once, however deep.
        repo.put("a/c/e/f", b"four").unwrap();
        assert_eq!(repo.list_folder("a/").unwrap(), vec!["b", "c/"]);
        assert_eq!(repo.list_folder("a/c/").unwrap(), vec!["d", "e/"]);
        assert!(repo.list_folder("nothing/").unwrap().is_empty());
        repo.delete("a/c/e/f").unwrap();
        // Stored unsynced, then synced: read back the same either way.
        repo.put_unsynced("u/v", b"five").unwrap();
        repo.put_unsynced("u/w", &[7u8; 70_000]).unwrap();
        repo.sync_objects(&["u/v", "u/w"]).unwrap();
        assert_eq!(repo.get("u/v").unwrap(), b"five");
        assert_eq!(repo.get("u/w").unwrap(), vec![7u8; 70_000]);
        repo.delete("u/v").unwrap();
        repo.delete("u/w").unwrap();
        assert!(matches!(
            repo.put_if_absent("a/b", b"x"),
            Err(RepoError::AlreadyExists { .. })
        ));
        repo.put_if_absent("lock", b"held").unwrap();
        assert_eq!(repo.get("lock").unwrap(), b"held");
        repo.delete("a/b").unwrap();
        repo.delete("a/b").unwrap();
        assert_eq!(repo.list("a/").unwrap(), vec!["a/c/d"]);
        // A folder goes whole, and nothing beside it that shares its
        // name's start.
        for key in ["f/x", "f/y/z", "fx", "f2/a"] {
            repo.put(key, b"six").unwrap();
        }
        repo.delete_folder("f/").unwrap();
        assert!(repo.list("f/").unwrap().is_empty());
        assert_eq!(repo.list("f").unwrap(), vec!["f2/a", "fx"]);
        repo.delete_folder("missing/").unwrap();
        for bad in ["", "/abs", "a/../b", "a//b", "./a"] {
            assert!(
                matches!(repo.put(bad, b""), Err(RepoError::InvalidKey { .. })),
                "{bad}"
            );
        }
    }
}
