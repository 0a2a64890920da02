//! tracing set-up: `--log-format text|json`, and `--log-level` or else `RUST_LOG`, or else
//! `info`. Logs go to standard error so that command output (`audit`, `certs`) stays clean.

use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat};

pub fn init(args: &LogArgs) {
    let filter = match &args.log_level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|e| {
            eprintln!("mlguard: --log-level {level:?} is not a valid filter ({e}); using info");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    crate::decision_log::set_json(args.log_format == LogFormat::Json);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests that call into the binary's set-up) is harmless; ignore it.
    let _ = match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
