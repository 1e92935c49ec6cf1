//! The `repository:` field: a directory, or a mapping for an object store
//! and encryption, with credentials never in the file.

use std::path::Path;

use topology::{RepositoryKey, RepositoryLocation, Topology, TopologyError};

const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn parse_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Topology, TopologyError> {
    let doc = format!(
        "cluster: shop\n{text}shards:\n  - name: a\n    engine: mysql\n    url: mysql://backup@127.0.0.1:3307\n"
    );
    Topology::parse(&doc, Path::new("/etc/shardcut/t.yaml"), env)
}

fn env(key: &str) -> Option<String> {
    match key {
        "KEY_ID" => Some("AKIDEXAMPLE".into()),
        "KEY_SECRET" => Some("wJalrXUtnFEMI".into()),
        "REPO_KEY" => Some(KEY_HEX.into()),
        _ => None,
    }
}

#[test]
fn a_bucket_with_credentials_from_named_variables() {
    let t = parse_with(
        "repository:\n  url: s3://backups-east/prod/db/\n  endpoint: http://127.0.0.1:9000\n  region: eu-west-1\n  access_key_env: KEY_ID\n  secret_key_env: KEY_SECRET\n  encryption:\n    key_env: REPO_KEY\n",
        &env,
    )
    .unwrap();
    let RepositoryLocation::S3(s3) = &t.repository.location else {
        panic!("{:?}", t.repository)
    };
    assert_eq!(s3.bucket, "backups-east");
    assert_eq!(s3.prefix, "prod/db");
    assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s3.region, "eu-west-1");
    assert_eq!(s3.access_key.expose(), "AKIDEXAMPLE");
    assert_eq!(
        t.repository.encryption.as_ref().unwrap().key,
        RepositoryKey::parse(KEY_HEX).unwrap()
    );
    // Shown without secrets.
    let shown = format!("{} {:?}", t.repository, t.repository);
    assert!(
        !shown.contains("wJalrXUtnFEMI") && !shown.contains(KEY_HEX),
        "{shown}"
    );
    assert_eq!(
        t.repository.to_string(),
        "s3://backups-east/prod/db at http://127.0.0.1:9000"
    );
}

#[test]
fn the_aws_conventions_fill_what_the_file_leaves_out() {
    let aws = |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some("AKIDAWS".to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
        "AWS_SESSION_TOKEN" => Some("token".to_string()),
        "AWS_ENDPOINT_URL" => Some("https://s3.example.net:8443".to_string()),
        "AWS_REGION" => Some("ap-south-1".to_string()),
        _ => None,
    };
    let t = parse_with("repository:\n  url: s3://bkp\n", &aws).unwrap();
    let RepositoryLocation::S3(s3) = &t.repository.location else {
        panic!()
    };
    assert_eq!(s3.access_key.expose(), "AKIDAWS");
    assert_eq!(s3.session_token.as_ref().map(|s| s.expose()), Some("token"));
    assert_eq!(s3.endpoint.as_deref(), Some("https://s3.example.net:8443"));
    assert_eq!(s3.region, "ap-south-1");
    assert_eq!(s3.prefix, "");
    assert!(t.repository.encryption.is_none());
}

#[test]
fn a_directory_may_be_encrypted_too() {
    let t = parse_with(
        "repository:\n  url: ./backups\n  encryption:\n    key_env: REPO_KEY\n",
        &env,
    )
    .unwrap();
    assert_eq!(
        t.repository.location,
        RepositoryLocation::Local("/etc/shardcut/./backups".into())
    );
    assert!(t.repository.encryption.is_some());
}

#[test]
fn mistakes_are_named_by_field() {
    let err = |text: &str| parse_with(text, &env).unwrap_err().to_string();
    let e = err("repository:\n  url: s3://Bad_Bucket/x\n  access_key_env: KEY_ID\n  secret_key_env: KEY_SECRET\n");
    assert!(
        e.contains("repository.url") && e.contains("not a bucket name"),
        "{e}"
    );
    let e = err("repository:\n  url: s3://bkp\n");
    assert!(
        e.contains("repository.access_key_env: required") && e.contains("AWS_ACCESS_KEY_ID"),
        "{e}"
    );
    let e = err("repository:\n  url: s3://bkp\n  endpoint: http://user:pw@127.0.0.1:9000\n  access_key_env: KEY_ID\n  secret_key_env: KEY_SECRET\n");
    assert!(
        e.contains("repository.endpoint") && !e.contains("pw@"),
        "{e}"
    );
    // One that does not parse (a port out of range) is not echoed whole
    // either: what comes before the `@` stays out of the message.
    let e = err("repository:\n  url: s3://bkp\n  endpoint: https://AKIDEXAMPLE:s3cr3t@minio:90000\n  access_key_env: KEY_ID\n  secret_key_env: KEY_SECRET\n");
    assert!(
        e.contains("`https://…@minio:90000` is not an endpoint")
            && !e.contains("s3cr3t")
            && !e.contains("AKIDEXAMPLE"),
        "{e}"
    );
    let e = err("repository:\n  url: ./b\n  endpoint: http://127.0.0.1:9000\n");
    assert!(
        e.contains("repository.endpoint: only for an s3:// repository"),
        "{e}"
    );
    let e = err("repository:\n  url: ./b\n  encryption:\n    key_env: KEY_ID\n");
    assert!(
        e.contains("repository.encryption.key_file") && e.contains("shardcut keygen"),
        "{e}"
    );
    assert!(!e.contains("AKIDEXAMPLE"), "{e}");
    let e = err("repository:\n  url: ./b\n  encryption: {}\n");
    assert!(e.contains("repository.encryption.key_env: required"), "{e}");
    let e = err("repository: ftp://host/x\n");
    assert!(e.contains("repository: a repository is a directory"), "{e}");
    let e = err("repository: s3://bkp\n");
    assert!(e.contains("repository.access_key_env: required"), "{e}");
}

#[test]
fn keys_read_back_as_written() {
    let key = RepositoryKey::parse(&format!("  {KEY_HEX}\n")).unwrap();
    assert_eq!(key.to_text(), KEY_HEX);
    assert_eq!(format!("{key:?}"), "RepositoryKey(****)");
    assert!(RepositoryKey::parse(&KEY_HEX[1..]).is_none());
    assert!(RepositoryKey::parse(&KEY_HEX.replace('a', "g")).is_none());
}

#[test]
fn a_ca_file_is_read_for_an_https_endpoint_and_refused_for_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let repo = |endpoint: &str, ca: &Path| {
        format!(
            "repository:\n  url: s3://bkp\n  endpoint: {endpoint}\n  access_key_env: KEY_ID\n  secret_key_env: KEY_SECRET\n  ca_file: {}\n",
            ca.display()
        )
    };
    let t = parse_with(&repo("https://s3.internal:8443", &ca), &env).unwrap();
    let RepositoryLocation::S3(s3) = &t.repository.location else {
        panic!("{:?}", t.repository)
    };
    assert!(s3.ca_pem.as_deref().unwrap().contains("BEGIN CERTIFICATE"));

    let missing = dir.path().join("missing.pem");
    for (endpoint, file, says) in [
        ("http://127.0.0.1:9000", &ca, "plain http"),
        ("https://s3.internal:8443", &missing, "cannot read"),
    ] {
        let err = parse_with(&repo(endpoint, file), &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("repository.ca_file") && err.contains(says),
            "{err}"
        );
    }
}
