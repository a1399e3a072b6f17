//! The runtime's one error type and the transport-neutral kind every error maps to.

use parley_knowledge::parse::ParseError;
use parley_knowledge::KnowledgeError;

/// What went wrong, in terms a caller can act on. `channels` turns each kind into a status
/// code with an exhaustive match, so a new kind cannot silently become a 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is malformed or violates a rule; the message says which field and why.
    InvalidInput,
    /// No credentials, or credentials that match no live key.
    Unauthenticated,
    /// The credentials are valid but their role does not allow the action.
    PermissionDenied,
    /// The resource does not exist for this tenant (including resources of other tenants).
    NotFound,
    /// The action conflicts with the current state.
    Conflict,
    /// The caller sent too many requests; retry after the given seconds.
    RateLimited,
    /// The input is larger than this node accepts.
    TooLarge,
    /// A dependency (the database) is unreachable.
    Unavailable,
    /// The tenant's daily token budget is spent.
    BudgetExceeded,
    /// The agent's language model cannot be used (not installed, no provider key).
    ModelUnavailable,
    /// The language model's provider failed before or while answering.
    ProviderFailed,
    /// An answer took longer than this node allows.
    Timeout,
    /// A bug or an unexpected failure; details are logged, never shown.
    Internal,
}

/// Errors of the runtime crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {reason}")]
    InvalidInput { field: String, reason: String },
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("this key's role ({role}) may not {action}")]
    PermissionDenied { role: &'static str, action: &'static str },
    #[error("{resource} not found")]
    NotFound { resource: &'static str },
    #[error("{0}")]
    Conflict(String),
    #[error("rate limit exceeded; retry after {retry_after_seconds} s")]
    RateLimited { retry_after_seconds: u64 },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Locked(String),
    #[error(transparent)]
    Knowledge(#[from] parley_knowledge::KnowledgeError),
    #[error("the daily token budget of {budget} tokens is spent; it renews at midnight UTC")]
    BudgetExceeded { budget: u64 },
    #[error("{0}")]
    ModelUnavailable(String),
    #[error("the language model failed: {0}")]
    Provider(#[from] parley_models::ModelError),
    #[error("the answer took longer than {seconds} s")]
    Timeout { seconds: u64 },
    #[error("secrets: {0}")]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("{0}")]
    WrongSecretsKey(String),
    #[error("messages may be at most {max_chars} characters long")]
    MessageTooLong { max_chars: usize },
    #[error("an answer is still being written in this conversation")]
    Busy,
    /// An export or erasure names an end user the tenant's conversations never saw.
    #[error("no conversations found for this {kind}")]
    UnknownSubject { kind: &'static str },
    /// Fine-tuning data was requested while the tenant's model-improvement opt-in is off.
    /// The agent does not take voice calls.
    #[error("this agent does not take voice calls")]
    VoiceDisabled,
    /// The agent already has as many live calls as it allows.
    #[error("this agent already has {max} live calls, its limit; try again later")]
    CallLimit { max: u32 },
    /// The speech models (speech-to-text, voice activity, voices) are not loaded on this node.
    #[error("voice calls are unavailable on this node: {0}")]
    VoiceUnavailable(String),
    #[error("model improvement is off for this tenant: its conversations are used only to answer its own visitors; the owner can turn it on at /admin/v1/model-improvement")]
    ModelImprovementOff,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict(_) | Error::Locked(_) => ErrorKind::Conflict,
            Error::RateLimited { .. } => ErrorKind::RateLimited,
            Error::Database(error) if is_unavailable(error) => ErrorKind::Unavailable,
            Error::Database(_)
            | Error::Migration(_)
            | Error::Corrupt(_)
            | Error::Io(_)
            | Error::Secrets(_)
            | Error::WrongSecretsKey(_) => ErrorKind::Internal,
            Error::BudgetExceeded { .. } => ErrorKind::BudgetExceeded,
            Error::MessageTooLong { .. } => ErrorKind::TooLarge,
            Error::Busy => ErrorKind::Conflict,
            Error::UnknownSubject { .. } => ErrorKind::NotFound,
            Error::ModelImprovementOff => ErrorKind::PermissionDenied,
            Error::VoiceDisabled => ErrorKind::PermissionDenied,
            Error::CallLimit { .. } => ErrorKind::RateLimited,
            Error::VoiceUnavailable(_) => ErrorKind::ModelUnavailable,
            Error::ModelUnavailable(_) => ErrorKind::ModelUnavailable,
            Error::Provider(_) => ErrorKind::ProviderFailed,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Knowledge(error) => match error {
                KnowledgeError::Parse(ParseError::TooLarge { .. }) => ErrorKind::TooLarge,
                KnowledgeError::Parse(_) => ErrorKind::InvalidInput,
                KnowledgeError::Conflict(_) => ErrorKind::Conflict,
                KnowledgeError::Database(error) if is_unavailable(error) => ErrorKind::Unavailable,
                KnowledgeError::Database(_)
                | KnowledgeError::Migration(_)
                | KnowledgeError::Index(_)
                | KnowledgeError::Embedding(_)
                | KnowledgeError::Corrupt(_)
                | KnowledgeError::Io(_)
                | KnowledgeError::Task(_) => ErrorKind::Internal,
            },
        }
    }

    /// A stable, machine-readable code for the error, used as the problem document's `code`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "invalid_input",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied { .. } => "forbidden",
            Error::NotFound { .. } => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Locked(_) => "data_dir_locked",
            Error::RateLimited { .. } => "rate_limited",
            Error::Database(error) if is_unavailable(error) => "unavailable",
            Error::Database(_)
            | Error::Migration(_)
            | Error::Corrupt(_)
            | Error::Io(_)
            | Error::Secrets(_)
            | Error::WrongSecretsKey(_) => "internal",
            Error::BudgetExceeded { .. } => "budget_exceeded",
            Error::MessageTooLong { .. } => "message_too_long",
            Error::Busy => "busy",
            Error::UnknownSubject { .. } => "subject_not_found",
            Error::ModelImprovementOff => "model_improvement_off",
            Error::VoiceDisabled => "voice_disabled",
            Error::CallLimit { .. } => "call_limit",
            Error::VoiceUnavailable(_) => "voice_unavailable",
            Error::ModelUnavailable(_) => "model_unavailable",
            Error::Provider(_) => "provider_error",
            Error::Timeout { .. } => "timeout",
            Error::Knowledge(error) => match error {
                KnowledgeError::Parse(parse_error) => parse_error.code(),
                KnowledgeError::Conflict(_) => "conflict",
                KnowledgeError::Database(error) if is_unavailable(error) => "unavailable",
                _ => "internal",
            },
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput { field: field.into(), reason: reason.into() }
    }
}

fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
