//! Authentication counters for the metrics exporter: failures by method and reason, and
//! attempts the failure backoff slowed down or refused. Bounded label sets by construction.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tern_protocol::ReasonCode;

/// The method that refused a client (`None`: refused before any method applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedMethod {
    /// User name and password (argon2).
    Password,
    /// JSON Web Token in the password field.
    Jwt,
    /// Client certificate.
    Cert,
    /// No credentials.
    Anonymous,
    /// MQTT 5 enhanced authentication, SCRAM-SHA-256.
    Scram,
    /// No method: banned by the backoff, or no method of the chain applied.
    None,
}

/// Why authentication failed, in a few buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// Wrong or unknown credentials.
    BadCredentials,
    /// Valid credentials, but not allowed (disabled device, wrong client id, no method).
    NotAuthorized,
    /// Refused by the failure backoff.
    Banned,
    /// The directory (database) or the JWKS could not be reached.
    Unavailable,
    /// An enhanced authentication method that is not offered.
    BadMethod,
    /// Anything else.
    Other,
}

const METHODS: [(FailedMethod, &str); 6] = [
    (FailedMethod::Password, "password"),
    (FailedMethod::Jwt, "jwt"),
    (FailedMethod::Cert, "cert"),
    (FailedMethod::Anonymous, "anonymous"),
    (FailedMethod::Scram, "scram"),
    (FailedMethod::None, "none"),
];

const REASONS: [(FailReason, &str); 6] = [
    (FailReason::BadCredentials, "bad_credentials"),
    (FailReason::NotAuthorized, "not_authorized"),
    (FailReason::Banned, "banned"),
    (FailReason::Unavailable, "unavailable"),
    (FailReason::BadMethod, "bad_method"),
    (FailReason::Other, "other"),
];

impl FailReason {
    /// The bucket of a refusal's reason code.
    pub fn of(code: ReasonCode) -> FailReason {
        match code {
            ReasonCode::BadUserNameOrPassword => FailReason::BadCredentials,
            ReasonCode::NotAuthorized | ReasonCode::ClientIdentifierNotValid => FailReason::NotAuthorized,
            ReasonCode::Banned => FailReason::Banned,
            ReasonCode::ServerUnavailable | ReasonCode::ServerBusy => FailReason::Unavailable,
            ReasonCode::BadAuthenticationMethod => FailReason::BadMethod,
            _ => FailReason::Other,
        }
    }
}

/// Authentication failure and backoff counters.
#[derive(Debug, Default)]
pub struct AuthStats {
    failures: [[AtomicU64; REASONS.len()]; METHODS.len()],
    backoff: AtomicU64,
    credential_cache_hits: AtomicU64,
}

impl AuthStats {
    /// Counts a refused authentication.
    pub fn failure(&self, method: FailedMethod, code: ReasonCode) {
        let reason = FailReason::of(code);
        self.failures[method as usize][reason as usize].fetch_add(1, Relaxed);
    }

    /// Counts an attempt the backoff delayed or refused.
    pub(crate) fn backoff(&self) {
        self.backoff.fetch_add(1, Relaxed);
    }

    /// Counts a password login accepted by the verified-credential cache (no argon2id).
    pub(crate) fn credential_cache_hit(&self) {
        self.credential_cache_hits.fetch_add(1, Relaxed);
    }

    /// Password logins the verified-credential cache accepted since start.
    pub fn credential_cache_hits_total(&self) -> u64 {
        self.credential_cache_hits.load(Relaxed)
    }

    /// Failures since start as `(method, reason, count)`, every combination (zeros included).
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        METHODS.iter().flat_map(move |(m, ml)| {
            REASONS
                .iter()
                .map(move |(r, rl)| (*ml, *rl, self.failures[*m as usize][*r as usize].load(Relaxed)))
        })
    }

    /// Attempts the backoff delayed or refused since start.
    pub fn backoff_total(&self) -> u64 {
        self.backoff.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_land_in_their_method_and_bucket() {
        let s = AuthStats::default();
        s.failure(FailedMethod::Password, ReasonCode::BadUserNameOrPassword);
        s.failure(FailedMethod::Password, ReasonCode::BadUserNameOrPassword);
        s.failure(FailedMethod::None, ReasonCode::Banned);
        s.failure(FailedMethod::Jwt, ReasonCode::UnspecifiedError);
        let all: Vec<_> = s.failures().filter(|f| f.2 > 0).collect();
        assert_eq!(all, vec![("password", "bad_credentials", 2), ("jwt", "other", 1), ("none", "banned", 1)]);
        assert_eq!(s.failures().count(), 36);
    }
}
