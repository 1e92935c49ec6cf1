//! The figures of one restore, drill or verification run.

/// Figures of one run that go into the report besides the per-table results.
pub struct Run<'a> {
    /// `restore`, `drill` or `verify`.
    pub kind: &'a str,
    pub rto_seconds: Option<f64>,
    /// Age of the backup's cut when the run started.
    pub rpo_seconds: f64,
    /// Steps of a restore or drill that failed (a shard's restore, its
    /// views or post-data after the rows were loaded): the rows may still
    /// verify with Q = 1, but the run did not succeed.
    pub failures: &'a [String],
    /// What the restores said the DBA should know (privileges left out,
    /// missing definers), one line each beginning with its shard.
    pub notes: &'a [String],
}

impl<'a> Run<'a> {
    /// The figures of a restore or drill.
    pub fn of(o: &'a crate::flow::restore::Outcome, kind: &'a str) -> Self {
        Run {
            kind,
            rto_seconds: Some(o.rto),
            rpo_seconds: o.rpo,
            failures: &o.failures,
            notes: &o.notes,
        }
    }
}
