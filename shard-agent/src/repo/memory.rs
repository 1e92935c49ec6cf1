//! An in-memory repository for unit tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{valid_key, RepoError, Repository};

#[derive(Debug, Default)]
pub struct MemoryRepository {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryRepository {
    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every operation is a single map call), so poisoning is ignored.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(key: &str) -> Result<(), RepoError> {
        if valid_key(key) {
            Ok(())
        } else {
            Err(RepoError::InvalidKey {
                location: "memory".into(),
                key: key.into(),
            })
        }
    }
}

impl Repository for MemoryRepository {
    fn location(&self) -> String {
        "memory".into()
    }
    fn put(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        Self::check(key)?;
        self.objects().insert(key.to_string(), data.to_vec());
        Ok(())
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        Self::check(key)?;
        let mut objects = self.objects();
        if objects.contains_key(key) {
            return Err(RepoError::AlreadyExists {
                location: "memory".into(),
                key: key.into(),
            });
        }
        objects.insert(key.to_string(), data.to_vec());
        Ok(())
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, RepoError> {
        self.objects()
            .get(key)
            .cloned()
            .ok_or_else(|| RepoError::NotFound {
                location: "memory".into(),
                key: key.into(),
            })
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
        Ok(self
            .objects()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
    fn delete(&self, key: &str) -> Result<(), RepoError> {
        self.objects().remove(key);
        Ok(())
    }
    /// Nothing here outlives the process: nothing to make durable.
    fn sync_names(&self, _keys: &[&str]) -> Result<(), RepoError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn contract() {
        super::super::contract::check(&super::MemoryRepository::default());
    }
}
