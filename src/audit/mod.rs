//! `mlguard audit`: manifests in, a report of what the API server would do with them out.

use std::process::ExitCode;

pub fn run(_args: &crate::cli::AuditArgs) -> ExitCode {
    eprintln!("mlguard audit: not built yet");
    ExitCode::from(2)
}
