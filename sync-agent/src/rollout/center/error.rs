//! The one error type of the config center; each kind maps to one HTTP status.

/// What went wrong, with a message naming the thing that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CenterError {
    /// Unknown config, version, namespace, device or rollout (404).
    #[error("{0}")]
    NotFound(String),
    /// Invalid input: content for its format, names, dependency cycle (400).
    #[error("{0}")]
    Invalid(String),
    /// Content over the configured maximum size (413).
    #[error("{0}")]
    TooLarge(String),
    /// A request that contradicts the center's state, e.g. a device
    /// acknowledging something it was not sent (409).
    #[error("{0}")]
    Conflict(String),
    /// The database or the runtime failed (500).
    #[error("{0}")]
    Internal(String),
    /// The store cannot be reached (no etcd member answers), so the center
    /// can neither read nor write its state (503, with the reason).
    #[error("{0}")]
    Unavailable(String),
}

impl CenterError {
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        CenterError::Internal(format!("{context}: {err}"))
    }
}

impl CenterError {
    /// The store itself failed (internal or unreachable): a group commit
    /// holding such a change is abandoned as a whole.
    pub fn is_store_failure(&self) -> bool {
        matches!(self, CenterError::Internal(_) | CenterError::Unavailable(_))
    }
}

pub type CenterResult<T> = Result<T, CenterError>;
