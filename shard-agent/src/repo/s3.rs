//! A repository in a bucket of an S3-compatible object store, through the
//! `object_store` crate (request signing, retries with backoff on 5xx,
//! throttling and dropped connections, multipart upload).
//!
//! The [`Repository`] trait is synchronous, as the directory repository's
//! file calls are; its callers run on the blocking pool or briefly on a
//! runtime thread. Requests run on one small runtime of the store's own,
//! shared by every S3 repository of the process and never dropped (a
//! runtime may not be dropped from inside another one), and the caller
//! waits for the answer. A caller on any runtime, or none, may use it.
//!
//! Keys map to object names below the configured prefix, unchanged: keys
//! are already restricted to safe segments (`valid_key`), and names made
//! from table names are percent-encoded by `manifest::keys::segment`.
//! S3 writes are atomic (a reader sees the whole object or none), a put
//! is durable when it returns, and the lock's put-if-absent is a
//! conditional put (`If-None-Match: *`).

use std::future::Future;
use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};
use topology::S3Location;

use super::{valid_key, RepoError, Repository};

/// Objects of at least this size are uploaded in parts of this size, so a
/// large file is never held in memory whole.
const PART_SIZE: usize = 8 << 20;

pub struct S3Repository {
    store: Arc<AmazonS3>,
    bucket: String,
    /// Without a trailing `/`; empty for the whole bucket.
    prefix: String,
    location: String,
}

/// Only where it is: the client inside holds the credentials.
impl std::fmt::Debug for S3Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Repository")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The longest part of a store's error message kept in ours: the text
/// comes from the network.
const MESSAGE_CHARS: usize = 300;

