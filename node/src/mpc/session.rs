//! The session layer: routes inbound MPC messages to their sessions by session id, checks that
//! the sender is a participant, buffers messages that arrive before their session is known,
//! and gives each session a way to collect one round with a deadline.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::metrics::MpcMetrics;
use super::wire::{Body, MpcAck, MpcMessage, Protocol, SessionId, cut_text};
use crate::mpc::transport::MpcSendError;

/// Capacity of one session's inbox.
const INBOX_CAPACITY: usize = 256;
/// Sessions whose messages may wait for the session to be known.
const MAX_EARLY_SESSIONS: usize = 256;
/// Messages kept per not-yet-known session.
const MAX_EARLY_PER_SESSION: usize = 64;
/// Bytes of early messages one peer may have waiting (a stranger's flood cannot fill the
/// buffer for everyone; honest early messages are round-1 packages of a few KiB).
const MAX_EARLY_BYTES_PER_PEER: usize = 2 * 1024 * 1024;
/// Bytes of early messages waiting in all.
const MAX_EARLY_BYTES: usize = 16 * 1024 * 1024;
/// How long early messages wait for their session.
const EARLY_TTL: Duration = Duration::from_secs(30);
/// Messages a session keeps for its later rounds; more are dropped (a participant flooding
/// its own session only hurts that session).
const MAX_STASHED: usize = 1024;
/// What sessions may hold of inbound messages (waiting in their inboxes or kept for a later
/// round), in bytes. An honest sender has at most a window of chunks in flight in a session
/// (8 of 192 KiB) or one message per round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Of one sender's messages in one session.
    pub per_session_peer: usize,
    /// Of one sender's messages in all sessions.
    pub per_peer: usize,
    /// Of all messages in all sessions.
    pub total: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            per_session_peer: 4 * 1024 * 1024,
            per_peer: 16 * 1024 * 1024,
            total: 128 * 1024 * 1024,
        }
    }
}
/// The drop label of a message over one of the [`Budgets`] (answered busy: it fits
/// once the session has taken what it holds).
const BYTES_BUDGET: &str = "bytes_budget";
/// The drop label (metric `reason`) of a message of a finished session, answered
/// [`MpcAck::Finished`].
const FINISHED_SESSION: &str = "finished_session";
/// How long [`SessionInbox::explain`] waits for the `Abort` of a peer that finished early.
const ABORT_GRACE: Duration = Duration::from_millis(1500);
/// Finished session ids remembered, so that late and replayed messages are refused.
const MAX_FINISHED: usize = 16 * 1024;

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    Completed,
    /// Failed without anyone to blame (timeouts of the transport, local errors, ...).
    Failed(String),
    /// Aborted because of the named participants.
    Aborted {
        blamed: Vec<PeerId>,
        reason: String,
    },
}

/// Why a session did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Failed(String),
    #[error("{reason} (blamed: {})", join_peers(blamed))]
    Aborted { blamed: Vec<PeerId>, reason: String },
    /// Holders refused the request by the key's policy (each checks it itself): `rule` is
    /// the policy rule's code, `refused_by` who refused. Honest behaviour, so nobody is blamed.
    #[error(
        "refused by the key's policy ({rule}) on {}: {reason}",
        join_peers(refused_by)
    )]
    Refused {
        rule: &'static str,
        refused_by: Vec<PeerId>,
        reason: String,
    },
    /// A participant sent a protocol message of another signature scheme than the key's.
    #[error("{reason} (blamed: {from})")]
    WrongScheme {
        from: PeerId,
        got: super::scheme::Scheme,
        expected: super::scheme::Scheme,
        reason: String,
    },
}

