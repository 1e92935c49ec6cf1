//! pg_dump's post-data section, split so that each table's indexes can be
//! built as soon as that table is loaded, as `pg_restore -j` does.
//!
//! An index or a non-foreign-key constraint concerns one table. When the
//! statement names a table that a load worker loads whole, that worker
//! builds it right after the table's load commits, while other workers go
//! on loading. Everything else keeps the order of a plain restore: the
//! remaining indexes and constraints `parallelism` at a time once all data
//! is in, then foreign keys, triggers and the rest in the dump's order.

use std::collections::HashMap;
use std::sync::Mutex;

/// A table as pg_dump names it: schema and name, unquoted.
pub(super) type TableName = (String, String);

/// An index or constraint statement of one table.
#[derive(Clone, Debug)]
pub(super) struct Build {
    pub sql: String,
    /// Whether the table can be read while it runs: `CREATE INDEX` takes a
    /// lock that lets reads through, `ALTER TABLE … ADD CONSTRAINT` (and
    /// any statement not recognised) one that keeps them waiting.
    pub lets_reads: bool,
}

/// The post-data section of one database, planned.
#[derive(Default)]
pub(super) struct PostData {
    /// pg_dump's session settings (psql meta-commands left out), run once
    /// on every connection that builds indexes.
    pub settings: String,
    /// Index and constraint statements by the table they are on; a load
    /// worker takes a table's entry out when it builds them.
    by_table: Mutex<HashMap<TableName, Vec<Build>>>,
    /// Index and constraint statements whose table was not recognised.
    other: Vec<Build>,
    /// The rest, preamble first, for psql; `None` when there is none.
    pub rest: Option<String>,
}

impl PostData {
    /// Plans one post-data section (pg_dump's plain SQL, ownership
    /// statements already left out).
    pub fn plan(sql: &str) -> PostData {
        let (preamble, blocks) = split_objects(sql);
        let settings = no_meta(&preamble);
        let mut by_table: HashMap<TableName, Vec<Build>> = HashMap::new();
        let (mut other, mut rest) = (Vec::new(), Vec::new());
        for (kind, block) in blocks {
            if kind != "INDEX" && kind != "CONSTRAINT" {
                rest.push(block);
                continue;
            }
            let sql = no_meta(&block);
            match block_table(&kind, &sql) {
                Some(table) => by_table.entry(table).or_default().push(Build {
                    lets_reads: kind == "INDEX",
                    sql,
                }),
                None => other.push(Build {
                    sql,
                    lets_reads: false,
                }),
            }
        }
        let rest = (!rest.is_empty()).then(|| {
            let mut sql = preamble;
            for b in rest {
                sql.push_str(&b);
            }
            sql
        });
        PostData {
            settings,
            by_table: Mutex::new(by_table),
            other,
            rest,
        }
    }

    /// Every text that is run on its own: the settings, each index or
    /// constraint block, the rest. The blocks are cut at pg_dump's
    /// `-- Name:` headers without reading strings or comments, so a check
    /// of what runs must look at each of them, not at the section whole.
    pub fn pieces(&self) -> Vec<String> {
        let by_table = self.by_table.lock().unwrap_or_else(|p| p.into_inner());
        let builds = by_table.values().flatten().chain(&self.other);
        std::iter::once(self.settings.clone())
            .chain(builds.map(|b| b.sql.clone()))
            .chain(self.rest.clone())
            .collect()
    }

    /// Takes out the index and constraint statements on `table`, in the
    /// dump's order; the caller builds them.
    pub fn take(&self, table: &TableName) -> Vec<Build> {
        self.by_table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(table)
            .unwrap_or_default()
    }

