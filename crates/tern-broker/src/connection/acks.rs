//! Acknowledgements that wait for store commits, sent in the order MQTT requires.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tern_protocol::{Packet, ReasonCode};
use tokio::sync::oneshot;
use tracing::debug;

use super::{Close, Conn};
use crate::persist::CommitResult;
use crate::session::RetainedBatch;
use crate::store::StoreError;

/// What to do when the commit an acknowledgement waits for fails.
#[derive(Debug)]
pub(crate) enum OnFail {
    /// Send this packet instead (an MQTT 5 error reason code).
    Send(Packet),
    /// Forget the inbound QoS 2 packet id (so the client's retry is not taken for a
    /// duplicate), then send this packet if any.
    ForgetInbound(u16, Option<Packet>),
    /// Send nothing (MQTT 3.x has no negative acknowledgement).
    Nothing,
    /// Restore the inbound QoS 2 packet id the store still holds, then close.
    RestoreInbound(u16),
    /// Close the connection: the client resends after reconnecting.
    Close,
}

/// An acknowledgement waiting for a store commit, or queued behind one to keep the order
/// MQTT requires (MQTT-4.6.0-2).
#[derive(Debug)]
pub(crate) struct DeferredAck {
    pub(crate) commit: Option<oneshot::Receiver<CommitResult>>,
    pub(crate) result: Option<CommitResult>,
    pub(crate) packet: Option<Packet>,
    pub(crate) on_fail: OnFail,
    /// Retained messages to queue once the acknowledgement is written (they follow their
    /// SUBACK).
    pub(crate) then: Option<RetainedBatch>,
}

impl Conn {
    /// Sends `packet` once `commit` succeeds (or at once without one), after every earlier
    /// acknowledgement; `then` are deliveries to queue after it is written.
    pub(crate) fn send_after(
        &mut self,
        commit: Option<oneshot::Receiver<CommitResult>>,
        packet: Option<Packet>,
        on_fail: OnFail,
        then: Option<RetainedBatch>,
    ) {
        if commit.is_none() && self.acks.is_empty() {
            if let Some(p) = &packet {
                self.write_packet(p);
            }
            self.queue_after(then);
            return;
        }
        if matches!(packet, Some(Packet::PubAck(_))) {
            // An inbound QoS 1 PUBLISH stays in the client's window until its PUBACK.
            self.unacked_qos1 += 1;
        }
        self.acks.push_back(DeferredAck { commit, result: None, packet, on_fail, then });
    }

    /// Records the result of the commit the front acknowledgement waited for, then sends what
    /// can be sent.
    pub(super) fn front_committed(&mut self, r: CommitResult) -> Result<(), Close> {
        if let Some(front) = self.acks.front_mut() {
            front.commit = None;
            front.result = Some(r);
        }
        self.drain_acks()
    }

    /// Sends every acknowledgement at the front of the queue whose commit has resolved.
    pub(super) fn drain_acks(&mut self) -> Result<(), Close> {
        while let Some(front) = self.acks.front_mut() {
            let result = match &mut front.commit {
                None => front.result.take().unwrap_or(Ok(())),
                Some(rx) => match rx.try_recv() {
                    Ok(r) => r,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => persister_stopped(),
                },
            };
            let Some(ack) = self.acks.pop_front() else { break };
            if matches!(ack.packet, Some(Packet::PubAck(_))) {
                self.unacked_qos1 -= 1;
            }
            match result {
                Ok(()) => {
                    if let Some(p) = &ack.packet {
                        self.write_packet(p);
                    }
                    self.queue_after(ack.then);
                }
                Err(e) => {
                    debug!(error = %e, "store commit failed; acknowledgement withheld");
                    match ack.on_fail {
                        OnFail::Send(p) => {
                            self.write_packet(&p);
                        }
                        OnFail::ForgetInbound(id, p) => {
                            self.session.lock().inbound_qos2.remove(&id);
                            if let Some(p) = p {
                                self.write_packet(&p);
                            }
                        }
                        OnFail::Nothing => {}
                        OnFail::RestoreInbound(id) => {
                            self.session.lock().inbound_qos2.insert(id);
                            return Err(Close::Server(ReasonCode::UnspecifiedError));
                        }
                        OnFail::Close => return Err(Close::Server(ReasonCode::UnspecifiedError)),
                    }
                }
            }
        }
        if self.acks.is_empty() && self.acks.capacity() > 16 {
            // A burst of acknowledgements waiting for commits grew it; an idle connection
            // must not keep that (each slot is a whole packet).
            self.acks = VecDeque::new();
        }
        Ok(())
    }
}

/// Waits for the commit at the front of the acknowledgement queue.
pub(super) async fn wait_front_commit(acks: &mut VecDeque<DeferredAck>) -> CommitResult {
    std::future::poll_fn(|cx| poll_front_commit(acks, cx)).await
}

/// Polls the commit the acknowledgement at the front of the queue waits for (pending if it
/// waits for none).
pub(super) fn poll_front_commit(
    acks: &mut VecDeque<DeferredAck>,
    cx: &mut Context<'_>,
) -> Poll<CommitResult> {
    match acks.front_mut().and_then(|a| a.commit.as_mut()) {
        Some(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or_else(|_| persister_stopped())),
        None => Poll::Pending,
    }
}

/// The result of a commit whose persister is gone.
fn persister_stopped() -> CommitResult {
    Err(StoreError::Unavailable("persister stopped".into()))
}
