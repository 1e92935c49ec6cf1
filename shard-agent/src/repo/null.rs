//! A repository that keeps nothing: for dumps that only compute row counts
//! and content hashes (marks), so the dump code path is the same one that
//! backups use while nothing is compressed or stored.

use super::{RepoError, Repository};

#[derive(Debug, Default)]
pub struct NullRepository;

impl Repository for NullRepository {
    fn location(&self) -> String {
        "(hashing only)".into()
    }
    fn put(&self, _key: &str, _data: &[u8]) -> Result<(), RepoError> {
        Ok(())
    }
    fn put_if_absent(&self, _key: &str, _data: &[u8]) -> Result<(), RepoError> {
        Ok(())
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, RepoError> {
        Err(RepoError::NotFound {
            location: self.location(),
            key: key.to_string(),
        })
    }
    fn list(&self, _prefix: &str) -> Result<Vec<String>, RepoError> {
        Ok(Vec::new())
    }
    fn delete(&self, _key: &str) -> Result<(), RepoError> {
        Ok(())
    }
    /// Nothing here outlives the process: nothing to make durable.
    fn sync_names(&self, _keys: &[&str]) -> Result<(), RepoError> {
        Ok(())
    }
}
