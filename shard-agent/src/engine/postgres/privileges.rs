//! Statements of a restore's schema SQL that name roles the target lacks.
//!
//! Roles belong to the server, not to a database: pg_dump writes a
//! database's grants (`GRANT … TO app_ro`), default privileges (`ALTER
//! DEFAULT PRIVILEGES FOR ROLE owner …`), grants made by another role
//! (`SET SESSION AUTHORIZATION grantor` … `RESET SESSION AUTHORIZATION`)
//! and policies (`CREATE POLICY … TO app_rw`) by role name, one statement
//! a line in the blocks its headers mark `Type: ACL`, `DEFAULT ACL` and
//! `POLICY` (only those are read: a function's body is left as it is,
//! whatever its lines say), and the target of a drill or of a rebuild often has none of the
//! source's roles. Each such statement failed the restore ("role "app_ro"
//! does not exist") after the database was created.
//!
//! A grant or revoke naming a missing role is left out, and the restore
//! names the roles in its notes: a role that does not exist holds no
//! privilege, so nobody gets more than on the source. Grants a missing
//! role made are made by the restoring user instead (its `SET SESSION
//! AUTHORIZATION` is left out). A policy is another matter: left out, it
//! would change what the other roles it names may read (a restrictive
//! one) or could (a permissive one), so a policy naming a missing role
//! refuses the restore before anything changes.

use std::collections::{BTreeSet, HashSet};

use super::restore_post::{ident, is_word, tokens, Token};

/// The target's roles (`pg_roles.rolname`).
pub(super) type Roles = HashSet<String>;

/// What [`known_roles_only`] left out of some schema SQL.
#[derive(Debug, Default)]
pub(super) struct LeftOut {
    /// The missing roles the statements named, each once.
    pub roles: BTreeSet<String>,
    pub statements: usize,
}

impl LeftOut {
    pub fn add(&mut self, other: LeftOut) {
        self.roles.extend(other.roles);
        self.statements += other.statements;
    }

