//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) for MQTT 5 enhanced authentication, without channel
//! binding (GS2 header `n,,` or `y,,`): RFC 5803 verifiers and the server state machine.
//!
//! Passwords are used as their UTF-8 bytes (no SASLprep normalisation): use ASCII passwords,
//! as `--generate-password` does.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2};
use subtle::ConstantTimeEq as _;
use tern_broker::auth::{AuthFuture, AuthStep, ConnectInfo, EnhancedAuth, Principal};
use tern_broker::store::Device;
use tern_protocol::ReasonCode;

use crate::backoff::{Attempt, Backoff};
use crate::password::random_bytes;

/// Iterations used by provisioning (RFC 7677's minimum; the device computes PBKDF2 with this
/// count on every connect, so higher values cost constrained clients dearly).
pub const DEFAULT_SCRAM_ITERATIONS: u32 = 4096;
/// Verifiers are never made with fewer iterations than this.
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;
/// Longest client message accepted.
const MAX_MESSAGE: usize = 2048;
const KEY_LEN: usize = 32;

/// The parts of an RFC 5803 verifier.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ScramCredentials {
    pub(crate) iterations: u32,
    pub(crate) salt: Vec<u8>,
    pub(crate) stored_key: [u8; KEY_LEN],
    pub(crate) server_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredentials").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    tag.as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes")
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    digest::digest(&digest::SHA256, data).as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl ScramCredentials {
    fn derive(password: &[u8], salt: Vec<u8>, iterations: u32) -> ScramCredentials {
        let mut salted = [0u8; KEY_LEN];
        let n = std::num::NonZeroU32::new(iterations).expect("iterations > 0");
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, password, &mut salted);
        let client_key = hmac_sha256(&salted, b"Client Key");
        ScramCredentials {
            iterations,
            salt,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// Parses `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub(crate) fn parse(verifier: &str) -> Option<ScramCredentials> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iter.parse().ok().filter(|&i| i > 0)?;
        let salt = B64.decode(salt).ok().filter(|s| !s.is_empty())?;
        Some(ScramCredentials {
            iterations,
            salt,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// Makes an RFC 5803 SCRAM-SHA-256 verifier for `password` with a random 16-byte salt
/// (iterations below [`MIN_SCRAM_ITERATIONS`] are raised to it). CPU-heavy for high counts.
pub fn scram_verifier(password: &str, iterations: u32) -> String {
    let mut salt = vec![0u8; 16];
    random_bytes(&mut salt);
    ScramCredentials::derive(password.as_bytes(), salt, iterations.max(MIN_SCRAM_ITERATIONS)).encode()
}

/// The parsed client-first message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClientFirst<'a> {
    pub(crate) gs2_header: &'a str,
    pub(crate) bare: &'a str,
    pub(crate) username: String,
    pub(crate) nonce: &'a str,
}

/// Decodes a SCRAM `saslname` (`=2C` is ',' and `=3D` is '=').
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

pub(crate) fn parse_client_first(msg: &str) -> Option<ClientFirst<'_>> {
    let (flag, rest) = msg.split_once(',')?;
    // No channel binding: "n" (client does not support it) or "y" (client does, thinks we
    // don't). "p=..." asks for binding we cannot offer.
    if flag != "n" && flag != "y" {
        return None;
    }
    let (authzid, bare) = rest.split_once(',')?;
    if !authzid.is_empty() {
        return None;
    }
    let gs2_header = &msg[..msg.len() - bare.len()];
    let mut attrs = bare.split(',');
    let username = decode_saslname(attrs.next()?.strip_prefix("n=")?)?;
    let nonce = attrs.next()?.strip_prefix("r=")?;
    if !valid_nonce(nonce) {
        return None;
    }
    // Optional extensions may follow; a mandatory one ("m=") is refused by the grammar's
    // position rule (it would have come first, where "n=" is required).
    Some(ClientFirst { gs2_header, bare, username, nonce })
}

/// The device behind a SCRAM exchange, as found at the start.
#[derive(Debug)]
pub(crate) enum ScramSubject {
    /// A device with a verifier.
    Device(Box<Device>, ScramCredentials),
    /// No such device, or no verifier: the exchange runs against fake credentials and fails.
    Unknown,
}

#[derive(Debug)]
enum State {
    WaitingFinal { client_first_bare: String, server_first: String, nonce: String, gs2_header: String },
    Done,
}

/// The server side of one SCRAM-SHA-256 exchange.
pub(crate) struct ScramServer {
    state: State,
    subject: ScramSubject,
    creds: ScramCredentials,
    /// The CONNECT's client id (the device's must equal it).
    client_id: String,
    username: String,
    peer: SocketAddr,
    /// The listener the client connected to (for the log).
    listener: String,
    backoff: Arc<Backoff>,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServer")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("done", &matches!(self.state, State::Done))
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Starts an exchange: answers the client-first message with the server-first message.
    /// `fake_salt` is a per-user-name constant used when the subject is unknown, so the
    /// challenge does not reveal whether the device exists.
    pub(crate) fn start(
        first: &ClientFirst<'_>,
        subject: ScramSubject,
        fake_salt: [u8; 16],
        info: &ConnectInfo<'_>,
        backoff: Arc<Backoff>,
    ) -> (ScramServer, AuthStep) {
        let creds = match &subject {
            ScramSubject::Device(_, c) => c.clone(),
            ScramSubject::Unknown => ScramCredentials {
                iterations: DEFAULT_SCRAM_ITERATIONS,
                salt: fake_salt.to_vec(),
                stored_key: [0; KEY_LEN],
                server_key: [0; KEY_LEN],
            },
        };
        let mut snonce = [0u8; 18];
        random_bytes(&mut snonce);
        let nonce = format!("{}{}", first.nonce, B64.encode(snonce));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&creds.salt), creds.iterations);
        let step = AuthStep::Continue(server_first.clone().into_bytes());
        let server = ScramServer {
            state: State::WaitingFinal {
                client_first_bare: first.bare.to_string(),
                server_first,
                nonce,
                gs2_header: first.gs2_header.to_string(),
            },
            subject,
            creds,
            client_id: info.client_id.to_string(),
            username: first.username.clone(),
            peer: info.peer,
            listener: info.listener.to_string(),
            backoff,
        };
        (server, step)
    }

    fn fail(&self, code: ReasonCode, why: &str) -> AuthStep {
        tracing::warn!(
            peer = %self.peer,
            listener = %self.listener,
            client_id = %self.client_id,
            username = %self.username,
            reason = why,
            "SCRAM-SHA-256 authentication failed"
        );
        let at = Attempt { listener: &self.listener, client_id: &self.client_id };
        self.backoff.record_failure(self.peer.ip(), Some(&self.username), at);
        AuthStep::Failure(code)
    }

    fn finish(&mut self, data: &[u8]) -> AuthStep {
        let State::WaitingFinal { client_first_bare, server_first, nonce, gs2_header } =
            std::mem::replace(&mut self.state, State::Done)
        else {
            return AuthStep::Failure(ReasonCode::ProtocolError);
        };
        let bad = ReasonCode::BadUserNameOrPassword;
        let Some(msg) = std::str::from_utf8(data).ok().filter(|m| m.len() <= MAX_MESSAGE) else {
            return self.fail(bad, "malformed client-final message");
        };
        let Some((without_proof, proof)) = msg.rsplit_once(",p=") else {
            return self.fail(bad, "client-final message without proof");
        };
        let mut attrs = without_proof.split(',');
        let cb_ok = attrs
            .next()
            .and_then(|c| c.strip_prefix("c="))
            .and_then(|c| B64.decode(c).ok())
            .is_some_and(|c| c == gs2_header.as_bytes());
        let nonce_ok = attrs.next().and_then(|r| r.strip_prefix("r=")) == Some(nonce.as_str());
        if !cb_ok || !nonce_ok {
            return self.fail(bad, "channel binding or nonce mismatch");
        }
        let Some(proof) = B64.decode(proof).ok().filter(|p| p.len() == KEY_LEN) else {
            return self.fail(bad, "malformed proof");
        };
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac_sha256(&self.creds.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; KEY_LEN];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(client_signature)) {
            *k = p ^ s;
        }
        let proof_ok: bool = sha256(&client_key).ct_eq(&self.creds.stored_key).into();
        let device = match &self.subject {
            ScramSubject::Device(d, _) if proof_ok => d,
            _ => return self.fail(bad, "wrong password or unknown user"),
        };
        if !device.enabled {
            return self.fail(ReasonCode::NotAuthorized, "device disabled");
        }
        if device.client_id != self.client_id {
            return self.fail(ReasonCode::NotAuthorized, "client id is not the device's");
        }
        let principal = Principal {
            client_id: device.client_id.clone(),
            username: Some(crate::authenticator::device_identity(
                device.username.as_deref(),
                &device.client_id,
            )),
            expires_at: None,
            inline_acl: None,
            limits: crate::authenticator::device_limits(device),
        };
        self.backoff.record_success(Some(&self.username));
        tracing::info!(
            peer = %self.peer,
            listener = %self.listener,
            client_id = %principal.client_id,
            method = "scram-sha-256",
            "client authenticated"
        );
        let server_signature = hmac_sha256(&self.creds.server_key, auth_message.as_bytes());
        AuthStep::Success(principal, Some(format!("v={}", B64.encode(server_signature)).into_bytes()))
    }
}

