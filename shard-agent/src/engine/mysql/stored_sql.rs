//! The statements a MariaDB/MySQL restore takes from the backup's schema
//! file, which comes from the repository: untrusted until checked. Each
//! object's statement must be a `CREATE` of its own kind and name, as
//! `SHOW CREATE` writes it (`DROP DATABASE billing` planted in place of a
//! table's definition is refused before the target is touched), and each
//! runs on MariaDB as exactly one statement: `EXECUTE IMMEDIATE '…'`,
//! which the server refuses when the text holds more than one. Sent as a
//! query, the text `CREATE TABLE t (…); DROP DATABASE billing` would run
//! both: the MySQL library always asks the server for multi-statement
//! queries. (MySQL has no `EXECUTE IMMEDIATE`: there the statements go as
//! they are, checked only for their kind and name.)
//!
//! What a `CREATE` of the right name may carry (table options, a view's
//! query, a routine's or trigger's body) is still the backup's to say:
//! only an encrypted repository authenticates it (docs/SECURITY.md).

use super::schema::{DatabaseSchema, Object};
use super::sql::quote_literal;
use crate::manifest::qualified_name;

/// What a schema statement must create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Database,
    Sequence,
    Table,
    View,
    Routine,
    Trigger,
    Event,
}

impl Kind {
    fn keywords(self) -> &'static [&'static str] {
        match self {
            Kind::Database => &["DATABASE "],
            Kind::Sequence => &["SEQUENCE "],
            Kind::Table => &["TABLE "],
            Kind::View => &["VIEW "],
            // MariaDB's aggregate functions (`FETCH GROUP NEXT ROW`).
            Kind::Routine => &["PROCEDURE ", "FUNCTION ", "AGGREGATE FUNCTION "],
            Kind::Trigger => &["TRIGGER "],
            Kind::Event => &["EVENT "],
        }
    }

    /// The statement that creates one, for messages.
    pub(super) fn statement(self) -> &'static str {
        match self {
            Kind::Database => "CREATE DATABASE",
            Kind::Sequence => "CREATE SEQUENCE",
            Kind::Table => "CREATE TABLE",
            Kind::View => "CREATE VIEW",
            Kind::Routine => "CREATE PROCEDURE or FUNCTION",
            Kind::Trigger => "CREATE TRIGGER",
            Kind::Event => "CREATE EVENT",
        }
    }

    pub(super) fn noun(self) -> &'static str {
        match self {
            Kind::Database => "database",
            Kind::Sequence => "sequence",
            Kind::Table => "table",
            Kind::View => "view",
            Kind::Routine => "routine",
            Kind::Trigger => "trigger",
            Kind::Event => "event",
        }
    }
}

/// Whether `sql` begins as `SHOW CREATE` writes the `CREATE` of a `kind`
/// named `name` in database `db`: `CREATE`, the clauses it may put before
/// the kind (`ALGORITHM=…`, `DEFINER=…`, `SQL SECURITY …`), the kind, then
/// the name, quoted or bare, qualified with `db` or not (a view shown from
/// a session in no database is).
///
/// With `ansi` (the object's SQL mode has `ANSI_QUOTES`, under which
/// `SHOW CREATE` quotes a routine's names in double quotes, and under
/// which it is created again), a name may be in double quotes too.
pub(super) fn creates(sql: &str, kind: Kind, db: &str, name: &str, ansi: bool) -> bool {
    let Some(mut rest) = sql.strip_prefix("CREATE ") else {
        return false;
    };
    loop {
        let next = if let Some(r) = rest.strip_prefix("ALGORITHM=") {
            after_word(r)
        } else if let Some(r) = rest.strip_prefix("SQL SECURITY ") {
            after_word(r)
        } else if let Some(r) = rest.strip_prefix("DEFINER=") {
            definer(r, ansi)
        } else {
            break;
        };
        match next {
            Some(r) => rest = r,
            None => return false,
        }
    }
    let rest = match kind {
        Kind::Trigger => trigger_head(rest),
        _ => kind.keywords().iter().find_map(|k| rest.strip_prefix(k)),
    };
    let Some(rest) = rest else {
        return false;
    };
    let Some((first, after)) = identifier(rest, ansi) else {
        return false;
    };
    let (found, after) = match after.strip_prefix('.') {
        Some(qualified) if first == db && kind != Kind::Database => {
            match identifier(qualified, ansi) {
                Some(named) => named,
                None => return false,
            }
        }
        Some(_) => return false,
        None => (first, after),
    };
    found == name
        && (after.is_empty() || after.starts_with(|c: char| c == '(' || c.is_ascii_whitespace()))
}