/// Turns failed sends into a session error that names the unreachable peers.
pub fn unreachable_error(failures: Vec<(PeerId, MpcSendError)>, what: &str) -> SessionError {
    let blamed = failures.iter().map(|(p, _)| *p).collect();
    let details = failures
        .iter()
        .map(|(_, e)| e.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    SessionError::blame(blamed, format!("could not deliver {what}: {details}"))
}

impl SessionError {
    /// A failure without blame.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::Failed(reason.into())
    }

    /// An abort that blames `blamed`.
    pub fn blame(blamed: Vec<PeerId>, reason: impl Into<String>) -> Self {
        Self::Aborted {
            blamed,
            reason: reason.into(),
        }
    }

    /// What went wrong, without the list of blamed participants.
    pub fn reason(&self) -> &str {
        match self {
            Self::Failed(reason)
            | Self::Aborted { reason, .. }
            | Self::Refused { reason, .. }
            | Self::WrongScheme { reason, .. } => reason,
        }
    }

    /// The error for a protocol message `from` a participant that could not be decoded as a
    /// `what` of ciphersuite `C`: a message of another scheme is [`Self::WrongScheme`], any
    /// other is malformed; either blames the sender.
    pub fn undecodable<C: super::scheme::Suite>(
        from: PeerId,
        what: &str,
        error: super::scheme::DecodeError,
    ) -> Self {
        match error {
            super::scheme::DecodeError::OtherScheme(got) => Self::WrongScheme {
                from,
                got,
                expected: C::SCHEME,
                reason: format!(
                    "participant {from} sent a {got} {what} into a {} session; refused",
                    C::SCHEME
                ),
            },
            super::scheme::DecodeError::Malformed(e) => Self::blame(
                vec![from],
                format!("participant {from} sent a malformed {what}: {e}"),
            ),
        }
    }

    /// The typed refusal of the holders among `failures` that answered with the key's policy
    /// ([`MpcSendError::Refused`]); `None` when none did. The rule is the first refuser's (a
    /// rule this node does not know is reported as `unknown_rule`).
    pub fn refused_by_holders(failures: &[(PeerId, MpcSendError)]) -> Option<Self> {
        let mut refused_by = Vec::new();
        let mut first: Option<(&str, &str)> = None;
        for (peer, error) in failures {
            if let MpcSendError::Refused { rule, reason, .. } = error {
                refused_by.push(*peer);
                first.get_or_insert((rule.as_str(), reason.as_str()));
            }
        }
        let (rule, reason) = first?;
        Some(Self::Refused {
            rule: super::policy::rule_named(rule).unwrap_or("unknown_rule"),
            refused_by,
            reason: reason.to_string(),
        })
    }

    /// The error for an `Abort` from participant `from`: the blame it carries is kept, so a
    /// cheater caught by one participant is named by every other one too.
    pub fn from_abort(from: PeerId, reason: &str, blamed: &[String]) -> Self {
        let reason = format!("participant {from} aborted the session: {reason}");
        let blamed: Vec<PeerId> = blamed.iter().filter_map(|p| p.parse().ok()).collect();
        if blamed.is_empty() {
            Self::failed(reason)
        } else {
            Self::blame(blamed, reason)
        }
    }

    /// The outcome label of a session that ended with this error, in metrics and the
    /// session log: `failed`, `aborted` or `refused`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            Self::Failed(_) => "failed",
            Self::Aborted { .. } | Self::WrongScheme { .. } => "aborted",
            Self::Refused { .. } => "refused",
        }
    }

    /// The participants blamed, if any.
    pub fn blamed(&self) -> &[PeerId] {
        match self {
            Self::Failed(_) | Self::Refused { .. } => &[],
            Self::Aborted { blamed, .. } => blamed,
            Self::WrongScheme { from, .. } => std::slice::from_ref(from),
        }
    }

    /// The outcome this error ends a session with.
    pub fn outcome(&self) -> SessionOutcome {
        match self {
            Self::Failed(r) => SessionOutcome::Failed(r.clone()),
            Self::Refused { .. } => SessionOutcome::Failed(self.to_string()),
            Self::Aborted { blamed, reason } => SessionOutcome::Aborted {
                blamed: blamed.clone(),
                reason: reason.clone(),
            },
            Self::WrongScheme { from, reason, .. } => SessionOutcome::Aborted {
                blamed: vec![*from],
                reason: reason.clone(),
            },
        }
    }
}

/// Peer ids joined with ", ".
pub fn join_peers(peers: &[PeerId]) -> String {
    peers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `body` may be delivered to a session of `protocol`: a message of another
/// protocol never is, and a chunk only to the aggregation sessions that carry chunks (an
/// `Abort` belongs to every session).
fn belongs_to(body: &Body, protocol: Protocol) -> bool {
    match body.protocol() {
        Some(p) => p == protocol,
        None => match body {
            Body::AggChunk { .. } => {
                matches!(protocol, Protocol::AggReport | Protocol::AggCollect)
            }
            _ => true,
        },
    }
}

/// A message routed to a session.
#[derive(Debug)]
pub struct Routed {
    pub from: PeerId,
    pub body: Body,
    /// The bytes it holds of the budgets, released when the message is dropped (taken by
    /// its round, or with the session).
    _hold: Option<Hold>,
}

/// Bytes of routed messages held by sessions: per (session, sender), per sender, in all.
#[derive(Debug, Default)]
struct Ledger {
    budgets: Budgets,
    total: usize,
    by_peer: HashMap<PeerId, usize>,
    by_session_peer: HashMap<(SessionId, PeerId), usize>,
}

impl Ledger {
    /// Which budget `size` more bytes from `peer` for `session` would break, if any.
    fn over(&self, session: SessionId, peer: PeerId, size: usize) -> Option<&'static str> {
        let in_session = self
            .by_session_peer
            .get(&(session, peer))
            .copied()
            .unwrap_or(0);
        let of_peer = self.by_peer.get(&peer).copied().unwrap_or(0);
        if in_session + size > self.budgets.per_session_peer {
            Some("session")
        } else if of_peer + size > self.budgets.per_peer {
            Some("peer")
        } else if self.total + size > self.budgets.total {
            Some("total")
        } else {
            None
        }
    }

    fn add(&mut self, session: SessionId, peer: PeerId, size: usize) {
        self.total += size;
        *self.by_peer.entry(peer).or_default() += size;
        *self.by_session_peer.entry((session, peer)).or_default() += size;
    }

    fn remove(&mut self, session: SessionId, peer: PeerId, size: usize) {
        self.total = self.total.saturating_sub(size);
        if let Some(b) = self.by_peer.get_mut(&peer) {
            *b = b.saturating_sub(size);
            if *b == 0 {
                self.by_peer.remove(&peer);
            }
        }
        if let Some(b) = self.by_session_peer.get_mut(&(session, peer)) {
            *b = b.saturating_sub(size);
            if *b == 0 {
                self.by_session_peer.remove(&(session, peer));
            }
        }
    }
}

/// `size` bytes of the ledger, held while the message that carries it lives.
#[derive(Debug)]
struct Hold {
    ledger: Arc<Mutex<Ledger>>,
    gauge: prometheus::IntGauge,
    session: SessionId,
    peer: PeerId,
    size: usize,
}

