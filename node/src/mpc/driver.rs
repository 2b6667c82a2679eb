//! The session driver: the one place where the protocols' cores meet the network, the
//! clock and the task runtime. Signing ([`sign`](super::sign)) and policy change
//! ([`policy_change`](super::policy_change)) hand their I/O-free cores' messages to it; DKG
//! and aggregation use the same sends, retry policy and session runner.
//!
//! - [`send`](MpcEngine::send) / [`broadcast`](MpcEngine::broadcast): every MPC message
//!   leaves through here, counted; whether a failed send is tried again is decided by one
//!   function, [`retry_after`], on the peer's typed acknowledgement (never on its text).
//! - [`spawn_participant`](MpcEngine::spawn_participant): a holder's side of a session
//!   (an inbox open to the coordinator only, its own task, the session runner) for every
//!   invitation a core accepted.
//! - [`run_session`](MpcEngine::run_session): the span, metrics and outcome log of a
//!   session, and the `Abort` to the others when it fails.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::join_all;
use libp2p::PeerId;
use tracing::{Instrument, info, info_span, warn};

use super::session::{SessionError, SessionInbox};
use super::wire::{Body, MpcMessage, Protocol, SessionId};
use super::{InviteRefusal, MpcEngine};
use crate::mpc::transport::{MpcSendError, TransportError};

/// Most times a message is sent again to a peer that answered busy.
const BUSY_RETRIES: u32 = 5;
/// The wait before the first retry; it doubles with each one (about 0.6 s in all).
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(20);

/// The retry policy of every MPC send: after `error` on attempt `attempt` (0 for the first
/// send), how long to wait before sending the same message again, or `None` to give up.
/// Only a peer that answered busy (a full queue or cap: `MpcAck::Busy`) is tried again;
/// a refusal by policy, a rejection, a finished session and an unreachable peer are final
/// for this message (the protocol decides what to do next: invite another holder, catch
/// up, abort).
pub fn retry_after(error: &MpcSendError, attempt: u32) -> Option<Duration> {
    match error {
        MpcSendError::Busy { .. } if attempt < BUSY_RETRIES => {
            Some(FIRST_RETRY_WAIT * 2u32.saturating_pow(attempt))
        }
        _ => None,
    }
}

impl MpcEngine {
    /// Sends one message, counting it, and sends it again as [`retry_after`] says.
    pub(super) async fn send(
        &self,
        peer: PeerId,
        session: SessionId,
        body: Body,
    ) -> Result<(), MpcSendError> {
        let protocol = body.protocol().map(Protocol::as_str).unwrap_or("any");
        if let Some(path) = &self.inner.faults.partition_file
            && super::faults::partitioned(path, &self.inner.local, &peer)
        {
            return Err(MpcSendError::Unreachable {
                peer,
                message: "partitioned (test fault)".into(),
            });
        }
        let message = MpcMessage::new(session, body);
        let mut attempt = 0;
        loop {
            self.inner
                .metrics
                .messages
                .with_label_values(&[protocol, "sent"])
                .inc();
            match self.inner.network.send_mpc(peer, message.clone()).await {
                Err(e) => match retry_after(&e, attempt) {
                    Some(wait) => {
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => return Err(e),
                },
                Ok(()) => return Ok(()),
            }
        }
    }

    /// Sends `body` to every peer in `to` at once; returns the peers it could not reach.
    pub(super) async fn broadcast(
        &self,
        to: &[PeerId],
        session: SessionId,
        body: &Body,
    ) -> Vec<(PeerId, MpcSendError)> {
        let sends = to.iter().map(|p| {
            let body = body.clone();
            async move { (*p, self.send(*p, session, body).await) }
        });
        join_all(sends)
            .await
            .into_iter()
            .filter_map(|(p, r)| r.err().map(|e| (p, e)))
            .collect()
    }

    /// Sends each `(peer, body)` of one round at once; when any cannot be delivered, the
    /// session ends with the reason `inbox` gives for it (a peer's own abort, or who was
    /// unreachable during `what`).
    pub(super) async fn send_round(
        &self,
        inbox: &mut SessionInbox,
        messages: Vec<(PeerId, Body)>,
        what: &str,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let sends = messages.into_iter().map(|(peer, body)| async move {
            self.send(peer, session, body)
                .await
                .err()
                .map(|e| (peer, e))
        });
        let failures: Vec<_> = join_all(sends).await.into_iter().flatten().collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(inbox.explain_failures(failures, what).await)
        }
    }

    /// [`send_round`](Self::send_round) of the same `body` to every peer in `to`.
    pub(super) async fn broadcast_round(
        &self,
        inbox: &mut SessionInbox,
        to: &[PeerId],
        body: &Body,
        what: &str,
    ) -> Result<(), SessionError> {
        let messages = to.iter().map(|p| (*p, body.clone())).collect();
        self.send_round(inbox, messages, what).await
    }

    /// Before a coordinator starts a session with `peers`: the error that names those (other
    /// than this node) not connected over the MPC protocol, if any.
    pub(super) async fn unconnected(
        &self,
        peers: &[PeerId],
    ) -> Result<Option<String>, TransportError> {
        let connected = self.inner.network.mpc_peers().await?;
        let unknown: Vec<PeerId> = peers
            .iter()
            .filter(|p| **p != self.inner.local && !connected.contains(p))
            .copied()
            .collect();
        Ok((!unknown.is_empty()).then(|| {
            format!(
                "not connected to participant(s) {} over the MPC protocol (check the peer ids and GET /v1/peers)",
                super::session::join_peers(&unknown)
            )
        }))
    }

