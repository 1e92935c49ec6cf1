//! A PostgreSQL database's own properties, which pg_dump writes only with
//! `--create` and a restore into a database it creates must give back:
//! its encoding, collation and character classification (and the ICU or
//! builtin locale), its settings (`ALTER DATABASE … SET search_path …`)
//! and its comment.
//!
//! Without them a restore created every database with the target's
//! defaults: a database in `LATIN1`, or sorting by an ICU locale, came
//! back in the target's encoding and sorted otherwise (`ORDER BY` and
//! text indexes with it), and one whose applications found their tables
//! through its `search_path` came back without it. Each value comes from
//! the repository: it reaches SQL as a literal or a quoted name only.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::copy_reader::literal;
use super::ident;

/// Stored beside a database's schema sections (section `properties`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct DatabaseProperties {
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `libc`, `icu` or `builtin`.
    #[serde(default)]
    pub locale_provider: String,
    /// The ICU or builtin locale, for those providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icu_rules: Option<String>,
    /// The database's own settings (`pg_db_role_setting` of no role), as
    /// `name=value`. A role's settings in it (`ALTER ROLE … IN DATABASE`)
    /// belong to the role, which the target may not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Reads the properties of the database `client` is connected to. The
/// catalog's columns differ between versions (PostgreSQL 17 renamed
/// `daticulocale` to `datlocale`): they are read through `to_jsonb`.
pub(super) async fn read(client: &Client) -> Result<DatabaseProperties, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_encoding_to_char(d.encoding)::text, to_jsonb(d)::text, \
             COALESCE((SELECT setconfig FROM pg_db_role_setting s \
                       WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}'::text[]), \
             shobj_description(d.oid, 'pg_database') \
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await?;
    let catalog: serde_json::Value =
        serde_json::from_str(&row.try_get::<_, String>(1)?).unwrap_or_default();
    let text = |key: &str| catalog[key].as_str().map(str::to_string);
    let provider = match text("datlocprovider").as_deref() {
        Some("i") => "icu",
        Some("b") => "builtin",
        _ => "libc",
    };
    Ok(DatabaseProperties {
        encoding: row.try_get(0)?,
        collate: text("datcollate").unwrap_or_default(),
        ctype: text("datctype").unwrap_or_default(),
        locale_provider: provider.to_string(),
        locale: text("datlocale").or_else(|| text("daticulocale")),
        icu_rules: text("daticurules"),
        settings: row.try_get(2)?,
        comment: row.try_get(3)?,
    })
}

impl DatabaseProperties {
    /// The options of `CREATE DATABASE` that give them back, every value a
    /// literal; `Err` for a provider shardcut does not know.
    pub fn create_options(&self) -> Result<String, String> {
        let mut out = format!(
            " TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            literal(&self.encoding),
            literal(&self.collate),
            literal(&self.ctype)
        );
        // libc is every version's default: a target older than the
        // providers takes the statement without the clause.
        let locale = self.locale.as_deref().map(literal);
        match (self.locale_provider.as_str(), locale) {
            ("libc" | "", _) => {}
            ("icu", Some(l)) => {
                out.push_str(&format!(" LOCALE_PROVIDER icu ICU_LOCALE {l}"));
                if let Some(rules) = &self.icu_rules {
                    out.push_str(&format!(" ICU_RULES {}", literal(rules)));
                }
            }
            ("builtin", Some(l)) => {
                out.push_str(&format!(" LOCALE_PROVIDER builtin BUILTIN_LOCALE {l}"))
            }
            (other, _) => {
                return Err(format!(
                    "locale provider {:?} without a locale, or unknown",
                    other.chars().take(20).collect::<String>()
                ))
            }
        }
        Ok(out)
    }

