//! `run_as`: whether a worker may start a job's command as another user. One rule, applied by
//! the worker before every run with `run_as` and, in `standalone` (where the API knows the
//! worker's user and config), by the API when the job is written.
//!
//! A worker switches user only when it runs as root (euid 0) and its `worker.allowed_users`
//! lists the user: `root` too only when listed. Anything else starts nothing; the run is
//! recorded `failed` with the refusal's message.

/// Why a run with `run_as` is not started. Each message says what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunAsRefusal {
    #[error("run_as {user:?} needs a worker started as root; this worker runs as uid {uid}")]
    NotRoot { user: String, uid: u32 },
    #[error("run_as {user:?} is not in this worker's worker.allowed_users")]
    NotAllowed { user: String },
    #[error("run_as {user:?}: no such user on this worker")]
    UnknownUser { user: String },
    #[error("run_as {user:?}: the user could not be looked up on this worker: {reason}")]
    Lookup { user: String, reason: String },
}

/// The label values of `cronmesh_run_as_refused_total{reason}`.
pub const REFUSAL_REASONS: [&str; 4] = ["not_root", "not_allowed", "unknown_user", "lookup_failed"];

impl RunAsRefusal {
    /// The metric's label value.
    pub fn reason(&self) -> &'static str {
        match self {
            RunAsRefusal::NotRoot { .. } => "not_root",
            RunAsRefusal::NotAllowed { .. } => "not_allowed",
            RunAsRefusal::UnknownUser { .. } => "unknown_user",
            RunAsRefusal::Lookup { .. } => "lookup_failed",
        }
    }
}

/// Whether a process with effective uid `euid` and `worker.allowed_users` = `allowed` may run a
/// command as `user`. Not being root comes first: no list makes a switch possible then.
pub fn check(user: &str, allowed: &[String], euid: u32) -> Result<(), RunAsRefusal> {
    if euid != 0 {
        return Err(RunAsRefusal::NotRoot {
            user: user.into(),
            uid: euid,
        });
    }
    if !allowed.iter().any(|a| a == user) {
        return Err(RunAsRefusal::NotAllowed { user: user.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_switches_and_only_to_a_listed_user_root_included() {
        let allowed = vec!["backup".to_string(), "nobody".to_string()];
        assert_eq!(check("backup", &allowed, 0), Ok(()));
        let e = check("daemon", &allowed, 0).unwrap_err();
        assert_eq!(e.reason(), "not_allowed");
        assert_eq!(
            e.to_string(),
            "run_as \"daemon\" is not in this worker's worker.allowed_users"
        );
        assert_eq!(check("root", &allowed, 0).unwrap_err().reason(), "not_allowed");
        assert_eq!(check("root", &["root".to_string()], 0), Ok(()));
        // an empty list (the default) allows nobody
        assert_eq!(check("backup", &[], 0).unwrap_err().reason(), "not_allowed");
        let e = check("backup", &allowed, 1000).unwrap_err();
        assert_eq!(e.reason(), "not_root");
        assert_eq!(
            e.to_string(),
            "run_as \"backup\" needs a worker started as root; this worker runs as uid 1000"
        );
    }
}