impl Hold {
    /// Holds `size` bytes from `peer` for `session` if no budget is broken by them (checked
    /// and taken under one lock); otherwise names the budget.
    fn reserve(
        ledger: &Arc<Mutex<Ledger>>,
        gauge: &prometheus::IntGauge,
        session: SessionId,
        peer: PeerId,
        size: usize,
    ) -> Result<Self, &'static str> {
        let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(budget) = l.over(session, peer, size) {
            return Err(budget);
        }
        l.add(session, peer, size);
        drop(l);
        gauge.add(size as i64);
        Ok(Self {
            ledger: ledger.clone(),
            gauge: gauge.clone(),
            session,
            peer,
            size,
        })
    }

    /// Holds `size` bytes without a check (messages already bounded elsewhere).
    fn new(
        ledger: &Arc<Mutex<Ledger>>,
        gauge: &prometheus::IntGauge,
        session: SessionId,
        peer: PeerId,
        size: usize,
    ) -> Self {
        ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(session, peer, size);
        gauge.add(size as i64);
        Self {
            ledger: ledger.clone(),
            gauge: gauge.clone(),
            session,
            peer,
            size,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.session, self.peer, self.size);
        self.gauge.sub(self.size as i64);
    }
}

struct ActiveSession {
    protocol: Protocol,
    participants: HashSet<PeerId>,
    inbox: mpsc::Sender<Routed>,
    /// The peer whose invitation opened the session here (`None`: opened by this node).
    invited_by: Option<PeerId>,
}

struct EarlyMessages {
    first_seen: Instant,
    /// Sender, body and encoded size.
    messages: Vec<(PeerId, Body, usize)>,
}

#[derive(Default)]
struct Table {
    active: HashMap<SessionId, ActiveSession>,
    early: HashMap<SessionId, EarlyMessages>,
    /// Encoded bytes of early messages, in all and by sender.
    early_bytes: usize,
    early_bytes_by_peer: HashMap<PeerId, usize>,
    finished: HashSet<SessionId>,
    finished_order: VecDeque<SessionId>,
}

impl Table {
    /// Forgets the accounting of early messages that leave the buffer.
    fn release_early(&mut self, messages: &[(PeerId, Body, usize)]) {
        for (from, _, size) in messages {
            self.early_bytes = self.early_bytes.saturating_sub(*size);
            if let Some(b) = self.early_bytes_by_peer.get_mut(from) {
                *b = b.saturating_sub(*size);
                if *b == 0 {
                    self.early_bytes_by_peer.remove(from);
                }
            }
        }
    }

    fn remove_early(&mut self, session: &SessionId) -> Option<EarlyMessages> {
        let early = self.early.remove(session)?;
        self.release_early(&early.messages);
        Some(early)
    }
}

/// What the router decided for an inbound message.
#[derive(Debug)]
pub enum RouteDecision {
    /// Delivered to the session's inbox.
    Delivered,
    /// Kept until the session is known.
    Buffered,
    /// An invite for an unknown session (given back): the caller decides whether to open it.
    Invite(MpcMessage),
    /// Dropped, with the reason label (for metrics) and message (for the sender).
    Dropped {
        reason: &'static str,
        message: String,
    },
}

impl RouteDecision {
    /// The acknowledgement the sender gets.
    pub fn ack(&self) -> MpcAck {
        match self {
            RouteDecision::Delivered | RouteDecision::Buffered | RouteDecision::Invite(_) => {
                MpcAck::Accepted
            }
            // A full inbox is a moment's congestion; every other drop is final.
            RouteDecision::Dropped {
                reason: "inbox_full" | BYTES_BUDGET,
                message,
            } => MpcAck::busy(message),
            RouteDecision::Dropped {
                reason: FINISHED_SESSION,
                message,
            } => MpcAck::finished(message),
            RouteDecision::Dropped { message, .. } => MpcAck::rejected(message),
        }
    }
}

/// The table of sessions of this node; cheap to clone. Its lock is never held across an await.
#[derive(Clone)]
pub struct SessionRouter {
    table: Arc<Mutex<Table>>,
    /// Its own lock, never taken while it is held by another; a [`Hold`] takes it when
    /// dropped, which may happen while the table is locked.
    ledger: Arc<Mutex<Ledger>>,
    metrics: MpcMetrics,
}

impl fmt::Debug for SessionRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionRouter")
    }
}

impl SessionRouter {
    /// An empty router with the default [`Budgets`].
    pub fn new(metrics: MpcMetrics) -> Self {
        Self::with_budgets(metrics, Budgets::default())
    }

