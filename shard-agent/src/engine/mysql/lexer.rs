//! The tokens of a MariaDB/MySQL statement, as far as shardcut reads
//! statements that come from a backup: their leading keywords, the names
//! they act on and the options that reach beyond the server's own tables
//! (see [`reaches_outside`]). Strings are never read as words.

/// One token of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token {
    /// A bare word: a keyword or an unquoted name.
    Word(String),
    /// A name in backquotes, or in double quotes (a name where the
    /// session's `ANSI_QUOTES` says so, else a string: it is read only
    /// where a name stands).
    Quoted(String),
    /// A string in single quotes (its value), or a number (its digits).
    Literal(String),
    Punct(char),
}

impl Token {
    /// Whether this is the word `keyword` (in any case).
    pub(super) fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    /// The name this token writes, bare or quoted.
    fn name(&self) -> Option<&str> {
        match self {
            Token::Word(n) | Token::Quoted(n) => Some(n),
            _ => None,
        }
    }
}

/// The name at `tokens[i]`, if there is one.
fn name_at(tokens: &[Token], i: usize) -> Option<String> {
    tokens.get(i).and_then(Token::name).map(str::to_string)
}

/// The server's whitespace: ASCII only (a no-break space is a character
/// of a name to it).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// A character of a bare word, as the server reads them: ASCII letters,
/// digits, `_`, `$`, and every character past ASCII.
fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

/// Whether `s` starts a `--` comment: two dashes, then whitespace, a
/// control character or the end.
fn dash_comment(s: &str) -> bool {
    s.strip_prefix("--").is_some_and(|r| {
        r.chars()
            .next()
            .is_none_or(|c| is_space(c) || c.is_ascii_control())
    })
}

/// How the server reads quotes under a session's SQL mode: whether a
/// backslash escapes the next character in a string, and whether double
/// quotes enclose a name (`ANSI_QUOTES`), where no backslash escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Quoting {
    backslash_escapes: bool,
    ansi_quotes: bool,
}

impl Quoting {
    /// The server's default: backslashes escape, double quotes enclose a
    /// string. Also how shardcut's own sessions read what they send.
    pub(super) const DEFAULT: Quoting = Quoting {
        backslash_escapes: true,
        ansi_quotes: false,
    };

    /// How a session with SQL mode `mode` (the server's bits, as a binlog
    /// records them) reads quotes: `NO_BACKSLASH_ESCAPES` is bit 20;
    /// `ANSI_QUOTES` is bit 2, also turned on by the combination modes
    /// `POSTGRESQL`, `ORACLE`, `MSSQL`, `DB2`, `MAXDB` (bits 8 to 12) and
    /// `ANSI` (bit 18), which the server expands when the mode is set.
    pub(super) fn of_sql_mode(mode: u64) -> Quoting {
        const ANSI_QUOTES: u64 = 1 << 2 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12 | 1 << 18;
        Quoting {
            backslash_escapes: mode & 1 << 20 == 0,
            ansi_quotes: mode & ANSI_QUOTES != 0,
        }
    }

    /// Whether a backslash escapes the next character inside quotes
    /// opened by `quote`: never in a name.
    fn escapes(self, quote: char) -> bool {
        let string = quote == '\'' || quote == '"' && !self.ansi_quotes;
        string && self.backslash_escapes
    }
}

/// The tokens of a statement, comments skipped; the text of a versioned
/// comment (`/*!50001 … */`, `/*M!100100 … */`) is read as part of the
/// statement.
pub(super) struct Lexer<'a> {
    rest: &'a str,
    /// Inside a versioned comment.
    inside: bool,
    quoting: Quoting,
}

impl<'a> Lexer<'a> {
    /// The tokens of `sql` as the server reads it by default.
    #[cfg(test)]
    fn new(sql: &'a str) -> Self {
        Lexer::reading(sql, Quoting::DEFAULT)
    }

    /// The tokens of `sql` as a session reading quotes by `quoting` does.
    pub(super) fn reading(sql: &'a str, quoting: Quoting) -> Self {
        Lexer {
            rest: sql,
            inside: false,
            quoting,
        }
    }