    /// The index and constraint statements nobody took, to build once all
    /// data is in.
    pub fn remaining(&self) -> Vec<Build> {
        let mut left: Vec<Build> =
            std::mem::take(&mut *self.by_table.lock().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .flatten()
                .collect();
        left.extend(self.other.iter().cloned());
        left
    }
}

/// psql meta-commands (`\restrict`) only mean something to psql.
fn no_meta(sql: &str) -> String {
    sql.lines()
        .filter(|l| !l.starts_with('\\'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// pg_dump's plain SQL split into its preamble (session settings) and one
/// block per object, each with the object's type from its `-- Name: …;
/// Type: …;` header.
fn split_objects(sql: &str) -> (String, Vec<(String, String)>) {
    let lines: Vec<&str> = sql.lines().collect();
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| l.starts_with("-- Name: ") && *i > 0 && lines[i - 1] == "--")
        .map(|(i, _)| i - 1)
        .collect();
    let join = |range: &[&str]| range.iter().map(|l| format!("{l}\n")).collect::<String>();
    let preamble = join(&lines[..starts.first().copied().unwrap_or(lines.len())]);
    let mut blocks = Vec::new();
    for (n, start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        let kind = lines[start + 1]
            .split("; Type: ")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .unwrap_or("")
            .to_string();
        blocks.push((kind, join(&lines[*start..end])));
    }
    (preamble, blocks)
}

/// A token of an SQL statement: a bare word, a quoted identifier
/// (unquoted), or one punctuation character.
#[derive(Debug, PartialEq)]
pub(super) enum Token {
    Word(String),
    Quoted(String),
    Punct(char),
}

/// Tokens of the statement in `block`, comment lines left out; stops at
/// the first string literal (nothing before it needs one).
pub(super) fn tokens(block: &str) -> Vec<Token> {
    let sql: String = block
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            name.push('"');
                        }
                        Some('"') | None => break,
                        Some(c) => name.push(c),
                    }
                }
                out.push(Token::Quoted(name));
            }
            '\'' => break,
            c if c.is_alphanumeric() || c == '_' => {
                let mut word = c.to_string();
                while let Some(&n) = chars.peek() {
                    if !(n.is_alphanumeric() || n == '_' || n == '$') {
                        break;
                    }
                    word.push(n);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
            c => out.push(Token::Punct(c)),
        }
    }
    out
}

pub(super) fn is_word(t: Option<&Token>, w: &str) -> bool {
    matches!(t, Some(Token::Word(x)) if x.eq_ignore_ascii_case(w))
}

/// An identifier's name: quoted as written, bare folded to lower case (as
/// the server reads it).
pub(super) fn ident(t: Option<&Token>) -> Option<String> {
    match t? {
        Token::Quoted(s) => Some(s.clone()),
        Token::Word(w) => Some(w.to_lowercase()),
        Token::Punct(_) => None,
    }
}

/// `schema.table` at `at` in `toks`, after an optional `ONLY`.
fn qualified_at(toks: &[Token], mut at: usize) -> Option<TableName> {
    if is_word(toks.get(at), "ONLY") {
        at += 1;
    }
    let schema = ident(toks.get(at))?;
    if toks.get(at + 1) != Some(&Token::Punct('.')) {
        return None;
    }
    let table = ident(toks.get(at + 2))?;
    Some((schema, table))
}