    /// An empty router whose sessions hold at most `budgets` of inbound messages.
    pub fn with_budgets(metrics: MpcMetrics, budgets: Budgets) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table::default())),
            ledger: Arc::new(Mutex::new(Ledger {
                budgets,
                ..Ledger::default()
            })),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dropped(&self, protocol: &str, reason: &'static str, message: String) -> RouteDecision {
        self.metrics
            .messages_dropped
            .with_label_values(&[protocol, reason])
            .inc();
        tracing::debug!(reason, %message, "MPC message dropped");
        RouteDecision::Dropped { reason, message }
    }

    /// Routes one inbound message of unknown encoded size (tests).
    #[cfg(test)]
    pub fn route(&self, from: PeerId, message: MpcMessage) -> RouteDecision {
        self.route_sized(from, message, 1)
    }

    /// Routes one inbound message that was `size` bytes on the wire.
    pub fn route_sized(&self, from: PeerId, message: MpcMessage, size: usize) -> RouteDecision {
        let protocol = message
            .body
            .protocol()
            .map(Protocol::as_str)
            .unwrap_or("any");
        self.metrics
            .messages
            .with_label_values(&[protocol, "received"])
            .inc();
        let session = message.session;
        let mut table = self.lock();
        if table.finished.contains(&session) {
            drop(table);
            return self.dropped(
                protocol,
                FINISHED_SESSION,
                format!(
                    "session {session} is over; its messages (including replayed round-2 requests) are refused"
                ),
            );
        }
        if let Some(active) = table.active.get(&session) {
            if !active.participants.contains(&from) {
                let p = active.protocol.as_str();
                drop(table);
                return self.dropped(
                    p,
                    "not_participant",
                    format!("peer {from} is not a participant of session {session}"),
                );
            }
            if !belongs_to(&message.body, active.protocol) {
                let p = active.protocol.as_str();
                drop(table);
                return self.dropped(
                    p,
                    "wrong_protocol",
                    format!(
                        "a {} message does not belong to session {session}",
                        message.body.kind()
                    ),
                );
            }
            let hold = match Hold::reserve(
                &self.ledger,
                &self.metrics.held_bytes,
                session,
                from,
                size,
            ) {
                Ok(hold) => hold,
                Err(budget) => {
                    let p = active.protocol.as_str();
                    drop(table);
                    self.metrics
                        .held_bytes_refused
                        .with_label_values(&[budget])
                        .inc_by(size as u64);
                    return self.dropped(
                            p,
                            BYTES_BUDGET,
                            format!(
                                "session {session} holds as many bytes of peer {from}'s messages as it may ({budget} budget); send again once it has taken them"
                            ),
                        );
                }
            };
            return match active.inbox.try_send(Routed {
                from,
                body: message.body,
                _hold: Some(hold),
            }) {
                Ok(()) => RouteDecision::Delivered,
                Err(_) => {
                    let p = active.protocol.as_str();
                    drop(table);
                    self.dropped(p, "inbox_full", format!("session {session} is overloaded"))
                }
            };
        }
        if message.body.is_invite() {
            return RouteDecision::Invite(message);
        }
        // Not known yet: another participant may be faster than the invite. Keep it, bounded.
        let now = Instant::now();
        let expired: Vec<SessionId> = table
            .early
            .iter()
            .filter(|(_, e)| now.duration_since(e.first_seen) >= EARLY_TTL)
            .map(|(s, _)| *s)
            .collect();
        for s in expired {
            table.remove_early(&s);
        }
        let peer_bytes = table.early_bytes_by_peer.get(&from).copied().unwrap_or(0);
        if peer_bytes + size > MAX_EARLY_BYTES_PER_PEER
            || table.early_bytes + size > MAX_EARLY_BYTES
        {
            drop(table);
            return self.dropped(
                protocol,
                "early_buffer_full",
                format!(
                    "too many bytes of messages for unknown sessions buffered; message for {session} dropped"
                ),
            );
        }
        if !table.early.contains_key(&session) && table.early.len() >= MAX_EARLY_SESSIONS {
            drop(table);
            return self.dropped(
                protocol,
                "early_buffer_full",
                format!("too many unknown sessions buffered; message for {session} dropped"),
            );
        }
        let entry = table.early.entry(session).or_insert_with(|| EarlyMessages {
            first_seen: now,
            messages: Vec::new(),
        });
        if entry.messages.len() >= MAX_EARLY_PER_SESSION {
            drop(table);
            return self.dropped(
                protocol,
                "early_buffer_full",
                format!("too many early messages for session {session}"),
            );
        }
        entry.messages.push((from, message.body, size));
        table.early_bytes += size;
        *table.early_bytes_by_peer.entry(from).or_default() += size;
        RouteDecision::Buffered
    }

    /// Registers a session and returns its inbox. Buffered messages from participants are
    /// delivered at once; buffered messages from others are dropped and counted.
    pub fn open(
        &self,
        session: SessionId,
        protocol: Protocol,
        participants: impl IntoIterator<Item = PeerId>,
    ) -> Result<SessionInbox, SessionError> {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let participants: HashSet<PeerId> = participants.into_iter().collect();
        let mut table = self.lock();
        if table.active.contains_key(&session) || table.finished.contains(&session) {
            return Err(SessionError::failed(format!(
                "session {session} already exists"
            )));
        }
        let early = table.remove_early(&session);
        let mut outsiders = 0;
        if let Some(early) = early {
            for (from, body, size) in early.messages {
                if participants.contains(&from) {
                    // Within the early buffer's own caps; held on from here.
                    let hold =
                        Hold::new(&self.ledger, &self.metrics.held_bytes, session, from, size);
                    let _ = tx.try_send(Routed {
                        from,
                        body,
                        _hold: Some(hold),
                    });
                } else {
                    outsiders += 1;
                }
            }
        }
        table.active.insert(
            session,
            ActiveSession {
                protocol,
                participants,
                inbox: tx,
                invited_by: None,
            },
        );
        drop(table);
        if outsiders > 0 {
            self.metrics
                .messages_dropped
                .with_label_values(&[protocol.as_str(), "not_participant"])
                .inc_by(outsiders);
        }
        Ok(SessionInbox {
            session,
            rx,
            stash: BTreeMap::new(),
            router: self.clone(),
        })
    }

    /// Forgets a session; later messages for it are refused.
    pub fn close(&self, session: SessionId) {
        let mut table = self.lock();
        table.active.remove(&session);
        table.remove_early(&session);
        if table.finished.insert(session) {
            table.finished_order.push_back(session);
            while table.finished_order.len() > MAX_FINISHED {
                if let Some(old) = table.finished_order.pop_front() {
                    table.finished.remove(&old);
                }
            }
        }
    }

    /// Records that `peer`'s invitation opened `session` (for the per-peer cap).
    pub fn mark_invited(&self, session: SessionId, peer: PeerId) {
        if let Some(s) = self.lock().active.get_mut(&session) {
            s.invited_by = Some(peer);
        }
    }

    /// Running sessions that `peer`'s invitations opened here.
    pub fn invited_by(&self, peer: &PeerId) -> usize {
        self.lock()
            .active
            .values()
            .filter(|s| s.invited_by.as_ref() == Some(peer))
            .count()
    }

    /// Bytes of early messages buffered, in all.
    pub fn early_bytes(&self) -> usize {
        self.lock().early_bytes
    }

    /// Sessions currently running.
    pub fn active_sessions(&self) -> usize {
        self.lock().active.len()
    }
}

