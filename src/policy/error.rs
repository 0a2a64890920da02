//! Why a policy set cannot be loaded.

/// Everything that can make a policy set unloadable. Each names the file (or policy) and says
/// what to change.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: not a directory (give --policies a directory of .rego and data files)")]
    NotADirectory { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Walk {
        path: String,
        #[source]
        source: walkdir::Error,
    },
    #[error("{file}:{line}: {message}")]
    Forbidden {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Compile(String),
    #[error("{file}: {message}")]
    Package { file: String, message: String },
    #[error("data file {file}: {message}")]
    Data { file: String, message: String },
    #[error("policy {policy}: settings: {message}")]
    Settings { policy: String, message: String },
    #[error("policy {policy}: `{rule}` {message}")]
    Shape {
        policy: String,
        rule: String,
        message: String,
    },
    #[error("data.mlguard.config.exemptions: {0}")]
    Exemptions(String),
    #[error("no policies: {0}")]
    Empty(String),
}