    /// Gives database `db` its settings and comment, on `client` (a
    /// session of its own: `set_config` changes it). Each setting is put
    /// in the session as the catalog holds its text, then taken from it
    /// (`SET … FROM CURRENT`), so a list (`search_path=app, public`) is
    /// read as the server reads its own catalog. One the target refuses
    /// (unknown, or for superusers only) is a note, not a failure: the
    /// rows are there.
    pub async fn apply(&self, client: &Client, db: &str) -> Vec<String> {
        let mut notes = Vec::new();
        // The comment is a literal written for standard strings.
        if let Err(e) = client
            .batch_execute("SET standard_conforming_strings = on")
            .await
        {
            notes.push(format!(
                "database {db}: its settings and comment were not restored ({})",
                crate::replay::excerpt(&e.to_string())
            ));
            return notes;
        }
        for setting in &self.settings {
            let Some((name, value)) = setting.split_once('=') else {
                continue;
            };
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
            let quoted: Vec<String> = name.split('.').map(ident).collect();
            let sql = format!(
                "ALTER DATABASE {} SET {} FROM CURRENT",
                ident(db),
                quoted.join(".")
            );
            // In one transaction, the setting local to it: one that makes
            // transactions read-only (`default_transaction_read_only`)
            // does not stop its own ALTER.
            // Only what any user may set in a session: a backup is not
            // trusted to set what loads code or hides from the audit
            // (`session_preload_libraries`, `log_statement`).
            // A dotted name the target does not list is a placeholder
            // (`app.tenant`, read by policies): taken, unless its prefix
            // names an extension, whose module would read it when loaded.
            let context: Option<String> = match valid {
                true => client
                    .query_opt(
                        "SELECT context FROM pg_settings WHERE name = $1 \
                         UNION ALL SELECT 'user' WHERE strpos($1, '.') > 0 \
                         AND NOT EXISTS (SELECT 1 FROM pg_settings WHERE name = $1) \
                         AND NOT EXISTS (SELECT 1 FROM pg_available_extensions \
                           WHERE name = split_part($1, '.', 1))",
                        &[&name],
                    )
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.try_get(0).ok()),
                false => None,
            };
            let done = match (valid, context.as_deref()) {
                (false, _) => Err("not a setting's name".to_string()),
                // Loads code, though any user may set it.
                (true, _) if name.ends_with("preload_libraries") => {
                    Err("a list of libraries to load is not restored".to_string())
                }
                (true, None) => {
                    Err("the target does not know it (or an extension's module would read it)".to_string())
                }
                (true, Some(c)) if c != "user" => Err(format!(
                    "only settings of context `user` are restored, and it is `{c}`: set it by hand if it belongs there"
                )),
                (true, Some(_)) => {
                    let tried = async {
                        client.batch_execute("BEGIN").await?;
                        client
                            .query_one("SELECT set_config($1, $2, true)", &[&name, &value])
                            .await?;
                        client.batch_execute(&sql).await?;
                        client.batch_execute("COMMIT").await
                    }
                    .await;
                    if tried.is_err() {
                        drop(client.batch_execute("ROLLBACK").await);
                    }
                    tried.map_err(|e| e.to_string())
                }
            };
            if let Err(e) = done {
                let shown: String = setting.chars().take(80).collect();
                notes.push(format!(
                    "database {db}: its setting {shown:?} was not restored ({})",
                    crate::replay::excerpt(&e)
                ));
            }
        }
        if let Some(comment) = &self.comment {
            let sql = format!("COMMENT ON DATABASE {} IS {}", ident(db), literal(comment));
            if let Err(e) = client.batch_execute(&sql).await {
                notes.push(format!(
                    "database {db}: its comment was not restored ({})",
                    crate::replay::excerpt(&e.to_string())
                ));
            }
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::DatabaseProperties;

    #[test]
    fn create_options_quote_every_value_and_know_the_providers() {
        let mut p = DatabaseProperties {
            encoding: "LATIN1".into(),
            collate: "C".into(),
            ctype: "de_DE'; DROP DATABASE x; --".into(),
            locale_provider: "libc".into(),
            ..DatabaseProperties::default()
        };
        assert_eq!(
            p.create_options().unwrap(),
            " TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'de_DE''; DROP DATABASE x; --'"
        );
        p.locale_provider = "icu".into();
        assert!(p.create_options().is_err(), "icu without a locale");
        p.locale = Some("de-DE".into());
        assert!(p
            .create_options()
            .unwrap()
            .ends_with(" LOCALE_PROVIDER icu ICU_LOCALE 'de-DE'"));
        p.locale_provider = "icu ICU_LOCALE 'x'".into();
        assert!(p.create_options().is_err());
    }
}
