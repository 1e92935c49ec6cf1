//! The statements a MariaDB/MySQL replay reads from captured binlog
//! segments (query events), and where each lands.
//!
//! A binlog is the whole server's: it logs the changes of every database,
//! and statements on the server's accounts and settings, while a backup
//! holds the databases and tables its shard selected
//! ([`crate::manifest::Selection`]). A replay applies what lands there and
//! leaves out the rest; a statement that lands on both sides (a table
//! renamed into another database) cannot be applied in part, and stops the
//! replay by name. Segments also come from the repository, untrusted until
//! checked: statements of kinds a replay has no business running
//! (accounts, plugins, replication, server settings, files, table
//! maintenance) never run, whatever database they name, and a statement of
//! a kind this module does not know is refused, never run.
//!
//! Statements placed by the default database alone, as MariaDB's own
//! `replicate-do-db` places them: the data changes a session logs as text
//! (`INSERT`, `UPDATE`, …), which a server logging in row format, as
//! capture requires, does not write.

use crate::manifest::Selection;

use super::sql::SYSTEM_DATABASES;

/// What a replay does with a logged statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Placement {
    /// Runs on the target.
    Apply,
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

/// Where statement `sql`, logged with default database `db` (empty: none),
/// lands for a replay of what `scope` selects.
pub(super) fn place(sql: &str, db: &str, scope: &Selection) -> Placement {
    let mut t = Lexer::new(sql).peekable();
    let Some(Token::Word(first)) = t.next() else {
        return Placement::Refuse("a statement that does not begin with a keyword".into());
    };
    let first = first.to_ascii_uppercase();
    match first.as_str() {
        // Transaction control, inside a logged transaction.
        "SAVEPOINT" | "RELEASE" | "ROLLBACK" | "XA" => Placement::Apply,
        // Changes logged as text: by the default database.
        "INSERT" | "REPLACE" | "UPDATE" | "DELETE" => {
            if !db.is_empty() && scope.database(db, SYSTEM_DATABASES) {
                Placement::Apply
            } else {
                Placement::Outside
            }
        }
        "CREATE" | "ALTER" | "DROP" | "RENAME" | "TRUNCATE" => ddl(&first, t, sql, db, scope),
        // SET STATEMENT … FOR statement: what it wraps is not read here.
        "SET" if matches!(t.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case("STATEMENT")) => {
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

/// Statement `sql` as an error may show it: its text before the first
/// parenthesis or quote (a table's `CONNECTION` string, a value), on one
/// line, shortened.
pub(super) fn shown(sql: &str) -> String {
    let end = sql.find(['(', '\'', '"']).unwrap_or(sql.len());
    crate::replay::excerpt(sql[..end].trim_end())
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
fn ddl(verb: &str, mut t: Tokens<'_>, sql: &str, db: &str, scope: &Selection) -> Placement {
    let unreadable = || Placement::Refuse(format!("a {verb} statement replay cannot read"));
    if modifiers(&mut t).is_none() {
        return unreadable();
    }
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
                Some(Token::Word(w) | Token::Quoted(w)) => w.clone(),
                None if verb == "ALTER" => db.to_string(),
                _ => return unreadable(),
            };
            names.push(Named::Database(named));
        }
        "FUNCTION"
            if verb == "CREATE"
                && Lexer::new(sql)
                    .any(|w| matches!(w, Token::Word(s) if s.eq_ignore_ascii_case("SONAME"))) =>
        {
            // A loadable function: a library of the server's.
            return Placement::Server("CREATE FUNCTION … SONAME".into());
        }
        "PROCEDURE" | "FUNCTION" | "EVENT" | "PACKAGE" => {
            if t.peek()
                .is_some_and(|w| matches!(w, Token::Word(b) if b.eq_ignore_ascii_case("BODY")))
            {
                t.next();
            }
            if_exists(&mut t);
            match name(&mut t, db) {
                Some((d, _)) => names.push(Named::Database(d)),
                None => return unreadable(),
            }
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
            if !t.any(|w| matches!(&w, Token::Word(o) if o.eq_ignore_ascii_case("ON"))) {
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
                        if matches!(&w, Token::Word(r) if r.eq_ignore_ascii_case("TABLE")) {
                            let Some((d, n)) = name(&mut t, db) else {
                                return unreadable();
                            };
                            names.push(Named::Table(d, n));
                            continue;
                        }
                        if !matches!(&w, Token::Word(r) if r.eq_ignore_ascii_case("RENAME")) {
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
    let inside = |n: &Named| match n {
        Named::Table(d, n) => scope.table(d, None, n, SYSTEM_DATABASES),
        Named::Database(d) => scope.database(d, SYSTEM_DATABASES),
    };
    let held = names.iter().filter(|n| inside(n)).count();
    if held == names.len() {
        Placement::Apply
    } else if held == 0 {
        Placement::Outside
    } else {
        Placement::Refuse(
            "it names both what the base backup holds and what it does not, and cannot be applied in part"
                .into(),
        )
    }
}

/// Skips `IF EXISTS` or `IF NOT EXISTS`.
fn if_exists(t: &mut Tokens<'_>) {
    if matches!(t.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case("IF")) {
        t.next();
        if matches!(t.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case("NOT")) {
            t.next();
        }
        t.next();
    }
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
    matches!(t?, Token::Word(w) if w.eq_ignore_ascii_case(expected)).then_some(())
}

fn punct(t: Option<Token>, expected: char) -> Option<()> {
    (t? == Token::Punct(expected)).then_some(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word: a keyword or an unquoted name.
    Word(String),
    /// A name in backquotes, or in double quotes (a name where the
    /// session's `ANSI_QUOTES` says so, else a string: placement reads it
    /// only where a name stands).
    Quoted(String),
    /// A string in single quotes, or a number.
    Literal,
    Punct(char),
}

type Tokens<'a> = std::iter::Peekable<Lexer<'a>>;

/// The tokens of a statement, comments skipped. The text of a versioned
/// comment (`/*!50001 … */`, `/*M!100100 … */`) is read as the server
/// reads it: as part of the statement.
struct Lexer<'a> {
    rest: &'a str,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Self {
        Lexer { rest: sql }
    }

    /// Skips whitespace and comments.
    fn skip(&mut self) {
        loop {
            let s = self.rest.trim_start();
            if let Some(r) = s.strip_prefix("/*!").or_else(|| s.strip_prefix("/*M!")) {
                self.rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
            } else if let Some(r) = s.strip_prefix("/*") {
                self.rest = r.find("*/").map_or("", |e| &r[e + 2..]);
            } else if let Some(r) = s.strip_prefix("*/") {
                // The end of a versioned comment.
                self.rest = r;
            } else if s.starts_with('#')
                || s.strip_prefix("--")
                    .is_some_and(|r| r.is_empty() || r.starts_with(char::is_whitespace))
            {
                self.rest = s.find('\n').map_or("", |e| &s[e + 1..]);
            } else {
                self.rest = s;
                return;
            }
        }
    }
}

/// The text of a quoted token opened by `quote`, in `s` after the opening
/// quote: its value (a doubled quote is one; a backslash escapes the next
/// character except in backquotes) and the rest.
fn quoted(s: &str, quote: char) -> (String, &str) {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' && quote != '`' {
            if let Some((_, e)) = chars.next() {
                value.push(e);
            }
        } else if c == quote {
            if s[i + 1..].starts_with(quote) {
                value.push(quote);
                chars.next();
            } else {
                return (value, &s[i + 1..]);
            }
        } else {
            value.push(c);
        }
    }
    (value, "")
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        self.skip();
        let c = self.rest.chars().next()?;
        let after = &self.rest[c.len_utf8()..];
        let token = match c {
            '`' | '"' | '\'' => {
                let (value, rest) = quoted(after, c);
                self.rest = rest;
                return Some(match c {
                    '\'' => Token::Literal,
                    _ => Token::Quoted(value),
                });
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let end = self
                    .rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                    .unwrap_or(self.rest.len());
                let w = &self.rest[..end];
                self.rest = &self.rest[end..];
                return Some(if w.bytes().all(|b| b.is_ascii_digit()) {
                    Token::Literal
                } else {
                    Token::Word(w.to_string())
                });
            }
            c => Token::Punct(c),
        };
        self.rest = after;
        Some(token)
    }
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
        place(sql, db, &scope())
    }

    #[test]
    fn what_the_base_holds_applies() {
        for (sql, db) in [
            ("CREATE TABLE t (id INT PRIMARY KEY)", "bank"),
            ("create or replace table `bank`.`t` (id int)", ""),
            ("CREATE TABLE IF NOT EXISTS t LIKE side.t", "bank"),
            ("ALTER TABLE ledger ADD COLUMN note VARCHAR(20) DEFAULT 'x'", "bank"),
            ("ALTER ONLINE TABLE bank.ledger RENAME COLUMN a TO b", "side"),
            ("ALTER TABLE ledger RENAME TO ledger2", "bank"),
            ("DROP TABLE `t1`,`t2` /* generated by server */", "bank"),
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
            ("CREATE DATABASE `odd.name`", ""),
            ("DROP DATABASE IF EXISTS bank", ""),
            ("ALTER DATABASE CHARACTER SET utf8mb4", "bank"),
            ("/*!40000 ALTER TABLE `ledger` DISABLE KEYS */", "bank"),
            ("/* a client's comment */ -- and another\nDROP VIEW v", "bank"),
            ("INSERT INTO t VALUES (1)", "bank"),
            ("SAVEPOINT a", "bank"),
        ] {
            assert_eq!(at(sql, db), Placement::Apply, "{sql} (in {db:?})");
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
            (
                "CREATE TRIGGER trg AFTER INSERT ON audit FOR EACH ROW SET @a = 1",
                "bank",
            ),
            ("INSERT INTO t VALUES (1)", "side"),
            ("UPDATE t SET v = 1", ""),
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
    fn every_database_but_the_servers_own_when_none_is_listed() {
        let all = Selection::default();
        assert_eq!(
            place("CREATE DATABASE anything", "", &all),
            Placement::Apply
        );
        assert_eq!(
            place("CREATE TABLE t (i INT)", "mysql", &all),
            Placement::Outside
        );
        assert_eq!(place("DROP TABLE sys.x", "bank", &all), Placement::Outside);
    }

    #[test]
    fn the_lexer_reads_quotes_and_comments_as_the_server_does() {
        let words: Vec<Token> = Lexer::new(
            "/*M!100100 DROP */ TABLE `a``b`.\"c\"\"d\" # gone\n, 'x\\'y' -- gone\n, 12",
        )
        .collect();
        assert_eq!(
            words,
            [
                Token::Word("DROP".into()),
                Token::Word("TABLE".into()),
                Token::Quoted("a`b".into()),
                Token::Punct('.'),
                Token::Quoted("c\"d".into()),
                Token::Punct(','),
                Token::Literal,
                Token::Punct(','),
                Token::Literal,
            ]
        );
        // Unclosed quotes and comments end the statement.
        assert_eq!(Lexer::new("`abc").count(), 1);
        assert_eq!(Lexer::new("/* abc").count(), 0);
    }
}