    /// Runs this node's side of `session` as a participant: opens the session's inbox to
    /// messages from `peers` only (the coordinator, for signing and policy change; every
    /// other participant, for a DKG), and runs `side` (given the engine and the inbox) in
    /// its own task under [`run_session`](Self::run_session). An error to open the inbox
    /// (the session exists already) refuses the invitation.
    pub(super) fn spawn_participant<F, Fut>(
        &self,
        protocol: Protocol,
        session: SessionId,
        peers: Vec<PeerId>,
        side: F,
    ) -> Result<(), InviteRefusal>
    where
        F: FnOnce(MpcEngine, SessionInbox) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), SessionError>> + Send + 'static,
    {
        let inbox = self
            .inner
            .router
            .open(session, protocol, peers.iter().copied())
            .map_err(|e| InviteRefusal::Other(e.to_string()))?;
        let engine = self.clone();
        tokio::spawn(
            async move {
                let run = side(engine.clone(), inbox);
                let _ = engine
                    .run_session(protocol, "participant", session, peers, run)
                    .await;
            }
            .in_current_span(),
        );
        Ok(())
    }

    /// Sends `body` to `to` in `session` from a task of its own: the answer to a question
    /// (an invitation that opens no session here), which the router must not wait for.
    pub(super) fn reply(&self, to: PeerId, session: SessionId, body: Body) {
        let engine = self.clone();
        tokio::spawn(
            async move {
                let _ = engine.send(to, session, body).await;
            }
            .in_current_span(),
        );
    }

    /// Tells `to` that this node gives up on `session` (best effort, in the background).
    pub(super) fn abort_others(
        &self,
        to: Vec<PeerId>,
        session: SessionId,
        reason: String,
        blamed: &[PeerId],
    ) {
        let engine = self.clone();
        let blamed = blamed.iter().map(ToString::to_string).collect();
        tokio::spawn(async move {
            let body = Body::Abort { reason, blamed };
            let _ = engine.broadcast(&to, session, &body).await;
        });
    }

    /// Runs one session future with metrics, a span and an outcome log line.
    pub(super) async fn run_session<T>(
        &self,
        protocol: Protocol,
        role: &'static str,
        session: SessionId,
        others: Vec<PeerId>,
        fut: impl Future<Output = Result<T, SessionError>>,
    ) -> Result<T, SessionError> {
        let span =
            info_span!("mpc_session", session = %session, protocol = protocol.as_str(), role);
        let m = &self.inner.metrics;
        let p = protocol.as_str();
        m.sessions_started.with_label_values(&[p, role]).inc();
        let start = Instant::now();
        let result = fut.instrument(span.clone()).await;
        let took = start.elapsed();
        let elapsed = took.as_secs_f64();
        let _entered = span.enter();
        let ended = match &result {
            Ok(_) => super::activity::Ended {
                outcome: "completed",
                error: None,
                blamed: &[],
            },
            Err(e) => super::activity::Ended {
                outcome: e.outcome_label(),
                error: Some(e.reason()),
                blamed: e.blamed(),
            },
        };
        self.inner.sessions.record(
            session.to_string(),
            p,
            role,
            self.inner.local,
            &others,
            took,
            ended,
        );
        match &result {
            Ok(_) => {
                m.sessions_completed.with_label_values(&[p]).inc();
                m.session_duration_seconds
                    .with_label_values(&[p, "completed"])
                    .observe(elapsed);
                info!(
                    outcome = "completed",
                    seconds = elapsed,
                    "MPC session ended"
                );
            }
            Err(e) => {
                let outcome = e.outcome_label();
                m.sessions_failed.with_label_values(&[p, outcome]).inc();
                m.session_duration_seconds
                    .with_label_values(&[p, outcome])
                    .observe(elapsed);
                warn!(outcome, error = %e, seconds = elapsed, "MPC session ended");
                self.abort_others(others, session, e.reason().to_string(), e.blamed());
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_busy_peer_is_tried_again_a_few_times_with_a_growing_wait() {
        let peer = PeerId::random();
        let busy = MpcSendError::Busy {
            peer,
            reason: "queue full".into(),
        };
        let waits: Vec<Duration> = (0..)
            .map_while(|attempt| retry_after(&busy, attempt))
            .collect();
        assert_eq!(waits.len(), BUSY_RETRIES as usize);
        assert!(waits.windows(2).all(|w| w[1] == w[0] * 2), "{waits:?}");
        let total: Duration = waits.iter().sum();
        assert!(total < Duration::from_secs(1), "{total:?}");
        let finals = [
            MpcSendError::Rejected {
                peer,
                reason: "not a participant".into(),
            },
            MpcSendError::Refused {
                peer,
                rule: "expired".into(),
                reason: "late".into(),
            },
            MpcSendError::Finished {
                peer,
                reason: "over".into(),
            },
            MpcSendError::Unreachable {
                peer,
                message: "gone".into(),
            },
        ];
        for e in &finals {
            assert_eq!(retry_after(e, 0), None, "{e}");
        }
    }
}
