//! Errors of the auth crate's constructors, loaders and provisioning helpers.

use tern_broker::store::StoreError;

/// A failure to set up or reload authentication or authorization.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The `[auth]` settings are inconsistent.
    #[error("auth configuration: {0}")]
    Config(String),
    /// A key, secret or JWKS could not be loaded or parsed.
    #[error("auth key material: {0}")]
    Key(String),
    /// The directory store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored ACL rule is invalid (the whole rule set is refused: never fail open).
    #[error("ACL rule {id}: {reason}")]
    InvalidRule {
        /// The rule's id.
        id: i64,
        /// What is wrong with it.
        reason: String,
    },
}
