//! MQTT 5 re-authentication (4.12.1): a client that connected with an Authentication
//! Method may send AUTH 0x19 at any time to run the exchange again (e.g. SCRAM with new
//! credentials) while the connection keeps serving. Success replaces the principal (its
//! authorization decisions and credential expiry with it); failure closes the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tern_protocol::{Auth, AuthProperties, ByteStr, Packet, ReasonCode};
use tracing::{debug, info};

use super::{Close, Conn};
use crate::auth::{AuthStep, CertIdentity, ConnectInfo, EnhancedAuth};

/// The result of one step of the exchange: the state to continue with, and the step.
pub(super) type StepOut = (Option<Box<dyn EnhancedAuth>>, AuthStep);

/// What a connection that used enhanced authentication keeps for re-authenticating.
pub(crate) struct ReAuth {
    /// The method agreed at CONNECT; a re-authentication must use the same one.
    method: ByteStr,
    listener: Arc<str>,
    cert: Option<CertIdentity>,
    state: State,
}

enum State {
    Idle,
    /// The authenticator is working on the client's last AUTH.
    Running(Pin<Box<dyn Future<Output = StepOut> + Send>>),
    /// Waiting for the client's next AUTH 0x18.
    AwaitingClient(Box<dyn EnhancedAuth>),
}

impl std::fmt::Debug for ReAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Idle => "idle",
            State::Running(_) => "running",
            State::AwaitingClient(_) => "awaiting client",
        };
        f.debug_struct("ReAuth")
            .field("method", &self.method)
            .field("listener", &self.listener)
            .field("cert", &self.cert)
            .field("state", &state)
            .finish()
    }
}

impl ReAuth {
    pub(crate) fn new(method: ByteStr, listener: Arc<str>, cert: Option<CertIdentity>) -> ReAuth {
        ReAuth { method, listener, cert, state: State::Idle }
    }

    /// Polls the authenticator's step under way, if any.
    pub(super) fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<StepOut> {
        match &mut self.state {
            State::Running(fut) => fut.as_mut().poll(cx),
            _ => Poll::Pending,
        }
    }
}

impl Conn {
    /// Handles a client's AUTH packet.
    pub(super) fn on_auth(&mut self, a: &Auth) -> Result<(), Close> {
        // AUTH without an agreed method at CONNECT is a protocol error (MQTT 4.12.0); so is
        // a different method (MQTT-4.12.0-5), or a packet out of turn.
        let Some(re) = self.reauth.as_deref_mut() else {
            return Err(Close::Server(ReasonCode::ProtocolError));
        };
        if a.properties.authentication_method.as_ref() != Some(&re.method) {
            return Err(Close::Server(ReasonCode::ProtocolError));
        }
        let data = a.properties.authentication_data.clone().unwrap_or_default();
        match (a.reason_code, std::mem::replace(&mut re.state, State::Idle)) {
            (ReasonCode::ReAuthenticate, State::Idle) => {
                let authenticator = self.broker.authenticator.clone();
                let method = re.method.to_string();
                let listener = re.listener.clone();
                let cert = re.cert.clone();
                let client_id = self.client_id.to_string();
                let username = self.principal.username.clone();
                let peer: SocketAddr = self.peer;
                re.state = State::Running(Box::pin(async move {
                    let info = ConnectInfo {
                        client_id: &client_id,
                        username: username.as_deref(),
                        password: None,
                        peer,
                        listener: &listener,
                        cert: cert.as_ref(),
                        protocol: 5,
                    };
                    match authenticator.start_enhanced(&method, &data, &info).await {
                        Ok((state, step)) => (Some(state), step),
                        Err(code) => (None, AuthStep::Failure(code)),
                    }
                }));
                Ok(())
            }
            (ReasonCode::ContinueAuthentication, State::AwaitingClient(mut state)) => {
                re.state = State::Running(Box::pin(async move {
                    let step = state.step(&data).await;
                    (Some(state), step)
                }));
                Ok(())
            }
            _ => Err(Close::Server(ReasonCode::ProtocolError)),
        }
    }

    /// Acts on a finished step of the authenticator.
    pub(super) fn reauth_step(&mut self, (state, step): StepOut) -> Result<(), Close> {
        let Some(re) = self.reauth.as_deref_mut() else { return Ok(()) };
        let method = re.method.clone();
        let (code, data) = match step {
            AuthStep::Continue(data) => {
                let Some(state) = state else { return Err(Close::Server(ReasonCode::UnspecifiedError)) };
                re.state = State::AwaitingClient(state);
                (ReasonCode::ContinueAuthentication, Some(data))
            }
            AuthStep::Failure(code) => {
                info!(peer = %self.peer, listener = %self.listener.name, client_id = %self.client_id, %code, "re-authentication failed");
                // Authenticators answer in CONNACK codes (e.g. 0x86), which a DISCONNECT
                // cannot carry: those become 0x87 Not authorized.
                let code = if code.valid_for(tern_protocol::PacketKind::Disconnect) {
                    code
                } else {
                    ReasonCode::NotAuthorized
                };
                return Err(Close::Server(code));
            }
            AuthStep::Success(principal, data) => {
                re.state = State::Idle;
                // The session belongs to the principal that created it: re-authenticating
                // as someone else does not hand it over.
                if principal.username != self.principal.username {
                    info!(peer = %self.peer, listener = %self.listener.name, client_id = %self.client_id, "re-authenticated as another principal");
                    return Err(Close::Server(ReasonCode::NotAuthorized));
                }
                debug!("re-authenticated");
                let now = Instant::now();
                self.auth_timer = principal.expires_at.map(|t| {
                    let left = t.duration_since(SystemTime::now()).unwrap_or_default();
                    Box::pin(tokio::time::sleep_until((now + left).into()))
                });
                self.principal = principal;
                // Decisions cached for the old credentials (e.g. a JWT's inline rules) go.
                self.acl_cache = None;
                (ReasonCode::Success, data)
            }
        };
        let auth = Auth {
            reason_code: code,
            properties: AuthProperties {
                authentication_method: Some(method),
                authentication_data: data.map(Bytes::from),
                ..AuthProperties::default()
            },
        };
        self.write_packet(&Packet::Auth(auth));
        Ok(())
    }
}
