//! A repository in a local directory. Each key is a file below the root.
//!
//! `put` writes a temporary file in the same directory, fsyncs it and
//! renames it over the key, so a crash leaves either the old object, the new
//! one, or a stray `.tmp-*` file that `list` ignores; never a torn object.
//! The temporary file is written with direct I/O (`direct.rs`: cheaper for
//! the host, and no chunk pushes the database's pages out of the page
//! cache); where the file system refuses that, through the page cache, for
//! the rest of the repository's life.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{direct, valid_key, RepoError, Repository, FILE_MODE};

#[derive(Debug)]
pub struct LocalRepository {
    root: PathBuf,
    /// Cleared the first time the file system refuses direct I/O.
    direct: AtomicBool,
}

/// Mode of every directory the repository creates.
const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents, owner-only.
fn create_dirs(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Objects smaller than this are written through the page cache: direct
/// I/O pads them to a whole block and cuts the file back, a size change
/// more for the journal, to save a copy of a few kilobytes.
const SMALL_OBJECT: usize = 64 << 10;

/// Distinguishes temporary files of concurrent puts within one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
const TMP_PREFIX: &str = ".tmp-";

impl LocalRepository {
    /// Opens (and creates if needed) the repository at `root`.
    pub fn open(root: &Path) -> Result<Self, RepoError> {
        create_dirs(root).map_err(|source| RepoError::Io {
            location: root.display().to_string(),
            op: "create",
            key: String::new(),
            source,
        })?;
        Ok(LocalRepository {
            root: root.to_path_buf(),
            direct: AtomicBool::new(true),
        })
    }

    /// Whether puts still bypass the page cache (false once refused).
    pub fn writes_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Writes the new file `tmp` directly where possible, else buffered.
    /// Replaces `key` atomically: `write` fills a new temporary file beside
    /// it, which is then renamed over it.
    fn replace(
        &self,
        key: &str,
        write: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<(), RepoError> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root);
        create_dirs(dir).map_err(self.io("put", key))?;
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = write(&tmp).and_then(|()| fs::rename(&tmp, &path));
        if result.is_err() {
            // The temporary file is ours; removing it is best effort, and its
            // failure must not mask the original error.
            drop(fs::remove_file(&tmp));
        }
        result.map_err(self.io("put", key))
    }

    fn write_tmp(&self, tmp: &Path, data: &[u8]) -> io::Result<()> {
        if self.writes_direct() && data.len() >= SMALL_OBJECT {
            match direct::write_new(tmp, data)? {
                direct::Outcome::Written => return Ok(()),
                direct::Outcome::Refused => {
                    self.direct.store(false, Ordering::Relaxed);
                    tracing::info!(
                        "repository {}: the file system refuses direct I/O; writing through the page cache",
                        self.location()
                    );
                    // A refused open may or may not have created the file.
                    if let Err(e) = fs::remove_file(tmp) {
                        if e.kind() != io::ErrorKind::NotFound {
                            return Err(e);
                        }
                    }
                }
            }
        }
        Self::write_new(tmp, data)
    }

    /// The directory of folder `prefix` (a key followed by `/`), checked as
    /// [`Self::path`] checks a key's file.
    fn folder(&self, prefix: &str) -> Result<PathBuf, RepoError> {
        let rel = prefix
            .strip_suffix('/')
            .ok_or_else(|| RepoError::InvalidKey {
                location: self.location(),
                key: prefix.to_string(),
            })?;
        self.path(rel)
    }

    /// The file of `key`. No part of it below the root may be a symbolic
    /// link: the repository is not trusted, and a planted link would make a
    /// read or write land anywhere on the host.
    fn path(&self, key: &str) -> Result<PathBuf, RepoError> {
        if valid_key(key) && !key.split('/').any(|s| s.starts_with(TMP_PREFIX)) {
            let mut path = self.root.clone();
            for part in key.split('/') {
                path.push(part);
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        return Err(RepoError::Symlink {
                            location: self.location(),
                            path: path.display().to_string(),
                        })
                    }
                    Ok(_) => {}
                    // What does not exist yet cannot be a link.
                    Err(_) => break,
                }
            }
            Ok(self.root.join(key))
        } else {
            Err(RepoError::InvalidKey {
                location: self.location(),
                key: key.to_string(),
            })
        }
    }

    /// Opens the object `key` to read it, with its size: a regular file
    /// only, opened without waiting (a FIFO planted there would block the
    /// open until something writes to it) and without following a link put
    /// there since [`Self::path`] looked.
    fn open_object(&self, key: &str) -> Result<(fs::File, u64), RepoError> {
        let path = self.path(key)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    RepoError::NotFound {
                        location: self.location(),
                        key: key.to_string(),
                    }
                } else {
                    self.io("get", key)(e)
                }
            })?;
        let meta = file.metadata().map_err(self.io("get", key))?;
        if !meta.is_file() {
            return Err(RepoError::NotAFile {
                location: self.location(),
                key: key.to_string(),
            });
        }
        Ok((file, meta.len()))
    }

    fn io(&self, op: &'static str, key: &str) -> impl FnOnce(io::Error) -> RepoError {
        let location = self.location();
        let key = key.to_string();
        move |source| RepoError::Io {
            location,
            op,
            key,
            source,
        }
    }

    /// Every directory that holds one of `keys`, and every directory above
    /// it up to the root (a new directory's name is in its parent), once
    /// each, with a key it serves for messages.
    fn directories_of<'k>(
        &self,
        keys: &[&'k str],
    ) -> Result<std::collections::BTreeMap<PathBuf, &'k str>, RepoError> {
        let mut dirs = std::collections::BTreeMap::new();
        for key in keys {
            let path = self.path(key)?;
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| d.starts_with(&self.root)) {
                if dirs.insert(d.to_path_buf(), *key).is_some() {
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(dirs)
    }

    fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
        Self::write_new_unsynced(path, data)?.sync_all()
    }

    /// Creates `path` holding `data`, not synced.
    fn write_new_unsynced(path: &Path, data: &[u8]) -> io::Result<fs::File> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)?;
        f.write_all(data)?;
        Ok(f)
    }

    fn list_into(&self, dir: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
        let Some(entries) = entries_of(dir)? else {
            return Ok(());
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            let key = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            if entry.file_type()?.is_dir() {
                self.list_into(&entry.path(), &key, out)?;
            } else {
                out.push(key);
            }
        }
        Ok(())
    }
}

