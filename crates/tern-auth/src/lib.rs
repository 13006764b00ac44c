//! Tern authentication and authorization: implements the broker's `Authenticator` (argon2id
//! passwords, JWT, client certificates, anonymous, SCRAM-SHA-256 enhanced authentication) and
//! `Authorizer` (ACL rules from the directory store, plus inline JWT rules).
//!
//! Wiring: deserialize [`AuthConfig`] from the `[auth]` table, then call [`start`] with the
//! directory store; hand the two halves to the broker. `docs/security.md` documents every key
//! and every reason code.

mod acl;
mod authenticator;
mod authorizer;
mod backoff;
pub mod cert;
pub mod config;
mod credential_cache;
mod device_ids;
mod directory_cache;
mod error;
mod jwt;
pub mod password;
pub mod provision;
pub mod scram;
pub mod stats;

use std::sync::Arc;

use tern_broker::store::DirectoryStore;

pub use authenticator::TernAuthenticator;
pub use authorizer::{AclAuthorizer, DecidedBy, Explanation};
pub use cert::{CertError, cert_identity};
pub use config::{
    AclPolicy, AuthConfig, BackoffConfig, CertConfig, CertField, CertMapTo, CertMapping, JwtAlgorithm,
    JwtConfig, Method, SCRAM_SHA_256, Secret,
};
pub use error::AuthError;
pub use jwt::{JwtVerifier, looks_like_jwt};
pub use password::{HashPool, generate_password, hash_password, verify_password};
pub use scram::scram_verifier;

/// The two halves the broker needs.
#[derive(Debug, Clone)]
pub struct Auth {
    /// CONNECT and AUTH handling.
    pub authenticator: Arc<TernAuthenticator>,
    /// PUBLISH and SUBSCRIBE checks; call [`AclAuthorizer::reload_now`] after admin changes.
    pub authorizer: Arc<AclAuthorizer>,
}

/// Builds both halves from `[auth]` and the directory store: validates the settings, loads
/// JWT keys, loads the ACL rules once and starts the background tasks (JWKS refresh, ACL
/// polling), which stop when the returned values are dropped. A failed first ACL load is not
/// an error: the authorizer refuses everything until a poll succeeds.
pub async fn start(config: &AuthConfig, store: Arc<dyn DirectoryStore>) -> Result<Auth, AuthError> {
    let authenticator = TernAuthenticator::start(config, store.clone()).await?;
    let authorizer = AclAuthorizer::start(store, config).await;
    Ok(Auth { authenticator, authorizer })
}