/// One session's view of its inbound messages. Closing (dropping) it ends the session at
/// the router.
pub struct SessionInbox {
    session: SessionId,
    rx: mpsc::Receiver<Routed>,
    /// Messages that arrived for a later round, by kind.
    stash: BTreeMap<&'static str, Vec<Routed>>,
    router: SessionRouter,
}

impl Drop for SessionInbox {
    fn drop(&mut self) {
        self.router.close(self.session);
    }
}

impl SessionInbox {
    /// The session id.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The error of failed sends (`failures`, of `what`), explained by another
    /// participant's `Abort` when there is one (e.g. a refused send because that peer gave
    /// up). When a peer refused a message because its side of the session is over
    /// ([`MpcSendError::Finished`]), its `Abort` may still be on the way: it is awaited for a
    /// moment.
    pub async fn explain_failures(
        &mut self,
        failures: Vec<(PeerId, MpcSendError)>,
        what: &str,
    ) -> SessionError {
        let over = failures
            .iter()
            .any(|(_, e)| matches!(e, MpcSendError::Finished { .. }));
        self.explain_with(unreachable_error(failures, what), over)
            .await
    }

    /// `error`, or the reason of another participant's `Abort` already received, which
    /// explains it better.
    pub async fn explain(&mut self, error: SessionError) -> SessionError {
        self.explain_with(error, false).await
    }