/// The table an index or constraint statement of pg_dump is on:
/// `CREATE [UNIQUE] INDEX name ON [ONLY] schema.table …` or
/// `ALTER TABLE [ONLY] schema.table ADD CONSTRAINT …`. `None` for any
/// other shape: the statement is then built after all data.
fn block_table(kind: &str, block: &str) -> Option<TableName> {
    let toks = tokens(block);
    match kind {
        "INDEX" => {
            if !is_word(toks.first(), "CREATE") {
                return None;
            }
            let index = toks.iter().position(|t| is_word(Some(t), "INDEX"))?;
            let on = toks
                .iter()
                .skip(index)
                .position(|t| is_word(Some(t), "ON"))?;
            qualified_at(&toks, index + on + 1)
        }
        "CONSTRAINT" => {
            if !(is_word(toks.first(), "ALTER") && is_word(toks.get(1), "TABLE")) {
                return None;
            }
            let table = qualified_at(&toks, 2)?;
            let after = if is_word(toks.get(2), "ONLY") { 6 } else { 5 };
            is_word(toks.get(after), "ADD").then_some(table)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str, t: &str) -> Option<TableName> {
        Some((s.to_string(), t.to_string()))
    }

    #[test]
    fn finds_the_table_of_pg_dump_index_and_constraint_statements() {
        let index = "--\n-- Name: k_1; Type: INDEX; Schema: public; Owner: -\n--\n\n\
                     CREATE INDEX k_1 ON public.sbtest1 USING btree (k);\n";
        assert_eq!(block_table("INDEX", index), name("public", "sbtest1"));
        let quoted = "CREATE UNIQUE INDEX \"odd ON \"\"x\"\"\" ON ONLY \"Sales\".\"Order Lines\" USING btree (id);";
        assert_eq!(block_table("INDEX", quoted), name("Sales", "Order Lines"));
        let pk =
            "ALTER TABLE ONLY public.sbtest1\n    ADD CONSTRAINT sbtest1_pkey PRIMARY KEY (id);\n";
        assert_eq!(block_table("CONSTRAINT", pk), name("public", "sbtest1"));
        let check = "ALTER TABLE shop.items\n    ADD CONSTRAINT c CHECK ((name <> 'ON x.y'::text)) NOT VALID;";
        assert_eq!(block_table("CONSTRAINT", check), name("shop", "items"));
    }

    #[test]
    fn other_shapes_are_left_for_after_the_load() {
        assert_eq!(
            block_table("INDEX", "ALTER INDEX public.a ATTACH PARTITION public.b;"),
            None
        );
        assert_eq!(
            block_table("INDEX", "CREATE INDEX i ON t USING btree (a);"),
            None
        );
        assert_eq!(
            block_table(
                "CONSTRAINT",
                "ALTER TABLE ONLY public.t ALTER COLUMN a SET DEFAULT 1;"
            ),
            None
        );
        assert_eq!(block_table("TRIGGER", "CREATE TRIGGER x ON public.t"), None);
    }

    #[test]
    fn plan_groups_indexes_by_table_and_keeps_the_rest_in_order() {
        let sql = "SET x = 1;\n\\restrict abc\n\
                   --\n-- Name: t1 t1_pkey; Type: CONSTRAINT; Schema: public; Owner: -\n--\n\n\
                   ALTER TABLE ONLY public.t1\n    ADD CONSTRAINT t1_pkey PRIMARY KEY (id);\n\n\
                   --\n-- Name: i1; Type: INDEX; Schema: public; Owner: -\n--\n\n\
                   CREATE INDEX i1 ON public.t1 USING btree (a);\n\n\
                   --\n-- Name: i2; Type: INDEX; Schema: public; Owner: -\n--\n\n\
                   CREATE INDEX i2 ON public.t2 USING btree (a);\n\n\
                   --\n-- Name: t2 fk; Type: FK CONSTRAINT; Schema: public; Owner: -\n--\n\n\
                   ALTER TABLE ONLY public.t2\n    ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES public.t1(id);\n";
        let plan = PostData::plan(sql);
        assert_eq!(plan.settings, "SET x = 1;\n");
        let t1 = plan.take(&("public".into(), "t1".into()));
        assert_eq!(t1.len(), 2);
        assert!(t1[0].sql.contains("PRIMARY KEY") && t1[1].sql.contains("CREATE INDEX i1"));
        assert!(!t1[0].lets_reads && t1[1].lets_reads);
        assert!(plan.take(&("public".into(), "t1".into())).is_empty());
        let left = plan.remaining();
        assert_eq!(left.len(), 1);
        assert!(left[0].sql.contains("CREATE INDEX i2") && left[0].lets_reads);
        let rest = plan.rest.unwrap_or_default();
        assert!(rest.starts_with("SET x = 1;\n\\restrict abc\n"));
        assert!(rest.contains("FOREIGN KEY") && !rest.contains("CREATE INDEX"));
    }
}