impl EnhancedAuth for ScramServer {
    fn step<'a>(&'a mut self, data: &'a [u8]) -> AuthFuture<'a, AuthStep> {
        let step = self.finish(data);
        Box::pin(std::future::ready(step))
    }
}

/// A per-user-name constant salt for unknown users: HMAC(secret, name), so the same unknown
/// name always gets the same salt, as a real one would.
pub(crate) fn fake_salt(secret: &[u8; 32], username: &str) -> [u8; 16] {
    let mac = hmac_sha256(secret, username.as_bytes());
    mac[..16].try_into().expect("16 of 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil", 4096 iterations.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let c = ScramCredentials::derive(b"pencil", salt, 4096);
        let v = c.encode();
        let parsed = ScramCredentials::parse(&v).unwrap();
        assert_eq!(parsed, c);
        // ServerSignature of the RFC's exchange.
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let sig = hmac_sha256(&c.server_key, auth_message.as_bytes());
        assert_eq!(B64.encode(sig), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        // The RFC's ClientProof verifies against the StoredKey.
        let proof = B64.decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").unwrap();
        let client_sig = hmac_sha256(&c.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(client_sig).map(|(p, s)| p ^ s).collect();
        assert_eq!(sha256(&client_key), c.stored_key);
    }

    #[test]
    fn client_first_parsing() {
        let f = parse_client_first("n,,n=us=2Cer=3D,r=abc").unwrap();
        assert_eq!(
            (f.gs2_header, f.bare, f.username.as_str(), f.nonce),
            ("n,,", "n=us=2Cer=3D,r=abc", "us,er=", "abc")
        );
        assert!(parse_client_first("y,,n=u,r=abc").is_some());
        for bad in [
            "p=tls-unique,,n=u,r=a",
            "n,a=admin,n=u,r=a",
            "n,,n=u",
            "n,,r=a,n=u",
            "n,,n=u=41,r=a",
            "n,,n=,r=a",
            "n,,n=u,r=",
        ] {
            assert!(parse_client_first(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn verifier_format_and_minimum_iterations() {
        let v = scram_verifier("pw", 1);
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        let c = ScramCredentials::parse(&v).unwrap();
        assert_eq!(c.salt.len(), 16);
        assert!(!format!("{c:?}").contains(&B64.encode(c.stored_key)));
        assert!(ScramCredentials::parse("SCRAM-SHA-1$4096:AA==$AA==:AA==").is_none());
    }
}
