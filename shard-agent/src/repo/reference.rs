//! How an orchestrator names its repository to a remote agent: where it is
//! (a directory on the agent's host, or `s3://bucket/prefix`) and which key
//! seals it (`#key=<key id>`). Never a secret and never an endpoint: the
//! agent reaches a bucket with its own endpoint and credentials, opens only
//! what its `--allow-repository` entries allow, and seals with its own key,
//! which must be the one the reference names.

/// Where the repository is, as the agent must open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A directory path on the agent's host (a shared mount).
    Directory(String),
    Bucket {
        bucket: String,
        prefix: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub place: Place,
    /// The id of the key that seals the repository; `None`: not encrypted.
    pub key_id: Option<String>,
}

const KEY_MARK: &str = "#key=";

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, String> {
        let (place, key_id) = match text.rsplit_once(KEY_MARK) {
            Some((p, id)) if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (p, Some(id.to_ascii_lowercase()))
            }
            _ => (text, None),
        };
        let place = match place.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(format!("`{text}` names no bucket"));
                }
                Place::Bucket {
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                }
            }
            None if place.contains("://") => {
                return Err(format!(
                    "`{text}` is neither a directory nor s3://bucket/prefix"
                ))
            }
            None => Place::Directory(place.to_string()),
        };
        Ok(Reference { place, key_id })
    }
}

/// `s3://bucket/prefix` without a key (what `--allow-repository` names).
pub fn bucket_text(bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    }
}

/// `reference` of a sealed repository: the inner one's, and the key id.
pub fn with_key(inner: &str, key_id: &str) -> String {
    format!("{inner}{KEY_MARK}{key_id}")
}

/// Whether `prefix` lies at or below the allowed `allowed` prefix, by
/// whole segments.
pub fn prefix_within(prefix: &str, allowed: &str) -> bool {
    allowed.is_empty()
        || prefix == allowed
        || prefix
            .strip_prefix(allowed)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_back() {
        assert_eq!(
            Reference::parse("/srv/repo").unwrap(),
            Reference {
                place: Place::Directory("/srv/repo".into()),
                key_id: None
            }
        );
        let r = Reference::parse("s3://east/prod/db#key=0011223344556677").unwrap();
        assert_eq!(
            r.place,
            Place::Bucket {
                bucket: "east".into(),
                prefix: "prod/db".into()
            }
        );
        assert_eq!(r.key_id.as_deref(), Some("0011223344556677"));
        assert_eq!(
            Reference::parse(&with_key(&bucket_text("b", ""), "aaaaaaaaaaaaaaaa")).unwrap(),
            Reference {
                place: Place::Bucket {
                    bucket: "b".into(),
                    prefix: String::new()
                },
                key_id: Some("aaaaaaaaaaaaaaaa".into())
            }
        );
        assert!(Reference::parse("http://elsewhere/x").is_err());
        assert!(Reference::parse("s3:///x").is_err());
    }

    #[test]
    fn prefixes_are_compared_by_segment() {
        assert!(prefix_within("prod/db", "prod"));
        assert!(prefix_within("prod", "prod"));
        assert!(prefix_within("anything", ""));
        assert!(!prefix_within("production", "prod"));
        assert!(!prefix_within("", "prod"));
    }
}
