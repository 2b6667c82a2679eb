//! Changing a key's signing policy (`POST /v1/keys/{id}/policy`).
//!
//! The node asked coordinates: it checks the approvals under the key's current policy
//! itself, then invites every other holder, each of which checks them again under its own
//! stored policy (clients, K approvals, expiry, replay), stores the new policy and answers
//! with its digest. The coordinator stores the new policy last, once every other holder
//! stored it, so that a change that fails part-way leaves it, at least, unchanged; the
//! answer names the holders that did not confirm.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::admission::PendingAdmission;
use super::policy::{Authorization, SigningPolicy};
use super::session::{SessionError, SessionInbox, join_peers};
use super::wire::{Blob, Body, Protocol, SessionId};
use super::{InviteRefusal, MpcEngine, MpcError, parse_peers, unreachable_error};

/// The answer of a completed policy change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyChangeResponse {
    pub key_id: String,
    /// The policy now in force on every holder.
    pub policy: SigningPolicy,
    pub session_id: String,
}

impl MpcEngine {
    /// Replaces key `key_id`'s policy with `new_policy` on every holder.
    pub async fn change_policy(
        &self,
        key_id: &str,
        new_policy: SigningPolicy,
        authorizations: Vec<Authorization>,
    ) -> Result<PolicyChangeResponse, MpcError> {
        let key = self
            .inner
            .store
            .get(key_id)
            .ok_or_else(|| MpcError::UnknownKey(key_id.to_string()))?;
        let new_policy = new_policy
            .normalized()
            .map_err(|m| MpcError::BadRequest(format!("policy: {m}")))?;
        // The approvals' request ids are on disk before any holder is asked.
        let _admitted = self
            .admit_policy_change(&key.info, &new_policy, &authorizations)?
            .persist()
            .await?;
        let local = self.inner.local;
        let others: Vec<PeerId> = parse_peers(&key.info.participants)
            .map_err(MpcError::Internal)?
            .into_iter()
            .filter(|p| *p != local)
            .collect();
        let session = SessionId::random();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::PolicyChange, others.clone())
            .map_err(|error| MpcError::Session { session, error })?;
        let invite = Body::PolicyInvite {
            key_id: key_id.to_string(),
            policy: Blob(new_policy.to_bytes().into()),
            authorizations,
        };
        let digest = new_policy.digest();
        let engine = self.clone();
        let others2 = others.clone();
        let policy2 = new_policy.clone();
        let id = key_id.to_string();
        let run = async move {
            let failures = engine.broadcast(&others2, session, &invite).await;
            if let Some(refused) = SessionError::refused_by_holders(&failures) {
                return Err(refused);
            }
            if !failures.is_empty() {
                return Err(inbox
                    .explain(unreachable_error(failures, "the policy change"))
                    .await);
            }
            let stored = inbox
                .collect(
                    "policy stored",
                    &others2,
                    engine.inner.round_timeout,
                    |b| match b {
                        Body::PolicyStored { digest } => Some(*digest),
                        _ => None,
                    },
                )
                .await?;
            let wrong: Vec<PeerId> = stored
                .iter()
                .filter(|(_, d)| **d != digest)
                .map(|(p, _)| *p)
                .collect();
            if !wrong.is_empty() {
                return Err(SessionError::blame(
                    wrong.clone(),
                    format!("holder {} stored a different policy", join_peers(&wrong)),
                ));
            }
            engine
                .inner
                .store
                .set_policy(&id, policy2)
                .await
                .map_err(|e| SessionError::failed(e.to_string()))?;
            Ok(())
        };
        self.run_session(Protocol::PolicyChange, "coordinator", session, others, run)
            .await
            .map_err(|error| MpcError::Session { session, error })?;
        Ok(PolicyChangeResponse {
            key_id: key_id.to_string(),
            policy: new_policy,
            session_id: session.to_string(),
        })
    }

    /// Answers a policy change invitation: checks the approvals under this holder's own
    /// copy of the current policy, then stores the new policy in its own task.
    pub(super) fn join_policy_change(
        &self,
        session: SessionId,
        coordinator: PeerId,
        key_id: String,
        policy_bytes: &[u8],
        authorizations: Vec<Authorization>,
    ) -> Result<(), InviteRefusal> {
        let new_policy = SigningPolicy::from_bytes(policy_bytes)?;
        let (_key, pending) =
            self.admit_policy_change_invite(coordinator, &key_id, &new_policy, &authorizations)?;
        let inbox = self
            .inner
            .router
            .open(session, Protocol::PolicyChange, [coordinator])
            .map_err(|e| e.to_string())?;
        let engine = self.clone();
        tokio::spawn(
            async move {
                let run = engine.store_new_policy(inbox, coordinator, key_id, new_policy, pending);
                let _ = engine
                    .run_session(
                        Protocol::PolicyChange,
                        "participant",
                        session,
                        vec![coordinator],
                        run,
                    )
                    .await;
            }
            .in_current_span(),
        );
        Ok(())
    }

    async fn store_new_policy(
        &self,
        inbox: SessionInbox,
        coordinator: PeerId,
        key_id: String,
        new_policy: SigningPolicy,
        pending: PendingAdmission,
    ) -> Result<(), SessionError> {
        let local = self.inner.local;
        // The approvals' request ids are on disk before the new policy is.
        let _admitted = pending
            .persist()
            .await
            .map_err(|r| SessionError::failed(format!("peer {local}: {r}")))?;
        let digest = new_policy.digest();
        self.inner
            .store
            .set_policy(&key_id, new_policy)
            .await
            .map_err(|e| SessionError::failed(e.to_string()))?;
        self.send(coordinator, inbox.session(), Body::PolicyStored { digest })
            .await
            .map_err(|e| unreachable_error(vec![(coordinator, e)], "the policy confirmation"))
    }
}