    /// The restore's note on database `db`, if anything was left out.
    pub fn note(&self, db: &str) -> Option<String> {
        (self.statements > 0).then(|| {
            format!(
                "database {db}: {} privilege statement(s) left out, naming role(s) the target does not have: {}; create them and grant again, or restore into a server that has them",
                self.statements,
                // Names from the backup: control characters shown, not sent
                // to the terminal.
                self.roles
                    .iter()
                    .map(|r| crate::error::printable(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

/// The roles a line of pg_dump's schema SQL names, by what it is.
#[derive(Debug, PartialEq)]
enum Named {
    /// `GRANT`, `REVOKE`, `ALTER DEFAULT PRIVILEGES`.
    Privileges(Vec<String>),
    /// `SET SESSION AUTHORIZATION role`.
    Authorization(String),
    Reset,
    /// `CREATE POLICY name ON table … TO roles`.
    Policy(Vec<String>),
    Other,
}

/// `sql` without the statements that name a role `roles` lacks, and what
/// was left out; or, for a policy naming one, why the restore is refused.
pub(super) fn known_roles_only(sql: &str, roles: &Roles) -> Result<(String, LeftOut), String> {
    let mut out = String::with_capacity(sql.len());
    let mut left = LeftOut::default();
    let mut missing_grantor = false;
    let mut in_block = false;
    for line in sql.lines() {
        if let Some(header) = line.strip_prefix("-- Name: ") {
            in_block = matches!(block_type(header), Some("ACL" | "DEFAULT ACL" | "POLICY"));
            missing_grantor = false;
        }
        if !in_block {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let missing = |names: Vec<String>| -> Vec<String> {
            names.into_iter().filter(|r| !roles.contains(r)).collect()
        };
        match named(line) {
            Named::Other => {}
            Named::Policy(names) => {
                if let Some(role) = missing(names).into_iter().next() {
                    let policy: String = line.trim_end_matches(';').chars().take(120).collect();
                    let (policy, role) = (
                        crate::error::printable(&policy),
                        crate::error::printable(&role),
                    );
                    return Err(format!(
                        "`{policy}` applies to role {role}, which the target does not have: create the role there first, or restore into a server that has it"
                    ));
                }
            }
            Named::Authorization(role) => {
                missing_grantor = !roles.contains(&role);
                if missing_grantor {
                    left.roles.insert(role);
                    left.statements += 1;
                    continue;
                }
            }
            Named::Reset => {
                if std::mem::take(&mut missing_grantor) {
                    continue;
                }
            }
            Named::Privileges(names) => {
                let m = missing(names);
                if !m.is_empty() {
                    left.roles.extend(m);
                    left.statements += 1;
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok((out, left))
}

/// The type a pg_dump block header (`-- Name: TAG; Type: TYPE; Schema:
/// S; Owner: O`, after `-- Name: `) gives its block. Read from the right:
/// the tag is an object's name, which may hold `; Type: `.
fn block_type(header: &str) -> Option<&str> {
    let (rest, _owner) = header.rsplit_once("; Owner: ")?;
    let (rest, _schema) = rest.rsplit_once("; Schema: ")?;
    let (_tag, kind) = rest.rsplit_once("; Type: ")?;
    Some(kind)
}

fn named(line: &str) -> Named {
    let first = line.split_whitespace().next().unwrap_or_default();
    let kind = ["GRANT", "REVOKE", "ALTER", "SET", "RESET", "CREATE"]
        .into_iter()
        .find(|k| first.eq_ignore_ascii_case(k));
    let Some(kind) = kind else {
        return Named::Other;
    };
    let toks = tokens(line);
    let word = |i: usize, w: &str| is_word(toks.get(i), w);
    match kind {
        "GRANT" => Named::Privileges(after_last(&toks, "TO")),
        "REVOKE" => Named::Privileges(after_last(&toks, "FROM")),
        "ALTER" if word(1, "DEFAULT") && word(2, "PRIVILEGES") => {
            let mut names = Vec::new();
            if word(3, "FOR") && (word(4, "ROLE") || word(4, "USER")) {
                names.extend(role_list(&toks, 5));
            }
            // The word after the `FOR ROLE` and `IN SCHEMA` lists says
            // which (`REVOKE GRANT OPTION FOR …` is a revoke; a role may be
            // named `revoke`).
            let mut at = 3;
            for (first, second) in [("FOR", ["ROLE", "USER"]), ("IN", ["SCHEMA", "SCHEMA"])] {
                if word(at, first) && second.iter().any(|w| word(at + 1, w)) {
                    at = after_list(&toks, at + 2);
                }
            }
            let grants = word(at, "GRANT");
            let grantees = after_last(&toks, if grants { "TO" } else { "FROM" });
            names.extend(grantees);
            Named::Privileges(names)
        }
        "SET" if word(1, "SESSION") && word(2, "AUTHORIZATION") => match toks.get(3) {
            Some(Token::Word(w)) if is_pseudo_role(w) || w.eq_ignore_ascii_case("DEFAULT") => {
                Named::Other
            }
            t => ident(t).map_or(Named::Other, Named::Authorization),
        },
        "RESET" if word(1, "SESSION") && word(2, "AUTHORIZATION") => Named::Reset,
        "CREATE" if word(1, "POLICY") => {
            // The roles follow the first `TO` after the table, before
            // `USING` or `WITH CHECK`.
            let to = toks
                .iter()
                .take_while(|t| !is_word(Some(t), "USING") && !is_word(Some(t), "WITH"))
                .position(|t| is_word(Some(t), "TO"));
            Named::Policy(to.map_or_else(Vec::new, |i| role_list(&toks, i + 1)))
        }
        _ => Named::Other,
    }
}

/// Where `name, name …` from `at` ends.
fn after_list(toks: &[Token], mut at: usize) -> usize {
    loop {
        at += 1;
        if toks.get(at) != Some(&Token::Punct(',')) {
            return at;
        }
        at += 1;
    }
}

/// The roles listed after the last `keyword` of `toks`.
fn after_last(toks: &[Token], keyword: &str) -> Vec<String> {
    toks.iter()
        .rposition(|t| is_word(Some(t), keyword))
        .map_or_else(Vec::new, |i| role_list(toks, i + 1))
}

/// `[GROUP] role, [GROUP] role …` from `at`: the names of roles that must
/// exist (not `PUBLIC`, `CURRENT_USER` and the like).
fn role_list(toks: &[Token], mut at: usize) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        if is_word(toks.get(at), "GROUP") {
            at += 1;
        }
        match toks.get(at) {
            Some(Token::Word(w)) if is_pseudo_role(w) => {}
            t => match ident(t) {
                Some(name) => out.push(name),
                None => return out,
            },
        }
        if toks.get(at + 1) != Some(&Token::Punct(',')) {
            return out;
        }
        at += 2;
    }
}

fn is_pseudo_role(w: &str) -> bool {
    ["PUBLIC", "CURRENT_USER", "SESSION_USER", "CURRENT_ROLE"]
        .iter()
        .any(|p| w.eq_ignore_ascii_case(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Roles {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// As pg_dump 15 writes them.
    #[test]
    fn statements_are_read_for_the_roles_they_name() {
        let cases: [(&str, Named); 13] = [
            (
                "GRANT SELECT ON TABLE app.t1 TO app_ro;",
                Named::Privileges(vec!["app_ro".into()]),
            ),
            (
                "GRANT SELECT ON TABLE app.\"a TO b\" TO \"Odd Role\" WITH GRANT OPTION;",
                Named::Privileges(vec!["Odd Role".into()]),
            ),
            (
                "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
                Named::Privileges(vec![]),
            ),
            (
                "REVOKE ALL ON FUNCTION app.f(x integer) FROM app_rw;",
                Named::Privileges(vec!["app_rw".into()]),
            ),
            (
                "ALTER DEFAULT PRIVILEGES FOR ROLE shardcut IN SCHEMA app GRANT SELECT ON TABLES  TO app_ro;",
                Named::Privileges(vec!["shardcut".into(), "app_ro".into()]),
            ),
            (
                "ALTER DEFAULT PRIVILEGES FOR ROLE owner REVOKE ALL ON FUNCTIONS  FROM PUBLIC;",
                Named::Privileges(vec!["owner".into()]),
            ),
            (
                "ALTER DEFAULT PRIVILEGES FOR ROLE owner REVOKE GRANT OPTION FOR SELECT ON TABLES FROM r;",
                Named::Privileges(vec!["owner".into(), "r".into()]),
            ),
            (
                "ALTER DEFAULT PRIVILEGES FOR ROLE revoke, b IN SCHEMA revoke GRANT SELECT ON TABLES  TO r;",
                Named::Privileges(vec!["revoke".into(), "b".into(), "r".into()]),
            ),
            (
                "SET SESSION AUTHORIZATION grantor_r;",
                Named::Authorization("grantor_r".into()),
            ),
            ("RESET SESSION AUTHORIZATION;", Named::Reset),
            (
                "CREATE POLICY p2 ON app.t1 AS RESTRICTIVE FOR SELECT TO app_rw, \"Other\" USING ((n > 0));",
                Named::Policy(vec!["app_rw".into(), "Other".into()]),
            ),
            (
                "CREATE POLICY p1 ON app.t1 USING (((n)::integer > 0));",
                Named::Policy(vec![]),
            ),
            (
                "ALTER TABLE app.t1 ENABLE ROW LEVEL SECURITY;",
                Named::Other,
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(named(line), expected, "{line}");
        }
    }

    #[test]
    fn block_headers_are_read_from_the_right() {
        assert_eq!(
            block_type("TABLE t1; Type: ACL; Schema: app; Owner: shardcut"),
            Some("ACL")
        );
        assert_eq!(
            block_type("f(); Type: ACL; x; Type: FUNCTION; Schema: app; Owner: o"),
            Some("FUNCTION")
        );
        assert_eq!(
            block_type("DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: app; Owner: o"),
            Some("DEFAULT ACL")
        );
        assert_eq!(block_type("no header"), None);
    }

    #[test]
    fn grants_to_missing_roles_are_left_out_and_policies_refused() {
        let sql = "CREATE TABLE app.t1 (id integer);\n\
                   CREATE FUNCTION app.g() RETURNS void LANGUAGE sql AS $$\n\
                   GRANT SELECT ON TABLE app.t1 TO app_ro;\n\
                   $$;\n\
                   --\n\
                   -- Name: TABLE t1; Type: ACL; Schema: app; Owner: shardcut\n\
                   --\n\
                   GRANT SELECT ON TABLE app.t1 TO app_ro;\n\
                   GRANT SELECT ON TABLE app.t1 TO kept;\n\
                   SET SESSION AUTHORIZATION grantor_r;\n\
                   GRANT SELECT ON TABLE app.t1 TO kept2;\n\
                   RESET SESSION AUTHORIZATION;\n\
                   REVOKE ALL ON SCHEMA public FROM PUBLIC;\n";
        let (out, left) = known_roles_only(sql, &roles(&["kept", "kept2"])).unwrap();
        assert_eq!(
            out,
            "CREATE TABLE app.t1 (id integer);\n\
             CREATE FUNCTION app.g() RETURNS void LANGUAGE sql AS $$\n\
             GRANT SELECT ON TABLE app.t1 TO app_ro;\n\
             $$;\n\
             --\n\
             -- Name: TABLE t1; Type: ACL; Schema: app; Owner: shardcut\n\
             --\n\
             GRANT SELECT ON TABLE app.t1 TO kept;\n\
             GRANT SELECT ON TABLE app.t1 TO kept2;\n\
             REVOKE ALL ON SCHEMA public FROM PUBLIC;\n"
        );
        assert_eq!(left.statements, 2);
        assert_eq!(
            left.note("lab").unwrap(),
            "database lab: 2 privilege statement(s) left out, naming role(s) the target does not have: app_ro, grantor_r; create them and grant again, or restore into a server that has them"
        );
        // Every role there: nothing changes.
        let all = roles(&["kept", "kept2", "app_ro", "grantor_r"]);
        let (same, none) = known_roles_only(sql, &all).unwrap();
        assert_eq!((same.as_str(), none.statements), (sql, 0));
        assert_eq!(none.note("lab"), None);

        let policy = "-- Name: t1 p2; Type: POLICY; Schema: app; Owner: shardcut\n\
                      CREATE POLICY p2 ON app.t1 TO app_rw USING (true);\n";
        assert_eq!(
            known_roles_only(policy, &roles(&["kept"])).unwrap_err(),
            "`CREATE POLICY p2 ON app.t1 TO app_rw USING (true)` applies to role app_rw, which the target does not have: create the role there first, or restore into a server that has it"
        );
        assert!(known_roles_only(policy, &roles(&["app_rw"])).is_ok());
    }
}