/// The entries of directory `dir`; none when it does not exist.
fn entries_of(dir: &Path) -> io::Result<Option<fs::ReadDir>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the `.tmp-*` files below `dir` (puts a killed process never
/// finished), then every directory there that is left empty, `dir`
/// included. Anything else (an object put meanwhile, a link) stays, and so
/// do the directories holding it. Links are never followed.
fn remove_emptied(dir: &Path) -> io::Result<()> {
    let Some(entries) = entries_of(dir)? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            remove_emptied(&entry.path())?;
        } else if kind.is_file()
            && entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(TMP_PREFIX.as_bytes())
        {
            match fs::remove_file(entry.path()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e)
            if !matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

impl Repository for LocalRepository {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        self.replace(key, |tmp| self.write_tmp(tmp, data))
    }

    fn put_unsynced(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        if data.len() >= SMALL_OBJECT {
            return self.put(key, data);
        }
        self.replace(key, |tmp| Self::write_new_unsynced(tmp, data).map(drop))
    }

    fn sync_objects(&self, keys: &[&str]) -> Result<(), RepoError> {
        let paths = keys
            .iter()
            .map(|k| self.path(k))
            .collect::<Result<Vec<_>, _>>()?;
        // First every file's write-back is started (as PostgreSQL does
        // before it syncs a data directory): the file system then
        // allocates and writes them together, and the syncs that follow
        // mostly find them done, instead of a journal commit each.
        for path in &paths {
            if let Ok(f) = fs::File::open(path) {
                // A hint: whether it is taken, the sync below checks.
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
            }
        }
        for (path, key) in paths.iter().zip(keys) {
            fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(self.io("sync", key))?;
        }
        self.sync_names(keys)
    }

    fn put_file(&self, key: &str, file: &mut fs::File) -> Result<(), RepoError> {
        use std::io::Seek;
        self.replace(key, |tmp| {
            file.seek(io::SeekFrom::Start(0))?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(tmp)?;
            io::copy(file, &mut f)?;
            f.sync_all()
        })
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            create_dirs(dir).map_err(self.io("put", key))?;
        }
        match Self::write_new(&path, data) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(RepoError::AlreadyExists {
                location: self.location(),
                key: key.to_string(),
            }),
            Err(e) => {
                // A partly written lock would block every later run; remove it.
                drop(fs::remove_file(&path));
                Err(self.io("put", key)(e))
            }
        }
    }

    fn get_at_most(&self, key: &str, max: u64) -> Result<Vec<u8>, RepoError> {
        let (file, size) = self.open_object(key)?;
        super::check_size(&self.location(), key, size, max)?;
        // Read from the file whose size was looked at, and no further than
        // one byte past `max`, should it have grown since.
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        io::Read::take(file, max.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(self.io("get", key))?;
        super::check_size(&self.location(), key, data.len() as u64, max)?;
        Ok(data)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, RepoError> {
        let (mut file, _) = self.open_object(key)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(self.io("get", key))?;
        Ok(data)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
        // Walk only the deepest directory the prefix names.
        let (dir_rel, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let mut out = Vec::new();
        let start = if dir_rel.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_rel)?
        };
        self.list_into(&start, dir_rel, &mut out)
            .map_err(self.io("list", prefix))?;
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        Ok(out)
    }

    fn list_folder(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
        let dir = self.folder(prefix)?;
        let Some(entries) = entries_of(&dir).map_err(self.io("list", prefix))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(self.io("list", prefix))?;
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| !n.starts_with(TMP_PREFIX)) else {
                continue;
            };
            let is_dir = entry.file_type().map_err(self.io("list", prefix))?.is_dir();
            out.push(if is_dir {
                format!("{name}/")
            } else {
                name.to_string()
            });
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), RepoError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("delete", key)(e)),
        }
    }

    fn delete_folder(&self, prefix: &str) -> Result<(), RepoError> {
        let dir = self.folder(prefix)?;
        for key in self.list(prefix)? {
            self.delete(&key)?;
        }
        // The objects are gone: what is left is tidying, which fails
        // nothing.
        if let Err(e) = remove_emptied(&dir) {
            tracing::warn!(
                "repository {}: {prefix} emptied, but not every directory or temporary file in it could be removed: {e}",
                self.location()
            );
        }
        Ok(())
    }

    fn sync_names(&self, keys: &[&str]) -> Result<(), RepoError> {
        for (dir, key) in self.directories_of(keys)? {
            match fs::File::open(&dir).and_then(|d| d.sync_all()) {
                // Nothing there, no name to keep.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other.map_err(self.io("sync", key))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract() {
        let dir = tempfile::tempdir().unwrap();
        let repo = LocalRepository::open(&dir.path().join("repo")).unwrap();
        super::super::contract::check(&repo);
    }

    /// A FIFO planted at a key would block a reader until something writes
    /// to it, then feed it without end; a folder is no object either. Each
    /// is refused at once by name, by `get` and `get_at_most` alike.
    #[test]
    fn planted_fifos_and_folders_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = std::sync::Arc::new(LocalRepository::open(&root).unwrap());
        fs::create_dir_all(root.join("backups/b1")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(root.join("backups/b1/chunk.zst"))
            .status()
            .unwrap();
        assert!(made.success());
        fs::create_dir_all(root.join("backups/b1/folder.zst")).unwrap();
        for key in ["backups/b1/chunk.zst", "backups/b1/folder.zst"] {
            for bounded in [false, true] {
                let (tx, rx) = std::sync::mpsc::channel();
                let r = repo.clone();
                std::thread::spawn(move || {
                    let got = if bounded {
                        r.get_at_most(key, 1 << 20)
                    } else {
                        r.get(key)
                    };
                    drop(tx.send(got));
                });
                let got = rx
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .unwrap_or_else(|_| panic!("{key}: still reading after 5 s"));
                let err = got.unwrap_err();
                assert!(matches!(err, RepoError::NotAFile { .. }), "{key}: {err}");
                assert!(err.to_string().contains(key), "{err}");
            }
        }
    }

    #[test]
    fn planted_symbolic_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), b"not the repository's").unwrap();
        let repo = LocalRepository::open(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("backups")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("file")).unwrap();
        for key in ["backups/secret", "file"] {
            let err = repo.get(key).unwrap_err();
            assert!(matches!(err, RepoError::Symlink { .. }), "{key}: {err}");
        }
        assert!(matches!(
            repo.put("backups/new", b"x").unwrap_err(),
            RepoError::Symlink { .. }
        ));
        assert!(!outside.join("new").exists());
        repo.delete("file").unwrap_err();
        assert!(outside.join("secret").exists());
    }

    #[test]
    fn only_the_owner_can_read_what_is_stored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = LocalRepository::open(&root).unwrap();
        repo.put("backups/a/b/chunk", b"rows").unwrap();
        repo.put_if_absent("locks/c.lock", b"me").unwrap();
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for d in ["", "backups", "backups/a", "backups/a/b", "locks"] {
            assert_eq!(mode(root.join(d)), 0o700, "{d}");
        }
        for f in ["backups/a/b/chunk", "locks/c.lock"] {
            assert_eq!(mode(root.join(f)), 0o600, "{f}");
        }
    }

    #[test]
    fn puts_bypass_the_page_cache_on_this_file_system() {
        // The test directory is on the file system the repositories of the
        // integration tests and benchmarks use; a silent fallback there
        // would make the direct path untested.
        let dir = tempfile::tempdir().unwrap();
        let repo = LocalRepository::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        repo.put("a/x", &data).unwrap();
        assert!(repo.writes_direct());
        assert_eq!(repo.get("a/x").unwrap(), data);
    }

    #[test]
    fn buffered_writes_keep_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let repo = LocalRepository::open(&dir.path().join("repo")).unwrap();
        repo.direct.store(false, Ordering::Relaxed);
        super::super::contract::check(&repo);
    }

    #[test]
    fn names_are_synced_in_every_directory_up_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = LocalRepository::open(&root).unwrap();
        let dirs: Vec<PathBuf> = repo
            .directories_of(&["a/b/c", "a/d", "z", "a/b/e"])
            .unwrap()
            .into_keys()
            .collect();
        assert_eq!(dirs, vec![root.clone(), root.join("a"), root.join("a/b")]);
        repo.put("a/b/c", b"1").unwrap();
        repo.delete("a/b/c").unwrap();
        // Put, deleted, or never there: each name is synced as it stands.
        repo.sync_names(&["a/b/c", "x/y/z"]).unwrap();
        assert!(matches!(
            repo.sync_names(&["a/../b"]),
            Err(RepoError::InvalidKey { .. })
        ));
    }

    #[test]
    fn leftover_temp_files_are_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let repo = LocalRepository::open(dir.path()).unwrap();
        repo.put("a/x", b"1").unwrap();
        fs::write(dir.path().join("a/.tmp-999-0"), b"torn").unwrap();
        assert_eq!(repo.list("a/").unwrap(), vec!["a/x"]);
    }

    /// A folder deleted whole leaves no directory and no temporary file of
    /// a killed put behind; a link planted in one is refused, not followed.
    #[test]
    fn a_deleted_folder_leaves_no_directories_or_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = LocalRepository::open(&root).unwrap();
        repo.put("b/1/shards/s/db/t.zst", b"1").unwrap();
        repo.put("b/1/bundles/s/b00000.bundle", b"2").unwrap();
        fs::write(root.join("b/1/shards/s/db/.tmp-999-0"), b"torn").unwrap();
        fs::create_dir_all(root.join("b/1/shards/s/empty")).unwrap();
        repo.put("b/2/kept", b"3").unwrap();
        repo.delete_folder("b/1/").unwrap();
        assert!(!root.join("b/1").exists());
        assert_eq!(repo.list("b/").unwrap(), vec!["b/2/kept"]);

        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join(".tmp-1-1"), b"not the repository's").unwrap();
        repo.put("b/3/x", b"4").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("b/3/link")).unwrap();
        assert!(matches!(
            repo.delete_folder("b/3/"),
            Err(RepoError::Symlink { .. })
        ));
        assert!(outside.join(".tmp-1-1").exists());
        assert!(root.join("b/3/link").symlink_metadata().is_ok());
    }
}
