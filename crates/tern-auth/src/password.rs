//! Argon2id password hashing and verification, run off the async workers and bounded in
//! concurrency, with a dummy hash so unknown users cost the same time as known ones.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Semaphore;

/// Argon2id memory cost in KiB (19 MiB, the OWASP recommendation for argon2id).
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// Argon2id iterations.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;

/// Stored hashes asking for more memory than this (KiB) are refused rather than computed, so a
/// tampered row cannot make the broker allocate gigabytes.
const MAX_M_COST_KIB: u32 = 262_144;
/// Stored hashes asking for more iterations than this are refused.
const MAX_T_COST: u32 = 16;
/// Stored hashes asking for more lanes than this are refused.
const MAX_P_COST: u32 = 8;

fn argon2() -> Argon2<'static> {
    let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    SystemRandom::new().fill(buf).expect("the system CSPRNG is available");
}

/// Hashes a password with argon2id (m = 19 MiB, t = 2, p = 1, 16-byte random salt) into a PHC
/// string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`). CPU-heavy: call from a blocking
/// context.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    random_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    argon2().hash_password(password.as_bytes(), &salt).expect("argon2id hashing cannot fail").to_string()
}

/// Verifies `password` against a PHC string; `false` for a mismatch, an unparsable hash or a
/// hash whose parameters exceed the broker's limits. CPU-heavy: call from a blocking context.
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST_KIB || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST {
        tracing::error!("stored password hash has excessive argon2 parameters; refusing to compute it");
        return false;
    }
    Argon2::default().verify_password(password, &parsed).is_ok()
}

/// A fresh random password: 24 random bytes as 32 URL-safe base64 characters (192 bits).
pub fn generate_password() -> String {
    let mut raw = [0u8; 24];
    random_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// A hash with the default parameters, verified against when the device is unknown or has
/// no password so the answer takes as long as a real check. A constant (of a random password
/// generated once and thrown away) rather than computed at start-up: computing it cost 19 MiB
/// of resident memory and tens of ms before the broker served anything, and the password it
/// hashes does not matter, because a check against it is refused whatever it finds.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ZLvrh3WqIVmEh9R+fVwdKg$dQvooNjA4BOuPRntCRRzEgTFyZ87E5EOlLASScUAwIs";

/// Runs argon2id work on the blocking pool, at most `permits` at once (each holds ~19 MiB).
/// The device authenticator and the admin API's logins each have one.
#[derive(Debug, Clone)]
pub struct HashPool {
    permits: Arc<Semaphore>,
}

impl HashPool {
    /// At most `max_concurrent` computations at once (0: one per core).
    pub fn new(max_concurrent: usize) -> HashPool {
        let n = if max_concurrent == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        } else {
            max_concurrent
        };
        HashPool { permits: Arc::new(Semaphore::new(n)) }
    }

    /// Verifies `password` against `phc`, or against the dummy hash when `phc` is `None`
    /// (then the answer is always `false`, after the same work).
    pub async fn verify(&self, phc: Option<String>, password: Vec<u8>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let res = tokio::task::spawn_blocking(move || {
            if let Some(phc) = phc {
                verify_password(&phc, &password)
            } else {
                let _ = verify_password(DUMMY_HASH, &password);
                false
            }
        })
        .await;
        res.unwrap_or(false)
    }

    /// Hashes `password` (argon2id, default parameters); `None` if the work could not run.
    pub async fn hash(&self, password: String) -> Option<String> {
        let _permit = self.permits.acquire().await.ok()?;
        tokio::task::spawn_blocking(move || hash_password(&password)).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password(&h, b"correct horse"));
        assert!(!verify_password(&h, b"correct horsf"));
        assert!(!verify_password("not a hash", b"x"));
        assert_ne!(hash_password("a"), hash_password("a"), "salted");
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_does() {
        let real = hash_password("x");
        let params = |phc: &str| {
            let p = Params::try_from(&PasswordHash::new(phc).unwrap()).unwrap();
            (p.m_cost(), p.t_cost(), p.p_cost(), p.output_len())
        };
        assert_eq!(params(DUMMY_HASH), params(&real), "same argon2 parameters as new hashes");
        assert!(DUMMY_HASH.starts_with(&real[..real.find("p=1$").unwrap() + 4]), "{real}");
    }

    #[test]
    fn excessive_parameters_are_refused() {
        let h =
            "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE";
        assert!(!verify_password(h, b"x"));
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate_password();
        assert_eq!(a.len(), 32);
        assert_ne!(a, generate_password());
    }
}
