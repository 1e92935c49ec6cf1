//! The figures of one restore, drill or verification run.

/// Figures of one run that go into the report besides the per-table results.
pub struct Run<'a> {
    /// `restore`, `drill` or `verify`.
    pub kind: &'a str,
    pub rto_seconds: Option<f64>,
    /// Age of the backup's cut when the run started.
    pub rpo_seconds: f64,
}