    /// Skips whitespace and comments.
    fn skip(&mut self) {
        loop {
            let s = self.rest.trim_start_matches(is_space);
            if let Some(r) = s.strip_prefix("/*!").or_else(|| s.strip_prefix("/*M!")) {
                self.rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
                self.inside = true;
            } else if let Some(r) = s.strip_prefix("/*") {
                self.rest = r.find("*/").map_or("", |e| &r[e + 2..]);
            } else if let Some(r) = s.strip_prefix("*/").filter(|_| self.inside) {
                self.rest = r;
                self.inside = false;
            } else if s.starts_with('#') || dash_comment(s) {
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
/// character where `quoting` says so), the rest, and whether it was
/// closed.
fn quoted(s: &str, quote: char, quoting: Quoting) -> (String, &str, bool) {
    let escapes = quoting.escapes(quote);
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' && escapes {
            if let Some((_, e)) = chars.next() {
                value.push(e);
            }
        } else if c == quote {
            if s[i + 1..].starts_with(quote) {
                value.push(quote);
                chars.next();
            } else {
                return (value, &s[i + 1..], true);
            }
        } else {
            value.push(c);
        }
    }
    (value, "", false)
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        self.skip();
        let c = self.rest.chars().next()?;
        let after = &self.rest[c.len_utf8()..];
        let token = match c {
            '`' | '"' | '\'' => {
                let (value, rest, _) = quoted(after, c, self.quoting);
                self.rest = rest;
                return Some(match c {
                    '\'' => Token::Literal(value),
                    _ => Token::Quoted(value),
                });
            }
            c if is_word(c) => {
                let end = self.rest.find(|c| !is_word(c)).unwrap_or(self.rest.len());
                let w = &self.rest[..end];
                self.rest = &self.rest[end..];
                return Some(if w.bytes().all(|b| b.is_ascii_digit()) {
                    Token::Literal(w.to_string())
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

/// Statement `sql` as a replay sends it, so that the server reads exactly
/// what was placed: the text of versioned comments (`/*!50001 … */`,
/// `/*M!100100 … */`) in place without their marks (the server would run
/// or skip each by its own version), other comments as a space, quotes
/// read by `quoting`. Refused: a control character outside quotes, a
/// comment inside a versioned one, a quote or a comment left open.
pub(super) fn as_sent(sql: &str, quoting: Quoting) -> Result<String, &'static str> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    let mut inside = false;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest
            .strip_prefix("/*!")
            .or_else(|| rest.strip_prefix("/*M!"))
        {
            if inside {
                return Err("a versioned comment inside another");
            }
            rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
            inside = true;
            out.push(' ');
        } else if let Some(r) = rest.strip_prefix("*/").filter(|_| inside) {
            rest = r;
            inside = false;
            out.push(' ');
        } else if let Some(r) = rest.strip_prefix("/*") {
            if inside {
                return Err("a comment inside a versioned comment");
            }
            let end = r.find("*/").ok_or("a comment left open")?;
            rest = &r[end + 2..];
            out.push(' ');
        } else if c == '#' || dash_comment(rest) {
            rest = rest.find('\n').map_or("", |e| &rest[e..]);
            out.push(' ');
        } else if matches!(c, '`' | '"' | '\'') {
            let (_, after, closed) = quoted(&rest[1..], c, quoting);
            if !closed {
                return Err("a quote left open");
            }
            let taken = rest.len() - after.len();
            out.push_str(&rest[..taken]);
            rest = after;
        } else if c.is_ascii_control() && !is_space(c) {
            return Err("a control character outside quotes");
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if inside {
        return Err("a versioned comment left open");
    }
    Ok(out)
}

/// Engines a table of a backup may be created with: their data stays in
/// the server's own files.
const OWN_ENGINES: &[&str] = &[
    "InnoDB",
    "MyISAM",
    "Aria",
    "MEMORY",
    "HEAP",
    "CSV",
    "ARCHIVE",
    "BLACKHOLE",
    "SEQUENCE",
];

/// Engines whose tables are another server's, other tables, or files the
/// server reads: refused however they are named.
const OUTSIDE_ENGINES: &[&str] = &[
    "FEDERATED",
    "FEDERATEDX",
    "CONNECT",
    "SPIDER",
    "MERGE",
    "MRG_MyISAM",
    "S3",
    "CASSANDRA",
    "OQGRAPH",
    "SPHINX",
    "SPHINXSE",
    "COLUMNSTORE",
];

/// The first option of table statement `sql` (a `CREATE TABLE` or an
/// `ALTER TABLE`) that reaches beyond the server's own tables: an engine
/// that connects to another server, other tables or files
/// ([`OUTSIDE_ENGINES`], wherever it stands, `=` or not), a table's
/// `ENGINE = …` other than those keeping their data in the server's own
/// files ([`OWN_ENGINES`]; outside brackets, where table options stand: a
/// `CHECK (engine = …)` is a column's), a `CONNECTION` string, a `DATA
/// DIRECTORY` or `INDEX DIRECTORY`, a `FILE_NAME`. The backup reads
/// InnoDB tables only (preflight refuses the rest), so no statement of a
/// backup needs them, and run from a planted one they would send the
/// restored rows to another host, or read its files. Quotes are read by
/// `quoting`.
pub(super) fn reaches_outside(sql: &str, quoting: Quoting) -> Option<String> {
    let tokens: Vec<Token> = Lexer::reading(sql, quoting).collect();
    let named = |t: Option<&Token>| match t {
        Some(Token::Word(e) | Token::Quoted(e) | Token::Literal(e)) => Some(e.clone()),
        _ => None,
    };
    let one_of = |e: &str, list: &[&str]| list.iter().any(|o| e.eq_ignore_ascii_case(o));
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        let next = |k: usize| tokens.get(i + k);
        match t {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth = depth.saturating_sub(1),
            _ => {}
        }
        if t.is("ENGINE") {
            let (eq, engine) = match next(1) {
                Some(Token::Punct('=')) => (true, named(next(2))),
                other => (false, named(other)),
            };
            let refused = engine.filter(|e| {
                one_of(e, OUTSIDE_ENGINES) || (eq && depth == 0 && !one_of(e, OWN_ENGINES))
            });
            if let Some(e) = refused {
                return Some(format!("ENGINE={}", e.to_ascii_uppercase()));
            }
        } else if t.is("CONNECTION")
            && matches!(next(1), Some(Token::Punct('=') | Token::Literal(_)))
        {
            return Some("CONNECTION".into());
        } else if (t.is("DATA") || t.is("INDEX")) && next(1).is_some_and(|d| d.is("DIRECTORY")) {
            return Some(format!(
                "{} DIRECTORY",
                if t.is("DATA") { "DATA" } else { "INDEX" }
            ));
        } else if t.is("FILE_NAME") {
            return Some("FILE_NAME".into());
        }
    }
    None
}

/// The sequences expression `sql` (a column's `DEFAULT` as
/// `information_schema.COLUMNS` gives it, or a `CREATE TABLE` as `SHOW
/// CREATE TABLE` writes it) takes values from or sets: each
/// `NEXTVAL(…)`, `LASTVAL(…)` or `SETVAL(…)` call, as `(database, name)`,
/// an unqualified name in database `db`. The server writes them
/// qualified and in backquotes (`nextval(`bank`.`ids`)`); a column named
/// so is a name in backquotes, not the word.
pub(super) fn sequences_named(sql: &str, db: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    // Most statements call none: not read token by token.
    if !sql.to_ascii_lowercase().contains("val(") {
        return found;
    }
    let tokens: Vec<Token> = Lexer::reading(sql, Quoting::DEFAULT).collect();
    for (i, t) in tokens.iter().enumerate() {
        let call = ["NEXTVAL", "LASTVAL", "SETVAL"].iter().any(|f| t.is(f));
        if !call || tokens.get(i + 1) != Some(&Token::Punct('(')) {
            continue;
        }
        let Some(first) = name_at(&tokens, i + 2) else {
            continue;
        };
        let named = match (tokens.get(i + 3), name_at(&tokens, i + 4)) {
            (Some(Token::Punct('.')), Some(second)) => (first, second),
            _ => (db.to_string(), first),
        };
        if !found.contains(&named) {
            found.push(named);
        }
    }
    found
}

/// The qualified names `a`.`b` in `sql` (a view as `SHOW CREATE VIEW`
/// writes it, every table `db`.`table`, every column
/// `db`.`table`.`column`): each pair of names joined by a dot, as
/// `(a, b)`, the first two parts of a longer one included. An alias's
/// column (`t`.`c`) is listed too: the caller matches them against names
/// it knows (a view refused for a table left out when an alias named
/// like its database has a column named like the table is the price).
pub(super) fn qualified_names(sql: &str) -> Vec<(String, String)> {
    let tokens: Vec<Token> = Lexer::reading(sql, Quoting::DEFAULT).collect();
    let mut found = Vec::new();
    for i in 0..tokens.len() {
        let after_dot = i > 0 && tokens[i - 1] == Token::Punct('.');
        if after_dot || tokens.get(i + 1) != Some(&Token::Punct('.')) {
            continue;
        }
        if let (Some(a), Some(b)) = (name_at(&tokens, i), name_at(&tokens, i + 2)) {
            if !found.contains(&(a.clone(), b.clone())) {
                found.push((a, b));
            }
        }
    }
    found
}

/// Whether `sql` holds more than one statement: a `;` outside strings and
/// comments (quotes read by `quoting`) with anything after it.
pub(super) fn several_statements(sql: &str, quoting: Quoting) -> bool {
    let mut tokens = Lexer::reading(sql, quoting).skip_while(|t| *t != Token::Punct(';'));
    tokens.next().is_some() && tokens.any(|t| t != Token::Punct(';'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_comments_read_as_the_server_reads_them() {
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
                Token::Literal("x'y".into()),
                Token::Punct(','),
                Token::Literal("12".into()),
            ]
        );
        // Unclosed quotes and comments end the statement; a `*/` outside a
        // versioned comment is no comment's end; `--` needs a space or a
        // control character after it; a no-break space is part of a name.
        assert_eq!(Lexer::new("`abc").count(), 1);
        assert_eq!(Lexer::new("/* abc").count(), 0);
        assert_eq!(Lexer::new("a */ b").count(), 4);
        assert_eq!(Lexer::new("a --b").count(), 4);
        assert_eq!(Lexer::new("a --\u{1}b").count(), 1);
        assert_eq!(
            Lexer::new("a\u{a0}b --\u{a0}c").collect::<Vec<_>>(),
            [
                Token::Word("a\u{a0}b".into()),
                Token::Punct('-'),
                Token::Punct('-'),
                Token::Word("\u{a0}c".into())
            ]
        );
    }

    #[test]
    fn what_is_sent_is_what_was_read() {
        for (sql, sent) in [
            (
                "/*!40000 ALTER TABLE t DISABLE KEYS */",
                "  ALTER TABLE t DISABLE KEYS  ",
            ),
            (
                "DROP TABLE bank.t /*!40000 ,*/ /*!999999 bank.u */ other.v",
                "DROP TABLE bank.t  , bank.u   other.v",
            ),
            (
                "CREATE TABLE t (c INT) -- note\n",
                "CREATE TABLE t (c INT)  \n",
            ),
            ("a /* x */ 'b /*!1 c */' # d", "a   'b /*!1 c */'  "),
            // `--` and a control character start a comment, as on the server.
            (
                "DROP TABLE bank.t --\u{1} x\n, other.x",
                "DROP TABLE bank.t , other.x",
            ),
        ] {
            let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(
                as_sent(sql, Quoting::DEFAULT).map(|s| words(&s)),
                Ok(words(sent)),
                "{sql}"
            );
        }
        for sql in [
            "/*!40000 a /*!40000 b */ */",
            "/*!40000 a /* b */ c */",
            "a /* b",
            "a 'b",
            "/*!40000 a",
            "a \u{1} b",
        ] {
            assert!(as_sent(sql, Quoting::DEFAULT).is_err(), "{sql}");
        }
    }

    #[test]
    fn options_that_reach_other_hosts_or_files_are_named() {
        for (sql, option) in [
            ("CREATE TABLE t (i INT) ENGINE=FEDERATED CONNECTION='mysql://u:p@h/d/t'", "ENGINE=FEDERATED"),
            ("ALTER TABLE t engine connect table_type=CSV file_name='/etc/passwd'", "ENGINE=CONNECT"),
            ("CREATE TABLE t (i INT) ENGINE=InnoDB CONNECTION 'x'", "CONNECTION"),
            ("CREATE TABLE t (i INT) DATA DIRECTORY='/var/tmp'", "DATA DIRECTORY"),
            ("CREATE TABLE t (i INT) ENGINE=InnoDB /*!50100 PARTITION BY HASH (i) (PARTITION p INDEX DIRECTORY='/x') */", "INDEX DIRECTORY"),
            ("CREATE TABLE t (i INT) ENGINE = `Spider`", "ENGINE=SPIDER"),
            ("CREATE TABLE t (i INT) ENGINE='SPIDER' COMMENT='wrapper \"mysql\", host \"evil\"'", "ENGINE=SPIDER"),
            ("CREATE TABLE t (i INT) ENGINE=MRG_MyISAM UNION=(other.t)", "ENGINE=MRG_MYISAM"),
            ("CREATE TABLE t (i INT) ENGINE=SomethingNew", "ENGINE=SOMETHINGNEW"),
            ("CREATE TABLE t (i INT) ENGINE Cassandra thrift_host='h'", "ENGINE=CASSANDRA"),
            ("CREATE TABLE t (i INT) ENGINE OQGRAPH", "ENGINE=OQGRAPH"),
            (
                "CREATE TABLE t (i INT) PARTITION BY HASH (i) (PARTITION p ENGINE = Spider)",
                "ENGINE=SPIDER",
            ),
        ] {
            assert_eq!(reaches_outside(sql, Quoting::DEFAULT).as_deref(), Some(option), "{sql}");
        }
        for sql in [
            "CREATE TABLE `t` (`connection` int, `engine` varchar(9), `data` int) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "CREATE TABLE t (connection INT, engine VARCHAR(10), data int) ENGINE=Aria",
            "ALTER TABLE t ADD COLUMN engine INT, COMMENT 'ENGINE=FEDERATED CONNECTION=x'",
            "ALTER TABLE t ENGINE InnoDB",
            "CREATE TABLE t (engine varchar(10), e2 enum('a')) ENGINE Aria",
            "ALTER TABLE t CHANGE engine engine_kind INT",
            "ALTER TABLE t RENAME COLUMN engine TO e",
            "CREATE TABLE t (engine VARCHAR(9), CHECK (engine = 'x')) ENGINE=InnoDB",
        ] {
            assert_eq!(reaches_outside(sql, Quoting::DEFAULT), None, "{sql}");
        }
    }

    #[test]
    fn a_second_statement_is_seen_outside_strings_and_comments() {
        let d = Quoting::DEFAULT;
        assert!(several_statements("SELECT 1; GRANT ALL ON *.* TO x", d));
        assert!(several_statements(
            "CREATE TABLE t (i INT);/**/DROP TABLE u",
            d
        ));
        assert!(!several_statements(
            "CREATE TABLE t (c VARCHAR(9) DEFAULT ';x')",
            d
        ));
        assert!(!several_statements("CREATE TABLE t (i INT); -- done", d));
        assert!(!several_statements(
            "CREATE TABLE t (i INT) /* ; DROP TABLE u */",
            d
        ));
        // A backslash ends no string under NO_BACKSLASH_ESCAPES: the
        // server reads a second statement where the default reads one.
        let planted = "ALTER TABLE t COMMENT 'a\\'; DROP DATABASE bank; -- '";
        assert!(!several_statements(planted, d));
        assert!(several_statements(planted, Quoting::of_sql_mode(1 << 20)));
    }

    /// Each SQL mode reads quotes as the server does: `NO_BACKSLASH_ESCAPES`
    /// keeps a backslash in a string and lets the next quote end it;
    /// `ANSI_QUOTES` (alone or through a combination mode) makes double
    /// quotes a name, where a backslash never escapes; other modes read
    /// as the default.
    #[test]
    fn quotes_are_read_as_the_statements_sql_mode_reads_them() {
        let sql = "'a\\' x '\"b\\\" c \"' d";
        let tokens =
            |mode: u64| Lexer::reading(sql, Quoting::of_sql_mode(mode)).collect::<Vec<_>>();
        let lit = |s: &str| Token::Literal(s.into());
        let word = |s: &str| Token::Word(s.into());
        let quoted = |s: &str| Token::Quoted(s.into());
        // Default: a string, a double-quoted one, a string left open;
        // so under PIPES_AS_CONCAT.
        for mode in [0, 1 << 1] {
            assert_eq!(
                tokens(mode),
                [lit("a' x "), quoted("b\" c "), lit(" d")],
                "{mode}"
            );
        }
        assert_eq!(
            tokens(1 << 20),
            [lit("a\\"), word("x"), lit("\"b\\\" c \""), word("d")]
        );
        let ansi = "`a\\` \"b\\\" c 'e\\' f'";
        for mode in [1 << 2, 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12, 1 << 18] {
            assert_eq!(
                Lexer::reading(ansi, Quoting::of_sql_mode(mode)).collect::<Vec<_>>(),
                [quoted("a\\"), quoted("b\\"), word("c"), lit("e' f")],
                "{mode}"
            );
        }
        assert_eq!(
            as_sent("SELECT 'a\\' -- '\n", Quoting::of_sql_mode(1 << 20)),
            Ok("SELECT 'a\\'  \n".into())
        );
        assert_eq!(
            as_sent("SELECT 'a\\' -- '\n", Quoting::DEFAULT),
            Ok("SELECT 'a\\' -- '\n".into())
        );
    }

    /// The calls that take values from a sequence are found as the
    /// server writes them, qualified or not; a string or a column that
    /// only looks like one is not.
    #[test]
    fn the_sequences_a_default_takes_from_are_named() {
        let pair = |d: &str, n: &str| (d.to_string(), n.to_string());
        assert_eq!(
            sequences_named("nextval(`bank`.`ids`)", "x"),
            [pair("bank", "ids")]
        );
        assert_eq!(
            sequences_named("(NEXTVAL(`o``d`.`s`) + 1)", "x"),
            [pair("o`d", "s")]
        );
        assert_eq!(sequences_named("lastval(s)", "bank"), [pair("bank", "s")]);
        assert_eq!(
            sequences_named(
                "CREATE TABLE `t` (\n  `nextval` int(11) DEFAULT nextval(`a`.`s`),\n  \
                 `c` varchar(20) DEFAULT 'nextval(`b`.`s`)',\n  \
                 `d` bigint(20) DEFAULT setval(`a`.`s`,5)\n)",
                "x"
            ),
            [pair("a", "s")]
        );
        assert!(sequences_named("'nextval(`b`.`s`)'", "x").is_empty());
        assert!(sequences_named("current_timestamp()", "x").is_empty());
    }

    /// The tables a view reads are found as `SHOW CREATE VIEW` writes
    /// them, from its columns' three-part names too; a string is not read.
    #[test]
    fn the_names_a_view_reads_are_listed() {
        let pair = |d: &str, n: &str| (d.to_string(), n.to_string());
        let view = "CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`localhost` SQL SECURITY DEFINER \
                    VIEW `v` AS select `zz`.`t`.`id` AS `id`,'`zz`.`secret`' AS `s` \
                    from (`zz`.`t` join `zz`.`hidden` on(`zz`.`t`.`id` = `zz`.`hidden`.`id`))";
        assert_eq!(
            qualified_names(view),
            [pair("zz", "t"), pair("zz", "hidden")]
        );
    }
}