    async fn explain_with(&mut self, error: SessionError, await_abort: bool) -> SessionError {
        while let Ok(m) = self.rx.try_recv() {
            self.keep_for_later(m);
        }
        if !self.stash.contains_key("abort") && await_abort {
            let deadline = tokio::time::Instant::now() + ABORT_GRACE;
            while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
                let is_abort = matches!(m.body, Body::Abort { .. });
                self.keep_for_later(m);
                if is_abort {
                    break;
                }
            }
        }
        let abort = self.stash.get("abort").and_then(|list| {
            list.iter().find_map(|m| match &m.body {
                Body::Abort { reason, blamed } => {
                    Some(SessionError::from_abort(m.from, reason, blamed))
                }
                _ => None,
            })
        });
        abort.unwrap_or(error)
    }

    fn keep_for_later(&mut self, m: Routed) {
        let stashed: usize = self.stash.values().map(Vec::len).sum();
        if stashed >= MAX_STASHED {
            tracing::debug!(from = %m.from, kind = m.body.kind(), "session stash full; message dropped");
            return;
        }
        self.stash.entry(m.body.kind()).or_default().push(m);
    }

    /// Receives the next message of kind `kind` from any peer in `from`, until `deadline`.
    ///
    /// Unlike [`collect`](Self::collect), a peer may send many messages of that kind (the
    /// chunks of one large payload), so nothing is deduplicated here. Messages of other kinds
    /// are stashed for their rounds; an `Abort` from an expected peer ends the wait.
    pub async fn next_of<T>(
        &mut self,
        kind: &'static str,
        from: &[PeerId],
        deadline: tokio::time::Instant,
        mut extract: impl FnMut(&Body) -> Option<T>,
    ) -> Result<(PeerId, T), SessionError> {
        if let Some(list) = self.stash.get_mut(kind) {
            while !list.is_empty() {
                let m = list.remove(0);
                if from.contains(&m.from)
                    && let Some(v) = extract(&m.body)
                {
                    return Ok((m.from, v));
                }
            }
        }
        loop {
            let next = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(SessionError::failed("the session was closed")),
                Err(_) => {
                    return Err(SessionError::blame(
                        from.to_vec(),
                        format!("no {kind} from {} before the deadline", join_peers(from)),
                    ));
                }
            };
            if let Body::Abort { reason, blamed } = &next.body {
                if from.contains(&next.from) {
                    return Err(SessionError::from_abort(next.from, reason, blamed));
                }
                continue;
            }
            match extract(&next.body) {
                Some(v) if from.contains(&next.from) => return Ok((next.from, v)),
                Some(_) => {}
                None => self.keep_for_later(next),
            }
        }
    }

    /// Collects one message of kind `kind` from each peer in `from`, until `deadline`.
    ///
    /// `extract` turns a body of that kind into the round's value (`None` for other kinds,
    /// which are stashed for their round). An `Abort` from any expected peer ends the round.
    /// A second, different message from the same peer for the same round is equivocation and
    /// blames that peer. When the deadline passes, the error names who did not send.
    pub async fn collect<T: PartialEq>(
        &mut self,
        kind: &'static str,
        from: &[PeerId],
        timeout: Duration,
        mut extract: impl FnMut(&Body) -> Option<T>,
    ) -> Result<BTreeMap<PeerId, T>, SessionError> {
        self.collect_some(kind, from, from.len(), timeout, &mut extract)
            .await
    }

    /// Collects one round like [`collect`](Self::collect) and hands each message, in peer
    /// order, to `receive` (a protocol core's check of it); the first refusal ends the round.
    pub async fn collect_each<T: PartialEq>(
        &mut self,
        kind: &'static str,
        from: &[PeerId],
        timeout: Duration,
        extract: impl FnMut(&Body) -> Option<T>,
        mut receive: impl FnMut(PeerId, &T) -> Result<(), SessionError>,
    ) -> Result<(), SessionError> {
        for (peer, value) in &self.collect(kind, from, timeout, extract).await? {
            receive(*peer, value)?;
        }
        Ok(())
    }

    /// Collects one message of this round from each of `from` until all have sent or the
    /// deadline passed, and returns what came: the answers, and for each peer that did not
    /// answer (aborted, sent two different answers, or was silent) why. Unlike
    /// [`collect`](Self::collect) one peer's failure does not lose the others' answers.
    pub async fn collect_until<T: PartialEq>(
        &mut self,
        kind: &'static str,
        from: &[PeerId],
        timeout: Duration,
        mut extract: impl FnMut(&Body) -> Option<T>,
    ) -> (BTreeMap<PeerId, T>, BTreeMap<PeerId, String>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let expected: HashSet<PeerId> = from.iter().copied().collect();
        let mut got: BTreeMap<PeerId, T> = BTreeMap::new();
        let mut failed: BTreeMap<PeerId, String> = BTreeMap::new();
        let mut pending: VecDeque<Routed> = self.stash.remove(kind).unwrap_or_default().into();
        while got.len() + failed.len() < expected.len() {
            let next = match pending.pop_front() {
                Some(m) => m,
                None => match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => break,
                },
            };
            if !expected.contains(&next.from) || failed.contains_key(&next.from) {
                continue;
            }
            if let Body::Abort { reason, .. } = &next.body {
                got.remove(&next.from);
                failed.insert(next.from, format!("aborted: {}", cut_text(reason, 200)));
                continue;
            }
            match extract(&next.body) {
                Some(value) => match got.get(&next.from) {
                    Some(previous) if *previous != value => {
                        got.remove(&next.from);
                        failed.insert(next.from, format!("sent two different {kind} messages"));
                    }
                    Some(_) => {}
                    None => {
                        got.insert(next.from, value);
                    }
                },
                None => self.keep_for_later(next),
            }
        }
        if !pending.is_empty() {
            self.stash.entry(kind).or_default().extend(pending);
        }
        for p in from {
            if !got.contains_key(p) && !failed.contains_key(p) {
                failed.insert(*p, format!("sent no {kind} within {timeout:?}"));
            }
        }
        (got, failed)
    }

    /// Like [`collect`](Self::collect), but returns as soon as `enough` peers have sent
    /// (the first ones to answer). Fails when fewer than `enough` sent before the deadline.
    pub async fn collect_some<T: PartialEq>(
        &mut self,
        kind: &'static str,
        from: &[PeerId],
        enough: usize,
        timeout: Duration,
        extract: &mut impl FnMut(&Body) -> Option<T>,
    ) -> Result<BTreeMap<PeerId, T>, SessionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let expected: HashSet<PeerId> = from.iter().copied().collect();
        let mut got: BTreeMap<PeerId, T> = BTreeMap::new();
        let mut pending: VecDeque<Routed> = self.stash.remove(kind).unwrap_or_default().into();
        loop {
            if got.len() >= enough {
                if !pending.is_empty() {
                    self.stash.entry(kind).or_default().extend(pending);
                }
                return Ok(got);
            }
            let next = match pending.pop_front() {
                Some(m) => m,
                None => match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err(SessionError::failed("the session was closed")),
                    Err(_) => {
                        let mut missing: Vec<PeerId> = from
                            .iter()
                            .filter(|p| !got.contains_key(p))
                            .copied()
                            .collect();
                        missing.sort();
                        return Err(SessionError::blame(
                            missing.clone(),
                            format!(
                                "{} of {} participants sent {kind} within {timeout:?}; missing: {}",
                                got.len(),
                                enough,
                                join_peers(&missing)
                            ),
                        ));
                    }
                },
            };
            if let Body::Abort { reason, blamed } = &next.body {
                if expected.contains(&next.from) {
                    return Err(SessionError::from_abort(next.from, reason, blamed));
                }
                continue;
            }
            match extract(&next.body) {
                Some(value) => {
                    if !expected.contains(&next.from) {
                        continue;
                    }
                    match got.get(&next.from) {
                        Some(previous) if *previous != value => {
                            return Err(SessionError::blame(
                                vec![next.from],
                                format!(
                                    "participant {} sent two different {kind} messages",
                                    next.from
                                ),
                            ));
                        }
                        Some(_) => {}
                        None => {
                            got.insert(next.from, value);
                        }
                    }
                }
                None => self.keep_for_later(next),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(session: SessionId, body: Body) -> MpcMessage {
        MpcMessage::new(session, body)
    }

    fn round1(byte: u8) -> Body {
        Body::DkgRound1 {
            package: vec![byte],
        }
    }

    fn extract_round1(b: &Body) -> Option<Vec<u8>> {
        match b {
            Body::DkgRound1 { package } => Some(package.clone()),
            _ => None,
        }
    }

    /// Routes messages of `size` bytes from `from` to `session` until one is refused;
    /// returns how many were delivered and the refusal.
    fn fill(
        router: &SessionRouter,
        from: PeerId,
        session: SessionId,
        size: usize,
    ) -> (usize, RouteDecision) {
        for n in 0.. {
            match router.route_sized(from, msg(session, round1(1)), size) {
                RouteDecision::Delivered => {}
                refused => return (n, refused),
            }
        }
        unreachable!()
    }

    fn busy_for_bytes(d: &RouteDecision) -> bool {
        matches!(
            d,
            RouteDecision::Dropped {
                reason: BYTES_BUDGET,
                ..
            }
        ) && matches!(d.ack(), MpcAck::Busy(_))
    }

    #[tokio::test]
    async fn held_bytes_are_budgeted_per_session_per_peer_and_in_all_and_released() {
        let metrics = MpcMetrics::unregistered();
        let router = SessionRouter::new(metrics.clone());
        let (flooder, honest) = (PeerId::random(), PeerId::random());
        let big = 200 * 1024;
        // One sender in one session: its own budget, answered busy.
        let s1 = SessionId::random();
        let mut inbox1 = router.open(s1, Protocol::Dkg, [flooder, honest]).unwrap();
        let (n, refused) = fill(&router, flooder, s1, big);
        assert_eq!(n, Budgets::default().per_session_peer / big);
        assert!(busy_for_bytes(&refused), "{refused:?}");
        // Another sender of the same session is not held back by it.
        assert!(matches!(
            router.route_sized(honest, msg(s1, round1(2)), big),
            RouteDecision::Delivered
        ));
        assert_eq!(metrics.held_bytes.get() as usize, (n + 1) * big);
        // The flooder across sessions: its budget over all of them.
        let mut inboxes = Vec::new();
        let mut in_all = n;
        loop {
            let s = SessionId::random();
            inboxes.push(router.open(s, Protocol::Dkg, [flooder]).unwrap());
            let (k, refused) = fill(&router, flooder, s, big);
            in_all += k;
            assert!(busy_for_bytes(&refused), "{refused:?}");
            if k < Budgets::default().per_session_peer / big {
                break;
            }
        }
        assert_eq!(in_all, Budgets::default().per_peer / big);
        assert!(
            metrics
                .held_bytes_refused
                .with_label_values(&["peer"])
                .get()
                > 0
        );
        assert!(
            metrics
                .held_bytes_refused
                .with_label_values(&["session"])
                .get()
                > 0
        );
        // Taking messages frees their bytes; a closed session frees all it held.
        let first = inbox1.rx.recv().await.unwrap();
        drop(first);
        assert!(matches!(
            router.route_sized(flooder, msg(s1, round1(3)), big),
            RouteDecision::Delivered
        ));
        drop(inboxes);
        drop(inbox1);
        assert_eq!(metrics.held_bytes.get(), 0);
        assert_eq!(router.ledger.lock().unwrap().total, 0);
        // Many senders together meet the budget in all.
        let mut total = 0;
        let mut keep = Vec::new();
        'senders: loop {
            let peer = PeerId::random();
            let s = SessionId::random();
            keep.push(router.open(s, Protocol::Dkg, [peer]).unwrap());
            for _ in 0..Budgets::default().per_session_peer / big {
                match router.route_sized(peer, msg(s, round1(1)), big) {
                    RouteDecision::Delivered => total += big,
                    refused => {
                        assert!(busy_for_bytes(&refused), "{refused:?}");
                        break 'senders;
                    }
                }
            }
        }
        assert!(
            total <= Budgets::default().total && total + big > Budgets::default().total,
            "{total}"
        );
        assert!(
            metrics
                .held_bytes_refused
                .with_label_values(&["total"])
                .get()
                > 0
        );
    }

    #[tokio::test]
    async fn outsiders_are_dropped_and_counted() {
        let metrics = MpcMetrics::unregistered();
        let router = SessionRouter::new(metrics.clone());
        let (a, b, outsider) = (PeerId::random(), PeerId::random(), PeerId::random());
        let s = SessionId::random();
        let mut inbox = router.open(s, Protocol::Dkg, [a, b]).unwrap();
        let d = router.route(outsider, msg(s, round1(9)));
        assert!(matches!(
            d,
            RouteDecision::Dropped {
                reason: "not_participant",
                ..
            }
        ));
        assert!(matches!(
            router.route(a, msg(s, round1(1))),
            RouteDecision::Delivered
        ));
        assert!(matches!(
            router.route(b, msg(s, round1(2))),
            RouteDecision::Delivered
        ));
        let got = inbox
            .collect(
                "dkg round 1",
                &[a, b],
                Duration::from_secs(1),
                extract_round1,
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        let dropped = metrics
            .messages_dropped
            .with_label_values(&["frost_dkg", "not_participant"])
            .get();
        assert_eq!(dropped, 1);
    }

    #[test]
    fn chunks_reach_only_the_sessions_that_carry_chunks_and_aborts_every_session() {
        let router = SessionRouter::new(MpcMetrics::unregistered());
        let peer = PeerId::random();
        let chunk = || Body::AggChunk {
            index: 0,
            data: super::super::wire::Blob(vec![0; 16].into()),
        };
        let abort = || Body::Abort {
            reason: "x".into(),
            blamed: vec![],
        };
        let mut inboxes = Vec::new();
        for (protocol, takes_chunks) in [
            (Protocol::Sign, false),
            (Protocol::Dkg, false),
            (Protocol::PolicyChange, false),
            (Protocol::Transfer, false),
            (Protocol::AggReport, true),
            (Protocol::AggCollect, true),
        ] {
            let s = SessionId::random();
            inboxes.push(router.open(s, protocol, [peer]).unwrap());
            let d = router.route(peer, msg(s, chunk()));
            if takes_chunks {
                assert!(matches!(d, RouteDecision::Delivered), "{protocol:?}: {d:?}");
            } else {
                assert!(
                    matches!(
                        d,
                        RouteDecision::Dropped {
                            reason: "wrong_protocol",
                            ..
                        }
                    ),
                    "{protocol:?}: {d:?}"
                );
            }
            let d = router.route(peer, msg(s, abort()));
            assert!(matches!(d, RouteDecision::Delivered), "{protocol:?}: {d:?}");
        }
    }

    #[test]
    fn early_bytes_are_capped_per_peer_and_released() {
        let router = SessionRouter::new(MpcMetrics::unregistered());
        let (flooder, honest) = (PeerId::random(), PeerId::random());
        let big = 200 * 1024;
        let mut buffered = 0;
        for _ in 0..100 {
            match router.route_sized(flooder, msg(SessionId::random(), round1(1)), big) {
                RouteDecision::Buffered => buffered += 1,
                RouteDecision::Dropped { reason, .. } => assert_eq!(reason, "early_buffer_full"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(buffered, MAX_EARLY_BYTES_PER_PEER / big);
        assert!(router.early_bytes() <= MAX_EARLY_BYTES_PER_PEER);
        // Another peer still gets its early messages buffered.
        let s = SessionId::random();
        assert!(matches!(
            router.route_sized(honest, msg(s, round1(2)), 1000),
            RouteDecision::Buffered
        ));
        // Opening the session releases its bytes.
        let before = router.early_bytes();
        let _inbox = router.open(s, Protocol::Dkg, [honest]).unwrap();
        assert_eq!(router.early_bytes(), before - 1000);
    }

    #[test]
    fn sessions_remember_who_invited_them() {
        let router = SessionRouter::new(MpcMetrics::unregistered());
        let peer = PeerId::random();
        let inboxes: Vec<_> = (0..3)
            .map(|_| {
                let s = SessionId::random();
                let inbox = router.open(s, Protocol::Sign, [peer]).unwrap();
                router.mark_invited(s, peer);
                inbox
            })
            .collect();
        let _own = router
            .open(SessionId::random(), Protocol::Sign, [peer])
            .unwrap();
        assert_eq!(router.invited_by(&peer), 3);
        drop(inboxes);
        assert_eq!(router.invited_by(&peer), 0);
    }

    #[tokio::test]
    async fn early_messages_are_delivered_once_the_session_opens() {
        let router = SessionRouter::new(MpcMetrics::unregistered());
        let (a, outsider) = (PeerId::random(), PeerId::random());
        let s = SessionId::random();
        assert!(matches!(
            router.route(a, msg(s, round1(1))),
            RouteDecision::Buffered
        ));
        assert!(matches!(
            router.route(outsider, msg(s, round1(2))),
            RouteDecision::Buffered
        ));
        let mut inbox = router.open(s, Protocol::Dkg, [a]).unwrap();
        let got = inbox
            .collect("dkg round 1", &[a], Duration::from_secs(1), extract_round1)
            .await
            .unwrap();
        assert_eq!(got[&a], vec![1]);
    }

    #[tokio::test]
    async fn an_abort_keeps_the_blame_it_carries() {
        let router = SessionRouter::new(MpcMetrics::unregistered());
        let (a, b, cheater) = (PeerId::random(), PeerId::random(), PeerId::random());
        let s = SessionId::random();
        let mut inbox = router.open(s, Protocol::Dkg, [a, b]).unwrap();
        router.route(
            a,
            msg(
                s,
                Body::Abort {
                    reason: "caught a cheater".into(),
                    blamed: vec![cheater.to_string()],
                },
            ),
        );
        let err = inbox
            .collect(
                "dkg round 1",
                &[a, b],
                Duration::from_secs(1),
                extract_round1,
            )
            .await
            .unwrap_err();
        assert_eq!(err.blamed(), &[cheater]);
        assert!(
            err.to_string()
                .contains(&format!("participant {a} aborted")),
            "{err}"
        );
        assert_eq!(err.to_string().matches("blamed").count(), 1, "{err}");
    }

    #[tokio::test]
    async fn deadline_names_the_missing_participant() {
        let router = SessionRouter::new(MpcMetrics::unregistered());
        let (a, b) = (PeerId::random(), PeerId::random());
        let s = SessionId::random();
        let mut inbox = router.open(s, Protocol::Dkg, [a, b]).unwrap();
        router.route(a, msg(s, round1(1)));
        let err = inbox
            .collect(
                "dkg round 1",
                &[a, b],
                Duration::from_millis(50),
                extract_round1,
            )
            .await
            .unwrap_err();
        assert_eq!(err.blamed(), &[b]);
        assert!(err.to_string().contains(&b.to_string()), "{err}");
    }

    #[tokio::test]
    async fn equivocation_is_blamed_and_finished_sessions_refuse_replays() {
        let router = SessionRouter::new(MpcMetrics::unregistered());
        let (a, b) = (PeerId::random(), PeerId::random());
        let s = SessionId::random();
        let mut inbox = router.open(s, Protocol::Dkg, [a, b]).unwrap();
        router.route(a, msg(s, round1(1)));
        router.route(a, msg(s, round1(2)));
        let err = inbox
            .collect(
                "dkg round 1",
                &[a, b],
                Duration::from_secs(1),
                extract_round1,
            )
            .await
            .unwrap_err();
        assert_eq!(err.blamed(), &[a]);
        drop(inbox);
        let d = router.route(a, msg(s, round1(1)));
        assert!(matches!(
            d,
            RouteDecision::Dropped {
                reason: "finished_session",
                ..
            }
        ));
        assert_eq!(router.active_sessions(), 0);
    }

    #[tokio::test]
    async fn later_rounds_are_stashed_not_lost() {
        let router = SessionRouter::new(MpcMetrics::unregistered());
        let a = PeerId::random();
        let s = SessionId::random();
        let mut inbox = router.open(s, Protocol::Dkg, [a]).unwrap();
        router.route(a, msg(s, Body::DkgRound2 { package: vec![5] }));
        router.route(a, msg(s, round1(1)));
        inbox
            .collect("dkg round 1", &[a], Duration::from_secs(1), extract_round1)
            .await
            .unwrap();
        let got = inbox
            .collect("dkg round 2", &[a], Duration::from_secs(1), |b| match b {
                Body::DkgRound2 { package } => Some(package.clone()),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(got[&a], vec![5]);
    }
}