/// After a trigger's `TRIGGER` keyword, its `IF NOT EXISTS` if any, and
/// the white space after each. `SHOW CREATE TRIGGER` writes `CREATE` and
/// the definer itself but the rest as the trigger was created (MariaDB
/// keeps its text from the keyword on): the keywords in the letter case
/// they were typed in, the white space as typed (`trigger\n  tr`). Read
/// as the exact form of the other kinds, every trigger created in lower
/// case made its database's restore refuse the backup.
fn trigger_head(s: &str) -> Option<&str> {
    let mut rest = keyword(s, "TRIGGER")?;
    if let Some(r) = keyword(rest, "IF").and_then(|r| keyword(r, "NOT")) {
        rest = keyword(r, "EXISTS")?;
    }
    Some(rest)
}

/// After the keyword `word` (in any letter case) at the start of `s` and
/// the white space that follows it; a quoted name may follow at once
/// (``trigger`tr` ``).
fn keyword<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let head = s.get(..word.len())?;
    let rest = &s[word.len()..];
    let trimmed = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let ends = trimmed.len() < rest.len() || rest.starts_with(['`', '"']);
    (head.eq_ignore_ascii_case(word) && ends).then_some(trimmed)
}

/// The definer `SHOW CREATE` wrote at the head of the statement of `o`, a
/// `kind` (a view, routine, trigger or event): its user and, unless it is
/// a role, its host.
pub(super) fn definer_of(kind: Kind, o: &Object) -> Option<(String, Option<String>)> {
    let ansi = matches!(kind, Kind::Routine | Kind::Trigger | Kind::Event) && ansi_quotes(o);
    let mut rest = o.sql.strip_prefix("CREATE ")?;
    loop {
        if let Some(r) = rest.strip_prefix("ALGORITHM=") {
            rest = after_word(r)?;
        } else if let Some(r) = rest.strip_prefix("SQL SECURITY ") {
            rest = after_word(r)?;
        } else {
            let (user, after) = identifier(rest.strip_prefix("DEFINER=")?, ansi)?;
            let host = after
                .strip_prefix('@')
                .and_then(|h| identifier(h, ansi))
                .map(|(h, _)| h);
            return Some((user, host));
        }
    }
}

/// The first object of `schema` (of database `db`) whose statement is not
/// the `CREATE` of its kind and name: its kind and name.
pub(super) fn first_foreign(db: &str, schema: &DatabaseSchema) -> Option<(Kind, String)> {
    if !creates(&schema.create_database, Kind::Database, db, db, false) {
        return Some((Kind::Database, db.to_string()));
    }
    let groups: [(Kind, &Vec<Object>); 6] = [
        (Kind::Sequence, &schema.sequences),
        (Kind::Table, &schema.tables),
        (Kind::View, &schema.views),
        (Kind::Routine, &schema.routines),
        (Kind::Trigger, &schema.triggers),
        (Kind::Event, &schema.events),
    ];
    groups.into_iter().find_map(|(kind, objects)| {
        objects
            .iter()
            .find(|o| {
                // Only stored programs are created under a mode of their
                // own; tables and views under the restore's.
                let own = matches!(kind, Kind::Routine | Kind::Trigger | Kind::Event);
                !creates(&o.sql, kind, db, &o.name, own && ansi_quotes(o))
            })
            .map(|o| (kind, o.name.clone()))
    })
}

