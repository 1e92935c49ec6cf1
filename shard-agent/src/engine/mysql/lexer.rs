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
    /// A string in single quotes, or a number.
    Literal,
    Punct(char),
}

impl Token {
    /// Whether this is the word `keyword` (in any case).
    pub(super) fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }
}

/// What the text of a versioned comment (`/*!50001 … */`,
/// `/*M!100100 … */`) is taken for: the server runs it when its version
/// is at least the comment's, and skips it otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Versioned {
    Read,
    Skipped,
}

/// The tokens of a statement, comments skipped.
pub(super) struct Lexer<'a> {
    rest: &'a str,
    versioned: Versioned,
    /// Inside a versioned comment.
    inside: bool,
}

impl<'a> Lexer<'a> {
    /// The tokens of `sql`, versioned comments read.
    pub(super) fn new(sql: &'a str) -> Self {
        Self::with(sql, Versioned::Read)
    }

    pub(super) fn with(sql: &'a str, versioned: Versioned) -> Self {
        Lexer {
            rest: sql,
            versioned,
            inside: false,
        }
    }

    /// Skips whitespace and comments.
    fn skip(&mut self) {
        loop {
            let s = self.rest.trim_start();
            if let Some(r) = s.strip_prefix("/*!").or_else(|| s.strip_prefix("/*M!")) {
                match self.versioned {
                    Versioned::Read => {
                        self.rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
                        self.inside = true;
                    }
                    Versioned::Skipped => self.rest = r.find("*/").map_or("", |e| &r[e + 2..]),
                }
            } else if let Some(r) = s.strip_prefix("/*") {
                self.rest = r.find("*/").map_or("", |e| &r[e + 2..]);
            } else if let Some(r) = s.strip_prefix("*/").filter(|_| self.inside) {
                self.rest = r;
                self.inside = false;
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

/// Engines whose tables are another server's or files the server reads.
const OUTSIDE_ENGINES: &[&str] = &["FEDERATED", "FEDERATEDX", "CONNECT", "SPIDER"];

/// The first option of statement `sql` that reaches beyond the server's
/// own tables: a table of an engine that connects to another server or
/// reads files (`ENGINE=FEDERATED`, `CONNECT`, `SPIDER`), a `CONNECTION`
/// string, a `DATA DIRECTORY` or `INDEX DIRECTORY`, a `FILE_NAME`. The
/// backup reads InnoDB tables only (preflight refuses the rest), so no
/// statement of a backup needs them, and run from a planted one they
/// would send the restored rows to another host, or read its files.
pub(super) fn reaches_outside(sql: &str) -> Option<String> {
    let tokens: Vec<Token> = Lexer::new(sql).collect();
    for (i, t) in tokens.iter().enumerate() {
        let next = |k: usize| tokens.get(i + k);
        if t.is("ENGINE") {
            let engine = match next(1) {
                Some(Token::Punct('=')) => next(2),
                other => other,
            };
            if let Some(Token::Word(e) | Token::Quoted(e)) = engine {
                if OUTSIDE_ENGINES.iter().any(|o| e.eq_ignore_ascii_case(o)) {
                    return Some(format!("ENGINE={}", e.to_ascii_uppercase()));
                }
            }
        } else if t.is("CONNECTION") && matches!(next(1), Some(Token::Punct('=') | Token::Literal))
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

/// Whether `sql` holds more than one statement: a `;` outside strings and
/// comments with anything after it.
pub(super) fn several_statements(sql: &str) -> bool {
    let mut tokens = Lexer::new(sql).skip_while(|t| *t != Token::Punct(';'));
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
                Token::Literal,
                Token::Punct(','),
                Token::Literal,
            ]
        );
        let skipped: Vec<Token> =
            Lexer::with("/*!99999 DROP */ TABLE t", Versioned::Skipped).collect();
        assert_eq!(
            skipped,
            [Token::Word("TABLE".into()), Token::Word("t".into())]
        );
        // Unclosed quotes and comments end the statement; a `*/` outside a
        // versioned comment is no comment's end.
        assert_eq!(Lexer::new("`abc").count(), 1);
        assert_eq!(Lexer::new("/* abc").count(), 0);
        assert_eq!(Lexer::new("a */ b").count(), 4);
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
        ] {
            assert_eq!(reaches_outside(sql).as_deref(), Some(option), "{sql}");
        }
        for sql in [
            "CREATE TABLE `t` (`connection` int, `engine` varchar(9), `data` int) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "CREATE TABLE t (connection INT, engine VARCHAR(10), data int)",
            "ALTER TABLE t ADD COLUMN engine INT, COMMENT 'ENGINE=FEDERATED CONNECTION=x'",
        ] {
            assert_eq!(reaches_outside(sql), None, "{sql}");
        }
    }

    #[test]
    fn a_second_statement_is_seen_outside_strings_and_comments() {
        assert!(several_statements("SELECT 1; GRANT ALL ON *.* TO x"));
        assert!(several_statements(
            "CREATE TABLE t (i INT);/**/DROP TABLE u"
        ));
        assert!(!several_statements(
            "CREATE TABLE t (c VARCHAR(9) DEFAULT ';x')"
        ));
        assert!(!several_statements("CREATE TABLE t (i INT); -- done"));
        assert!(!several_statements(
            "CREATE TABLE t (i INT) /* ; DROP TABLE u */"
        ));
    }
}