/// The store's own runtime, made on first use.
fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("shardcut-s3")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl S3Repository {
    /// The store's path of repository folder `folder` (`""`: the
    /// repository's root), as text and parsed; `key` names it in errors.
    fn folder(&self, folder: &str, key: &str) -> Result<(String, Path), RepoError> {
        let full = match (self.prefix.is_empty(), folder.is_empty()) {
            (true, _) => folder.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{folder}", self.prefix),
        };
        let dir = Path::parse(&full).map_err(|_| RepoError::InvalidKey {
            location: self.location.clone(),
            key: key.to_string(),
        })?;
        Ok((full, dir))
    }

    /// Prepares requests to `location`; nothing is sent until the first call.
    pub fn open(location: &S3Location) -> Result<Self, RepoError> {
        let shown = location.to_string();
        let fail = |message: String| RepoError::Store {
            location: shown.clone(),
            what: "open".to_string(),
            message: message.into(),
        };
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 6,
            retry_timeout: Duration::from_secs(60),
        };
        let mut client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&location.bucket)
            .with_region(&location.region)
            .with_access_key_id(location.access_key.expose())
            .with_secret_access_key(location.secret_key.expose())
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_disable_tagging(true)
            .with_retry(retry);
        if let Some(token) = &location.session_token {
            builder = builder.with_token(token.expose());
        }
        let mut plain_http = false;
        if let Some(endpoint) = &location.endpoint {
            // A named endpoint is an S3-compatible store: path-style
            // requests, and plain HTTP if that is what it says.
            plain_http = endpoint.starts_with("http://");
            client = client.with_allow_http(plain_http);
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        // Over TLS the payload is not hashed into the signature: TLS
        // already protects it on the way, and SHA-256 of every byte was
        // 7 % of a backup's CPU, a third of what a bucket costs its host
        // beyond a directory (docs/BENCHMARKS.md). Over plain HTTP the
        // signature is the only check on the way, and stays.
        builder = builder.with_unsigned_payload(!plain_http);
        if let Some(pem) = &location.ca_pem {
            let roots = object_store::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| fail(format!("the CA file holds no usable certificate: {e}")))?;
            if roots.is_empty() {
                return Err(fail("the CA file holds no certificate".into()));
            }
            for root in roots {
                client = client.with_root_certificate(root);
            }
        }
        // TLS goes through rustls with the process's crypto provider.
        crate::tls::install_provider();
        let store = builder
            .with_client_options(client)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        Ok(S3Repository {
            store: Arc::new(store),
            bucket: location.bucket.clone(),
            prefix: location.prefix.clone(),
            location: shown,
        })
    }

    fn path(&self, key: &str) -> Result<Path, RepoError> {
        let invalid = || RepoError::InvalidKey {
            location: self.location.clone(),
            key: key.to_string(),
        };
        if !valid_key(key) {
            return Err(invalid());
        }
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(full).map_err(|_| invalid())
    }

    /// Runs `fut` on the store's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        key: &str,
        fut: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Result<T, RepoError> {
        let rt = runtime().map_err(|message| RepoError::Store {
            location: self.location.clone(),
            what: format!("{op} {key}"),
            message: format!("cannot start the object store's runtime: {message}").into(),
        })?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            // The receiver only goes away if the caller's thread did.
            drop(tx.send(fut.await));
        });
        let result = rx.recv().map_err(|_| RepoError::Store {
            location: self.location.clone(),
            what: format!("{op} {key}"),
            message: "the request was abandoned".into(),
        })?;
        result.map_err(|e| self.error(op, key, e))
    }

    fn error(&self, op: &'static str, key: &str, e: object_store::Error) -> RepoError {
        let location = self.location.clone();
        match e {
            object_store::Error::NotFound { .. } => RepoError::NotFound {
                location,
                key: key.to_string(),
            },
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => RepoError::AlreadyExists {
                location,
                key: key.to_string(),
            },
            other => {
                let (denied, message) = summarize(&other);
                let (what, message) = (format!("{op} {key}"), message.into());
                if denied {
                    RepoError::Denied {
                        location,
                        what,
                        message,
                    }
                } else {
                    RepoError::Store {
                        location,
                        what,
                        message,
                    }
                }
            }
        }
    }

    /// One single-part put of `data` as `key`.
    fn put_with(
        &self,
        key: &str,
        data: &[u8],
        opts: PutOptions,
    ) -> Result<object_store::PutResult, RepoError> {
        let path = self.path(key)?;
        let store = self.store.clone();
        let payload = PutPayload::from(data.to_vec());
        self.run("put", key, async move {
            store.put_opts(&path, payload, opts).await
        })
    }

    fn put_parts(&self, key: &str, file: &mut std::fs::File) -> Result<(), RepoError> {
        use std::io::{Seek, SeekFrom};
        let path = self.path(key)?;
        let store = self.store.clone();
        let mut upload = self.run("put", key, async move { store.put_multipart(&path).await })?;
        let read_err = |source| RepoError::Io {
            location: self.location.clone(),
            op: "read the file to store as",
            key: key.to_string(),
            source,
        };
        let sent = (|| {
            file.seek(SeekFrom::Start(0)).map_err(read_err)?;
            loop {
                let mut part = Vec::with_capacity(PART_SIZE);
                file.by_ref()
                    .take(PART_SIZE as u64)
                    .read_to_end(&mut part)
                    .map_err(read_err)?;
                if part.is_empty() {
                    break;
                }
                let fut = upload.put_part(PutPayload::from(part));
                self.run("put", key, fut)?;
            }
            Ok(())
        })();
        // Parts of an abandoned upload cost storage until aborted: an upload
        // whose parts or whose completion failed is aborted, and the
        // original error is the one to report.
        match sent {
            Ok(()) => self.run("put", key, async move {
                match upload.complete().await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        drop(upload.abort().await);
                        Err(e)
                    }
                }
            }),
            Err(e) => {
                drop(self.run(
                    "abort the upload of",
                    key,
                    async move { upload.abort().await },
                ));
                Err(e)
            }
        }
    }
}