/// Why a restore would refuse `schema` (a statement that does not read as
/// the `CREATE` of its object, settings it would not set), for the backup
/// to fail with: a backup called complete that no restore takes is worse
/// than one that fails naming the object.
pub(super) fn restore_refusal(schema: &DatabaseSchema) -> Option<String> {
    let db = &schema.database;
    if let Some((kind, name)) = first_foreign(db, schema) {
        return Some(format!(
            "the server's SHOW CREATE of {} {} does not read as the {} of it, so a restore would refuse the backup: please report it with that statement",
            kind.noun(),
            qualified_name(db, None, &name),
            kind.statement()
        ));
    }
    first_unsettable(schema).map(|(kind, name, why)| {
        format!(
            "{} {}: {why}, so a restore would refuse the backup",
            kind.noun(),
            qualified_name(db, None, &name)
        )
    })
}

/// The `SET SESSION …` that puts back what a routine, trigger or event was
/// created under (its `sql_mode`, an event's time zone and, with `names`,
/// its `character_set_client` and `collation_connection`), or `None` when
/// the schema file gives none (a backup from before they were kept). All
/// come from the repository: a mode must be a list of SQL mode names
/// (capitals, digits, `_`), a time zone a name or an offset (letters,
/// digits, `_ / + - :`), a character set or collation a name (small
/// letters, digits, `_`); anything else is refused, with the reason.
///
/// `names` only where the statement then goes through a variable
/// (MariaDB's `EXECUTE IMMEDIATE`), which the server converts into the
/// client character set: sent as it is, a statement's bytes would be read
/// in a character set they are not in.
pub(super) fn creation_settings(o: &Object, names: bool) -> Result<Option<String>, String> {
    // At most this much of a refused value is shown.
    let shown = |v: &str| format!("{:?}", v.chars().take(40).collect::<String>());
    let mut set = Vec::new();
    if let Some(mode) = &o.sql_mode {
        let name = |w: &str| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        };
        if mode.len() > 1000 || !(mode.is_empty() || mode.split(',').all(name)) {
            return Err(format!(
                "its sql_mode {} is not a list of SQL mode names",
                shown(mode)
            ));
        }
        set.push(format!("SESSION sql_mode = '{mode}'"));
    }
    if let Some(zone) = &o.time_zone {
        let fits = |b: u8| b.is_ascii_alphanumeric() || b"_/+-:".contains(&b);
        if zone.is_empty() || zone.len() > 64 || !zone.bytes().all(fits) {
            return Err(format!(
                "its time zone {} is not a time zone name or offset",
                shown(zone)
            ));
        }
        set.push(format!("SESSION time_zone = '{zone}'"));
    }
    let named = [
        ("character_set_client", &o.character_set_client),
        ("collation_connection", &o.collation_connection),
    ];
    for (variable, value) in named {
        let Some(value) = value.as_deref().filter(|_| names) else {
            continue;
        };
        let fits = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        if value.is_empty() || value.len() > 64 || !value.bytes().all(fits) {
            return Err(format!(
                "its {variable} {} is not a character set or collation name",
                shown(value)
            ));
        }
        set.push(format!("SESSION {variable} = '{value}'"));
    }
    Ok((!set.is_empty()).then(|| format!("SET {}", set.join(", "))))
}

/// The first routine, trigger or event of `schema` whose settings
/// [`creation_settings`] refuses: its kind, name and the reason.
pub(super) fn first_unsettable(schema: &DatabaseSchema) -> Option<(Kind, String, String)> {
    let groups: [(Kind, &Vec<Object>); 3] = [
        (Kind::Routine, &schema.routines),
        (Kind::Trigger, &schema.triggers),
        (Kind::Event, &schema.events),
    ];
    groups.into_iter().find_map(|(kind, objects)| {
        objects.iter().find_map(|o| {
            creation_settings(o, true)
                .err()
                .map(|why| (kind, o.name.clone(), why))
        })
    })
}

