//! Shard connection URLs: `mysql://user@host:port[/db]`, `postgres://user@host:port[/db]`.

use crate::model::{Endpoint, Engine};

/// Parses a shard URL for `engine`. Returns every problem found, so a URL
/// with both a password and a wrong scheme reports both.
pub fn parse_endpoint(text: &str, engine: Option<Engine>) -> Result<Endpoint, Vec<String>> {
    let url = url::Url::parse(text).map_err(|e| vec![format!("not a valid URL: {e}")])?;
    let mut problems = Vec::new();
    let scheme_engine = match url.scheme() {
        "mysql" | "mariadb" => Some(Engine::Mysql),
        "postgres" | "postgresql" => Some(Engine::Postgres),
        other => {
            problems.push(format!(
                "unknown scheme `{other}`; use mysql:// or postgres://"
            ));
            None
        }
    };
    if let (Some(s), Some(e)) = (scheme_engine, engine) {
        if s != e {
            problems.push(format!(
                "scheme `{}` does not match engine `{e}`; use {}://",
                url.scheme(),
                e
            ));
        }
    }
    if url.password().is_some() {
        problems.push(
            "a password inside the URL is refused (it would end up in logs and shell history); use password_env or password_file".to_string(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        problems.push("query parameters and fragments are not supported".to_string());
    }
    let host = url.host_str().unwrap_or_default().to_string();
    if host.is_empty() {
        problems.push("host missing".to_string());
    }
    let user = url.username().to_string();
    if user.is_empty() {
        problems.push("user missing; write e.g. mysql://backup@HOST:PORT".to_string());
    }
    let port = url.port().unwrap_or(match engine.or(scheme_engine) {
        Some(Engine::Postgres) => 5432,
        _ => 3306,
    });
    let path = url.path().trim_start_matches('/');
    if path.contains('/') {
        problems.push("the path may name one database only".to_string());
    }
    let database = (!path.is_empty()).then(|| path.to_string());
    if problems.is_empty() {
        Ok(Endpoint {
            host,
            port,
            user,
            database,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_urls() {
        let e = parse_endpoint("mysql://backup@127.0.0.1:3307", Some(Engine::Mysql)).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.user.as_str()),
            ("127.0.0.1", 3307, "backup")
        );
        let e = parse_endpoint("postgres://b@db1/postgres", Some(Engine::Postgres)).unwrap();
        assert_eq!((e.port, e.database.as_deref()), (5432, Some("postgres")));
    }

    #[test]
    fn refusals() {
        let p = parse_endpoint("mysql://u:pw@h:1", Some(Engine::Postgres)).unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("does not match engine `postgres`"));
        assert!(p[1].contains("password inside the URL"));
        assert!(!p.iter().any(|m| m.contains("pw")));
        let p = parse_endpoint("mysql://h:1", Some(Engine::Mysql)).unwrap_err();
        assert!(p[0].contains("user missing"));
    }
}