impl Repository for S3Repository {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn reference(&self) -> String {
        super::reference::bucket_text(&self.bucket, &self.prefix)
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        self.put_with(key, data, PutOptions::default()).map(drop)
    }

    /// S3 answers a single-part put with the object's ETag, the MD5 of the
    /// bytes it stored: compared with the MD5 of what was sent, that is the
    /// store's own hash of the object, without reading it back. A store
    /// that answers otherwise (no ETag, or not an MD5) gets the read-back.
    fn put_verified(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        use md5::Digest;
        let put = self.put_with(key, data, PutOptions::default())?;
        let etag = put
            .e_tag
            .as_deref()
            .map(|t| t.trim_matches('"').to_ascii_lowercase());
        let sent: String = md5::Md5::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        match etag {
            Some(t) if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) => {
                if t == sent {
                    Ok(())
                } else {
                    Err(RepoError::Unverified {
                        location: self.location.clone(),
                        key: key.to_string(),
                        detail: format!("the store's MD5 is {t}, the bytes sent have {sent}")
                            .into(),
                    })
                }
            }
            _ => super::read_back_matches(self, key, data),
        }
    }

    fn put_file(&self, key: &str, file: &mut std::fs::File) -> Result<(), RepoError> {
        let len = file
            .metadata()
            .map_err(|source| RepoError::Io {
                location: self.location.clone(),
                op: "read the file to store as",
                key: key.to_string(),
                source,
            })?
            .len();
        if len < PART_SIZE as u64 {
            let data = super::read_whole(&self.location, key, file)?;
            return self.put(key, &data);
        }
        self.put_parts(key, file)
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.put_with(key, data, opts).map(drop)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, RepoError> {
        let path = self.path(key)?;
        let store = self.store.clone();
        self.run("get", key, async move {
            let got = store.get(&path).await?;
            Ok(got.bytes().await?.to_vec())
        })
    }

    /// The store says the object's size before its body is read.
    fn get_at_most(&self, key: &str, max: u64) -> Result<Vec<u8>, RepoError> {
        let path = self.path(key)?;
        let store = self.store.clone();
        let got = self.run("get", key, async move {
            let got = store.get(&path).await?;
            if got.meta.size > max {
                // The body is not read: the caller learns the size only.
                return Ok(Err(got.meta.size));
            }
            Ok(Ok(got.bytes().await?.to_vec()))
        })?;
        match got {
            Ok(data) => {
                super::check_size(&self.location, key, data.len() as u64, max)?;
                Ok(data)
            }
            Err(size) => Err(RepoError::TooLarge {
                location: self.location.clone(),
                key: key.to_string(),
                size,
                max,
            }),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
        // Object store listings go by whole path segments: list the folder
        // that holds `prefix` and keep what starts with it.
        let folder = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let (full, dir) = self.folder(folder, prefix)?;
        let store = self.store.clone();
        let names = self.run("list", prefix, async move {
            let mut names = Vec::new();
            let mut stream = store.list((!full.is_empty()).then_some(&dir));
            while let Some(meta) = stream.next().await {
                names.push(meta?.location.to_string());
            }
            Ok(names)
        })?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut keys: Vec<String> = names
            .into_iter()
            .filter_map(|name| name.strip_prefix(&strip).map(str::to_string))
            .filter(|key| key.starts_with(prefix) && valid_key(key))
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn list_folder(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
        let folder = prefix
            .strip_suffix('/')
            .ok_or_else(|| RepoError::InvalidKey {
                location: self.location.clone(),
                key: prefix.to_string(),
            })?;
        let (_, dir) = self.folder(folder, prefix)?;
        let store = self.store.clone();
        let listed = self.run("list", prefix, async move {
            store.list_with_delimiter(Some(&dir)).await
        })?;
        let mut out: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(|n| format!("{n}/")))
            .chain(
                listed
                    .objects
                    .iter()
                    .filter_map(|o| o.location.filename().map(str::to_string)),
            )
            .filter(|n| valid_key(&format!("{prefix}{}", n.trim_end_matches('/'))))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), RepoError> {
        let path = self.path(key)?;
        let store = self.store.clone();
        match self.run("delete", key, async move { store.delete(&path).await }) {
            Err(RepoError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// An object store's put is durable when it returns; names need no
    /// separate sync.
    fn sync_names(&self, _keys: &[&str]) -> Result<(), RepoError> {
        Ok(())
    }
}

/// Whether the store refused the credentials, and a one-line account of
/// the failure: the HTTP status and the store's error code and message
/// where it sent them (S3's XML error body), not the whole body.
fn summarize(e: &object_store::Error) -> (bool, String) {
    let mut text = e.to_string();
    // The innermost cause (a refused connection, a timeout) says most.
    let mut innermost = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        innermost = Some(more);
        source = s.source();
    }
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let len = text[start..].find(close)?;
        Some(text[start..start + len].to_string())
    };
    let status = text
        .find("status code: ")
        .and_then(|i| text.get(i + 13..i + 16))
        .and_then(|d| d.parse::<u16>().ok());
    let code = between("<Code>", "</Code>");
    let denied = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || matches!(status, Some(401 | 403))
        || matches!(
            code.as_deref(),
            Some(
                "AccessDenied"
                    | "SignatureDoesNotMatch"
                    | "InvalidAccessKeyId"
                    | "ExpiredToken"
                    | "InvalidToken"
            )
        );
    let message = match (status, code) {
        (status, Some(code)) => {
            let said: String = between("<Message>", "</Message>")
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(MESSAGE_CHARS)
                .collect();
            let code: String = code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(64)
                .collect();
            let status = status.map(|s| format!("HTTP {s} ")).unwrap_or_default();
            format!("{status}{code}: {said}")
        }
        // No error body: the innermost cause, and how often it was tried.
        _ => {
            let retried = text
                .find("after ")
                .and_then(|i| text[i..].split(',').next())
                .filter(|t| t.ends_with("retries"))
                .map(|t| format!(" ({t})"))
                .unwrap_or_default();
            let line = format!("{}{retried}", innermost.unwrap_or_else(|| text.clone()))
                .replace(['\n', '\r'], " ");
            match line.char_indices().nth(MESSAGE_CHARS) {
                Some((cut, _)) => format!("{}…", &line[..cut]),
                None => line,
            }
        }
    };
    (denied, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology::Secret;

    #[test]
    fn neither_debug_nor_messages_show_the_credentials() {
        let repo = S3Repository::open(&S3Location {
            bucket: "east".into(),
            prefix: "prod".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            region: "us-east-1".into(),
            access_key: Secret::new("AKIDSHOWNNOWHERE"),
            secret_key: Secret::new("secret-shown-nowhere"),
            session_token: None,
            ca_pem: None,
        })
        .unwrap();
        let shown = format!("{repo:?} {}", repo.location());
        assert!(
            !shown.contains("AKIDSHOWNNOWHERE") && !shown.contains("secret-shown-nowhere"),
            "{shown}"
        );
        assert_eq!(repo.reference(), "s3://east/prod");
    }

    #[test]
    fn a_store_error_becomes_one_short_line() {
        let body = format!(
            "Error performing put: Server returned non-2xx status code: 403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code><Message>{}\nmore</Message></Error>",
            "x".repeat(10_000)
        );
        let e = object_store::Error::Generic {
            store: "S3",
            source: body.into(),
        };
        let (denied, message) = summarize(&e);
        assert!(denied);
        assert!(
            message.starts_with("HTTP 403 SignatureDoesNotMatch: xxx"),
            "{message}"
        );
        assert!(message.len() < MESSAGE_CHARS + 64, "{}", message.len());
        assert!(!message.contains('\n'));
    }
}