/// `sql` as one statement the server runs only if it is one.
pub(super) fn one_statement(sql: &str) -> String {
    format!("EXECUTE IMMEDIATE {}", quote_literal(sql))
}

/// After a word (letters, digits, `_`) and the space that ends it.
fn after_word(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[end..].strip_prefix(' ')).flatten()
}

/// After `user@host` (or a role, or `CURRENT_USER`) and its space.
fn definer(s: &str, ansi: bool) -> Option<&str> {
    let (_, rest) = identifier(s, ansi)?;
    let rest = match rest.strip_prefix('@') {
        Some(host) => identifier(host, ansi)?.1,
        None => rest,
    };
    rest.strip_prefix(' ')
}

/// Whether the SQL mode `o` was created under makes double quotes quote
/// names: `ANSI_QUOTES`, alone or in a combination mode that holds it.
fn ansi_quotes(o: &Object) -> bool {
    const HOLDING: [&str; 7] = [
        "ANSI_QUOTES",
        "ANSI",
        "DB2",
        "MAXDB",
        "MSSQL",
        "ORACLE",
        "POSTGRESQL",
    ];
    o.sql_mode
        .as_deref()
        .is_some_and(|m| m.split(',').any(|w| HOLDING.contains(&w)))
}

/// An identifier at the start of `s`, in backquotes (each inner one
/// doubled), with `ansi` in double quotes (likewise), or bare (letters,
/// digits, `_`, `$`): its value and the rest.
fn identifier(s: &str, ansi: bool) -> Option<(String, &str)> {
    let quote = match s.chars().next() {
        Some('`') => Some('`'),
        Some('"') if ansi => Some('"'),
        _ => None,
    };
    if let Some(q) = quote {
        let inner = &s[1..];
        let mut value = String::new();
        let mut at = 0;
        loop {
            let close = at + inner[at..].find(q)?;
            value.push_str(&inner[at..close]);
            if inner[close + 1..].starts_with(q) {
                value.push(q);
                at = close + 2;
            } else {
                return (!value.is_empty()).then(|| (value, &inner[close + 1..]));
            }
        }
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    (end > 0).then(|| (s[..end].to_string(), &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(mode: Option<&str>, zone: Option<&str>) -> Object {
        Object {
            name: "p".into(),
            sql: "CREATE PROCEDURE `p`() SELECT 1".into(),
            sql_mode: mode.map(str::to_string),
            time_zone: zone.map(str::to_string),
            ..Object::default()
        }
    }

    /// What `SHOW CREATE` gives back becomes one `SET`; anything that is
    /// not a mode list or a time zone is refused before it reaches SQL.
    #[test]
    fn creation_settings_take_modes_zones_and_names_and_nothing_else() {
        assert_eq!(creation_settings(&stored(None, None), true), Ok(None));
        assert_eq!(
            creation_settings(&stored(Some(""), None), true),
            Ok(Some("SET SESSION sql_mode = ''".into()))
        );
        assert_eq!(
            creation_settings(&stored(
                Some("PIPES_AS_CONCAT,ANSI_QUOTES,NO_BACKSLASH_ESCAPES"),
                Some("+05:00")
            ), true),
            Ok(Some(
                "SET SESSION sql_mode = 'PIPES_AS_CONCAT,ANSI_QUOTES,NO_BACKSLASH_ESCAPES', SESSION time_zone = '+05:00'"
                    .into()
            ))
        );
        assert!(creation_settings(&stored(None, Some("Europe/Paris")), true).is_ok());
        assert!(creation_settings(&stored(None, Some("SYSTEM")), true).is_ok());
        for mode in [
            "ANSI', sql_log_bin = 1, sql_mode = '",
            "ANSI,",
            "ansi",
            "ANSI QUOTES",
            "ANSI\\",
            &"A".repeat(1001),
        ] {
            let refused = creation_settings(&stored(Some(mode), None), true);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.contains("not a list of SQL mode names")),
                "{mode}: {refused:?}"
            );
        }
        for zone in ["", "+05:00'; DROP DATABASE x; --", "a b", &"Z".repeat(65)] {
            let refused = creation_settings(&stored(None, Some(zone)), true);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.contains("not a time zone")),
                "{zone}: {refused:?}"
            );
        }
        // A character set and a collation, only where the statement goes
        // through a variable.
        let named = Object {
            character_set_client: Some("latin1".into()),
            collation_connection: Some("utf8mb4_bin".into()),
            ..stored(Some("ANSI"), None)
        };
        assert_eq!(
            creation_settings(&named, true),
            Ok(Some(
                "SET SESSION sql_mode = 'ANSI', SESSION character_set_client = 'latin1', SESSION collation_connection = 'utf8mb4_bin'"
                    .into()
            ))
        );
        assert_eq!(
            creation_settings(&named, false),
            Ok(Some("SET SESSION sql_mode = 'ANSI'".into()))
        );
        for name in [
            "",
            "utf8mb4'; DROP DATABASE x; --",
            "Latin1",
            "a b",
            &"z".repeat(65),
        ] {
            let refused = creation_settings(
                &Object {
                    collation_connection: Some(name.to_string()),
                    ..stored(None, None)
                },
                true,
            );
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.contains("its collation_connection")
                        && e.contains("not a character set or collation name")),
                "{name}: {refused:?}"
            );
        }
        let mut schema = DatabaseSchema::default();
        schema.events.push(Object {
            name: "tick".into(),
            ..stored(None, Some("x'y"))
        });
        assert_eq!(
            first_unsettable(&schema).map(|(k, n, _)| (k, n)),
            Some((Kind::Event, "tick".into()))
        );
    }

    /// As MariaDB 10.11's `SHOW CREATE` writes them.
    #[test]
    fn what_show_create_writes_passes() {
        for (sql, kind, name) in [
            (
                "CREATE DATABASE `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 */",
                Kind::Database,
                "shop",
            ),
            (
                "CREATE ALGORITHM=UNDEFINED DEFINER=`shardcut`@`127.0.0.1` SQL SECURITY DEFINER VIEW `shop`.`v` AS select 1",
                Kind::View,
                "v",
            ),
            (
                "CREATE TABLE `t` (\n  `id` int(11) NOT NULL\n) ENGINE=InnoDB",
                Kind::Table,
                "t",
            ),
            (
                "CREATE SEQUENCE `s` start with 100 minvalue 1 maxvalue 9223372036854775806 increment by 5 cache 10 nocycle ENGINE=InnoDB",
                Kind::Sequence,
                "s",
            ),
            (
                "CREATE TABLE `par.ent` (\n  `id` int(11) NOT NULL\n)",
                Kind::Table,
                "par.ent",
            ),
            (
                "CREATE ALGORITHM=UNDEFINED DEFINER=`shardcut`@`127.0.0.1` SQL SECURITY DEFINER VIEW `v` AS select 1",
                Kind::View,
                "v",
            ),
            (
                "CREATE DEFINER=`shardcut`@`127.0.0.1` PROCEDURE `p`()\nBEGIN SELECT 1; SELECT 2; END",
                Kind::Routine,
                "p",
            ),
            (
                "CREATE DEFINER=`root`@`localhost` FUNCTION `f`(x INT) RETURNS int(11)\nRETURN x*2",
                Kind::Routine,
                "f",
            ),
            (
                "CREATE DEFINER=`shardcut`@`127.0.0.1` AGGREGATE FUNCTION `agg_sum`(x int) RETURNS int(11)\nbegin end",
                Kind::Routine,
                "agg_sum",
            ),
            (
                "CREATE DEFINER=`shardcut`@`127.0.0.1` TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.id = NEW.id",
                Kind::Trigger,
                "tr",
            ),
            (
                "CREATE DEFINER=`a role` EVENT `e` ON SCHEDULE EVERY 1 DAY DO SELECT 1",
                Kind::Event,
                "e",
            ),
            // A trigger's text after the definer is as it was typed.
            (
                "CREATE DEFINER=`shardcut`@`127.0.0.1` trigger tr before insert on a for each row set new.v = upper(new.v)",
                Kind::Trigger,
                "tr",
            ),
            (
                "CREATE DEFINER=`shardcut`@`127.0.0.1` trigger if not exists tr after insert on a for each row set @x=1",
                Kind::Trigger,
                "tr",
            ),
            (
                "CREATE DEFINER=`shardcut`@`127.0.0.1` Trigger\n  `shop`.tr\tafter update on a for each row set @y=1",
                Kind::Trigger,
                "tr",
            ),
            (
                "CREATE DEFINER=`shardcut`@`127.0.0.1` TRIGGER  IF  NOT\tEXISTS `tr`\nBEFORE DELETE ON a FOR EACH ROW SET @z=1",
                Kind::Trigger,
                "tr",
            ),
            (
                "CREATE DEFINER=`shardcut`@`127.0.0.1` trigger`tr` before insert on a for each row set @x=1",
                Kind::Trigger,
                "tr",
            ),
        ] {
            assert!(creates(sql, kind, "shop", name, false), "{sql}");
        }
        // Under ANSI_QUOTES, as MariaDB 10.11 shows a function created so;
        // read without it, the quoted names are strings.
        let ansi = "CREATE DEFINER=\"shardcut\"@\"127.0.0.1\" FUNCTION \"j\"\"k\"() RETURNS varchar(16)\nRETURN 'a' || 'b'";
        assert!(creates(ansi, Kind::Routine, "shop", "j\"k", true));
        assert!(!creates(ansi, Kind::Routine, "shop", "j\"k", false));
        let mut schema = DatabaseSchema {
            create_database: "CREATE DATABASE `shop`".into(),
            ..DatabaseSchema::default()
        };
        schema.routines.push(Object {
            name: "j\"k".into(),
            sql: ansi.into(),
            sql_mode: Some("PIPES_AS_CONCAT,ANSI_QUOTES".into()),
            ..Object::default()
        });
        assert_eq!(first_foreign("shop", &schema), None);
        schema.routines[0].sql_mode = Some("PIPES_AS_CONCAT".into());
        assert_eq!(
            first_foreign("shop", &schema),
            Some((Kind::Routine, "j\"k".into()))
        );
    }

    #[test]
    fn definers_are_read_from_the_head_of_the_statement() {
        let object = |sql: &str| Object {
            name: "x".into(),
            sql: sql.into(),
            ..Object::default()
        };
        let view = object("CREATE ALGORITHM=UNDEFINED DEFINER=`app``def`@`%` SQL SECURITY DEFINER VIEW `v` AS select 1");
        assert_eq!(
            definer_of(Kind::View, &view),
            Some(("app`def".into(), Some("%".into())))
        );
        let role = object("CREATE DEFINER=`a role` EVENT `e` ON SCHEDULE EVERY 1 DAY DO SELECT 1");
        assert_eq!(
            definer_of(Kind::Event, &role),
            Some(("a role".into(), None))
        );
        let none = object("CREATE TABLE `t` (a int)");
        assert_eq!(definer_of(Kind::Table, &none), None);
    }

    /// A schema its own restore would refuse fails the backup, naming the
    /// object; one it takes passes.
    #[test]
    fn a_schema_the_restore_would_refuse_fails_the_backup_by_name() {
        let mut schema = DatabaseSchema {
            database: "shop".into(),
            create_database: "CREATE DATABASE `shop`".into(),
            ..DatabaseSchema::default()
        };
        schema.triggers.push(Object {
            name: "tr".into(),
            sql: "CREATE DEFINER=`a`@`b` trigger tr before insert on t for each row set @x = 1"
                .into(),
            sql_mode: Some(String::new()),
            ..Object::default()
        });
        assert_eq!(restore_refusal(&schema), None);
        schema.triggers[0].sql = "CREATE DEFINER=`a`@`b` TRIGGER other BEFORE INSERT ON t".into();
        assert_eq!(
            restore_refusal(&schema).unwrap(),
            "the server's SHOW CREATE of trigger shop.tr does not read as the CREATE TRIGGER of it, so a restore would refuse the backup: please report it with that statement"
        );
        schema.triggers[0].sql = "CREATE TRIGGER tr BEFORE INSERT ON t".into();
        schema.triggers[0].sql_mode = Some("ANSI'".into());
        assert_eq!(
            restore_refusal(&schema).unwrap(),
            "trigger shop.tr: its sql_mode \"ANSI'\" is not a list of SQL mode names, so a restore would refuse the backup"
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for (sql, kind, name) in [
            ("DROP DATABASE billing", Kind::Database, "shop"),
            ("CREATE VIEW `other`.`v` AS select 1", Kind::View, "v"),
            ("CREATE VIEW `shop`.`v`.`w` AS select 1", Kind::View, "v"),
            ("CREATE DATABASE `shop`.`shop`", Kind::Database, "shop"),
            ("CREATE DATABASE `billing`", Kind::Database, "shop"),
            ("CREATE DATABASE `shopx`", Kind::Database, "shop"),
            ("CREATE OR REPLACE TABLE `t` (a int)", Kind::Table, "t"),
            ("CREATE TABLE `u` (a int)", Kind::Table, "t"),
            ("CREATE TABLE `t`", Kind::View, "t"),
            ("CREATE VIEW `t` AS select 1", Kind::Table, "t"),
            ("CREATE SEQUENCE `t` start with 1", Kind::Table, "t"),
            ("CREATE TABLE `s` (a int)", Kind::Sequence, "s"),
            ("CREATE SEQUENCE `other` start with 1", Kind::Sequence, "s"),
            ("CREATE PROCEDURE `t`() SELECT 1", Kind::Trigger, "t"),
            ("create table `t` (a int)", Kind::Table, "t"),
            ("CREATE TABLE `t;DROP` (a int)", Kind::Table, "t"),
            ("CREATE DEFINER=x@ TABLE `t` (a int)", Kind::Table, "t"),
            ("CREATE TABLE `` (a int)", Kind::Table, ""),
            ("CREATE TABLE `t", Kind::Table, "t"),
            (" CREATE TABLE `t` (a int)", Kind::Table, "t"),
            ("CREATE TRIGGERtr BEFORE INSERT ON a", Kind::Trigger, "tr"),
            ("CREATE TRIGGER IF EXISTS tr BEFORE", Kind::Trigger, "tr"),
            ("CREATE TRIGGER IF NOT EXISTStr BEFORE", Kind::Trigger, "tr"),
            ("CREATE TRIGGER tr2 BEFORE INSERT ON a", Kind::Trigger, "tr"),
            ("CREATE TRIGGER tr;DROP DATABASE x", Kind::Trigger, "tr"),
            ("CREATE trigger `other`.tr BEFORE", Kind::Trigger, "tr"),
            ("CREATE table `t` (a int)", Kind::Table, "t"),
        ] {
            assert!(!creates(sql, kind, "shop", name, false), "{sql}");
        }
    }

    #[test]
    fn a_statement_goes_to_the_server_as_one_literal() {
        assert_eq!(
            one_statement("CREATE TABLE `t` (a char(1) DEFAULT 'x\\')"),
            "EXECUTE IMMEDIATE 'CREATE TABLE `t` (a char(1) DEFAULT ''x\\\\'')'"
        );
    }
}
