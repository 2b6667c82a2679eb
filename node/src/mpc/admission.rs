//! The gate of signing and policy-change requests: where a request to use a key or to
//! change its policy is admitted, on the coordinator and on every holder alike, and
//! nowhere else.
//!
//! Admission checks, in order: the key is held here and (for an invitation) shared with the
//! coordinator; the coordinator checked the same version of the key's policy as this node
//! holds (`policy_version_mismatch` otherwise; a holder that is behind starts catching up);
//! the key's policy as this node holds it (message rules, K distinct listed
//! clients, each authorization's expiry and signature, request ids unseen); the per-minute
//! rate. Passing reserves the request ids in memory and yields a [`PendingAdmission`]; its
//! [`persist`](PendingAdmission::persist) writes them to disk and only then yields an
//! [`Admitted`] token. Signing round 1 ([`round1`]) takes that token by value, and so does a
//! holder's use of a presignature (`Signer::presigned`): a nonce cannot be committed for, or
//! sign, a request whose ids are not durable. "On disk before a nonce" is a type, not a
//! habit. A refusal is a [`Refusal`] with the rule's stable code, the same code
//! on the wire (`MpcAck::Refused`) and in the API's 403.
//!
//! The token cannot be made outside this module:
//!
//! ```compile_fail
//! let forged = p2p_mpc_node::mpc::admission::Admitted { _sealed: () };
//! ```

use std::sync::Arc;

use libp2p::PeerId;
use tracing::warn;

use super::faults::Faults;
use super::policy::{self, Authorization, PolicyStamp, Refusal, SigningPolicy};
use super::replay_guard::Pending;
use super::store::{KeyInfo, StoredKey};
use super::{InviteRefusal, MpcEngine};

/// Which version of a key a coordinator signs with: the policy it checked the request
/// against and the generation of the shares. A holder with either one different refuses
/// (`policy_version_mismatch`, `generation_mismatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersion {
    pub stamp: PolicyStamp,
    pub generation: u64,
}

/// Proof that a signing request passed the gate and its request ids are on disk. Made only
/// by [`PendingAdmission::persist`]; spent by [`round1`].
#[must_use = "an admission is spent by signing round 1 (or the policy change it admits)"]
#[derive(Debug)]
pub struct Admitted {
    _sealed: (),
}

/// A request admitted in memory whose request ids are not yet durable.
#[must_use = "the request ids are not durable until `persist` returns"]
pub struct PendingAdmission {
    ids: Option<Pending>,
}

impl PendingAdmission {
    /// Makes the request ids durable; on failure the request must be refused (after a
    /// restart its ids would be forgotten).
    pub async fn persist(self) -> Result<Admitted, Refusal> {
        if let Some(pending) = self.ids {
            pending.persist().await?;
        }
        Ok(Admitted { _sealed: () })
    }

    /// An admission that reserved no request ids (a rule that needs no client approval).
    pub(crate) fn none() -> Self {
        Self { ids: None }
    }

    /// An admission that reserved `ids`.
    pub(crate) fn of(ids: Pending) -> Self {
        Self { ids: Some(ids) }
    }

    /// Test-only (`skip-sign-authorization`, a compromised node): an admission without any
    /// check. `None` unless that fault is set, which only a test-faults build allows.
    fn unchecked(faults: &Faults) -> Option<Self> {
        faults
            .skip_sign_authorization
            .then_some(PendingAdmission { ids: None })
    }
}

/// Signing round 1 for an admitted request: this holder's nonces and their commitments.
/// The nonces live in the caller's session task and are spent by its one round 2.
pub(crate) fn round1<C: frost_core::Ciphersuite>(
    admitted: Admitted,
    share: &frost_core::keys::SigningShare<C>,
) -> (
    frost_core::round1::SigningNonces<C>,
    frost_core::round1::SigningCommitments<C>,
) {
    let Admitted { _sealed: () } = admitted;
    frost_core::round1::commit(share, &mut rand_core::OsRng)
}

impl MpcEngine {
    /// The coordinator's admission of a signing request with `key`.
    pub(crate) fn admit_signing(
        &self,
        key: &KeyInfo,
        message: &[u8],
        authorizations: &[Authorization],
    ) -> Result<PendingAdmission, Refusal> {
        if let Some(unchecked) = PendingAdmission::unchecked(&self.inner.faults) {
            warn!(
                key_id = %key.key_id,
                "test fault: signing without checking the key's policy"
            );
            return Ok(unchecked);
        }
        self.check_signing(key, self.inner.local, message, authorizations)
    }

    /// A holder's admission of a signing invitation from `coordinator`: the key must be
    /// held here and shared with the coordinator, and the request must pass this holder's
    /// own copy of the policy, whatever the coordinator decided.
    pub(crate) fn admit_sign_invite(
        &self,
        coordinator: PeerId,
        key_id: &str,
        version: KeyVersion,
        message: &[u8],
        authorizations: &[Authorization],
    ) -> Result<(Arc<StoredKey>, PendingAdmission), InviteRefusal> {
        let key = self.key_shared_with(key_id, coordinator)?;
        let checked = self
            .check_stamp(&key, coordinator, version.stamp)
            .and_then(|()| self.check_generation(&key, coordinator, version.generation))
            .and_then(|()| self.check_signing(&key.info, coordinator, message, authorizations));
        match checked {
            Ok(admission) => Ok((key, admission)),
            Err(refusal) => match PendingAdmission::unchecked(&self.inner.faults) {
                Some(unchecked) => {
                    warn!(%coordinator, key_id, rule = refusal.rule, "test fault: signing anyway");
                    Ok((key, unchecked))
                }
                None => {
                    if refusal.rule == "wrong_coordinator" {
                        // The clients bound these authorizations to another node: the
                        // coordinator reuses what it received as a participant.
                        if let Some(suppressed) = crate::log_limit::allow("sign_front_running") {
                            warn!(%coordinator, key_id = %crate::log_limit::echo(key_id), suppressed, "peer coordinates a signing request with authorizations made for another coordinator (front-running); refused and blamed");
                        }
                    } else if let Some(suppressed) = crate::log_limit::allow("sign_refused") {
                        warn!(%coordinator, key_id = %crate::log_limit::echo(key_id), rule = refusal.rule, suppressed, "signing request refused by the key's policy");
                    }
                    Err(InviteRefusal::Policy {
                        peer: self.inner.local,
                        refusal,
                    })
                }
            },
        }
    }

    /// A holder's signing admission made durable (`persist`), and still valid: a policy
    /// change of `key_id` applied since the invitation was admitted under `stamp` voids it.
    pub(crate) async fn admitted_in_force(
        &self,
        admission: PendingAdmission,
        key_id: &str,
        stamp: PolicyStamp,
    ) -> Result<Admitted, crate::mpc::session::SessionError> {
        use crate::mpc::session::SessionError;
        let local = self.inner.local;
        let admitted = admission
            .persist()
            .await
            .map_err(|r| SessionError::failed(format!("peer {local}: {r}")))?;
        let now_in_force = self.inner.store.get(key_id).map(|k| k.info.policy_stamp());
        if now_in_force != Some(stamp) && !self.inner.faults.skip_sign_authorization {
            return Err(SessionError::failed(format!(
                "peer {local}: the policy of key {key_id} changed while this request was admitted; refused"
            )));
        }
        Ok(admitted)
    }

    /// The coordinator's admission of a change of `key`'s policy to `new_policy`: approvals
    /// under the change domain by the current policy's change approvers (see
    /// `ReplayGuard::admit_change`).
    pub(crate) fn admit_policy_change(
        &self,
        key: &KeyInfo,
        new_policy: &SigningPolicy,
        authorizations: &[Authorization],
    ) -> Result<PendingAdmission, Refusal> {
        if let Some(unchecked) = PendingAdmission::unchecked(&self.inner.faults) {
            warn!(
                key_id = %key.key_id,
                "test fault: changing the policy without checking the approvals"
            );
            return Ok(unchecked);
        }
        self.check_no_reshare(&key.key_id)?;
        self.check_policy_change(key, new_policy, authorizations)
    }

    /// A holder's admission of a policy change from `coordinator`, against this holder's
    /// own copy of the current policy.
    pub(crate) fn admit_policy_change_invite(
        &self,
        coordinator: PeerId,
        key_id: &str,
        stamp: PolicyStamp,
        new_policy: &SigningPolicy,
        authorizations: &[Authorization],
    ) -> Result<(Arc<StoredKey>, PendingAdmission), InviteRefusal> {
        let key = self.key_shared_with(key_id, coordinator)?;
        let checked = self
            .check_stamp(&key, coordinator, stamp)
            .and_then(|()| self.check_no_reshare(key_id))
            .and_then(|()| self.check_policy_change(&key.info, new_policy, authorizations));
        match checked {
            Ok(admission) => Ok((key, admission)),
            Err(refusal) => {
                if let Some(suppressed) = crate::log_limit::allow("policy_change_refused") {
                    warn!(%coordinator, key_id = %crate::log_limit::echo(key_id), rule = refusal.rule, suppressed, "policy change refused");
                }
                Err(InviteRefusal::Policy {
                    peer: self.inner.local,
                    refusal,
                })
            }
        }
    }

    /// The coordinator of an invitation checked the policy version this holder has in force.
    fn check_stamp(
        &self,
        key: &StoredKey,
        coordinator: PeerId,
        theirs: PolicyStamp,
    ) -> Result<(), Refusal> {
        let ours = key.info.policy_stamp();
        if theirs == ours {
            return Ok(());
        }
        Err(self.policy_mismatch(&key.info.key_id, coordinator, theirs, ours))
    }

    /// The coordinator signs with the generation of the shares this holder has active. A
    /// holder that staged the coordinator's newer generation asks the other holders whether
    /// it may activate it.
    fn check_generation(
        &self,
        key: &StoredKey,
        coordinator: PeerId,
        theirs: u64,
    ) -> Result<(), Refusal> {
        let ours = key.info.generation;
        if theirs == ours {
            return Ok(());
        }
        if theirs > ours {
            self.spawn_staged_resolution(&key.info.key_id);
        }
        Err(policy::refuse(
            "generation_mismatch",
            format!(
                "coordinator {coordinator} signs with generation {theirs} of key {}, this holder has generation {ours} active",
                key.info.key_id
            ),
        ))
    }

    /// No policy change while a reshare of the key runs here or its new generation is staged:
    /// the holders that join would keep the policy the reshare started with.
    fn check_no_reshare(&self, key_id: &str) -> Result<(), Refusal> {
        if self.reshare_in_progress(key_id) {
            return Err(policy::refuse(
                "policy_change_conflict",
                format!(
                    "a reshare of key {key_id} runs or waits to be activated here; change the policy once it is done"
                ),
            ));
        }
        Ok(())
    }

    fn check_policy_change(
        &self,
        key: &KeyInfo,
        new_policy: &SigningPolicy,
        authorizations: &[Authorization],
    ) -> Result<PendingAdmission, Refusal> {
        self.inner
            .replay_guard
            .admit_change(
                &key.policy,
                key.policy_version,
                &key.key_id,
                new_policy,
                authorizations,
                policy::now(),
            )
            .map(|pending| PendingAdmission { ids: Some(pending) })
    }

    /// Checks a signing request coordinated by `coordinator` against the key's policy and
    /// rate, reserves its request ids and counts the outcome
    /// (`p2p_mpc_sign_authorizations_total`; `wrong_coordinator` counts front-running).
    fn check_signing(
        &self,
        key: &KeyInfo,
        coordinator: PeerId,
        message: &[u8],
        authorizations: &[Authorization],
    ) -> Result<PendingAdmission, Refusal> {
        let signing = policy::Approves::Signing {
            message,
            coordinator,
        };
        let result = self.inner.replay_guard.admit(
            &key.policy,
            &key.key_id,
            signing,
            authorizations,
            policy::now(),
        );
        let kind = if key.policy.legacy {
            "legacy-open"
        } else if key.policy.open {
            "open"
        } else {
            "clients"
        };
        let outcome = match &result {
            Ok(_) => "authorized",
            Err(r) => r.rule,
        };
        self.inner
            .metrics
            .sign_authorizations
            .with_label_values(&[kind, outcome])
            .inc();
        result.map(|pending| PendingAdmission { ids: Some(pending) })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A token for the in-memory tests of the signing core (no request to admit there).
    pub(crate) fn admitted() -> Admitted {
        Admitted { _sealed: () }
    }

    #[test]
    fn only_the_skip_fault_admits_without_checks() {
        assert!(PendingAdmission::unchecked(&Faults::default()).is_none());
        let skip = Faults {
            skip_sign_authorization: true,
            ..Faults::default()
        };
        assert!(PendingAdmission::unchecked(&skip).is_some());
    }

    #[tokio::test]
    async fn an_admission_without_ids_persists_to_a_token_that_round1_spends() {
        let skip = Faults {
            skip_sign_authorization: true,
            ..Faults::default()
        };
        let admitted = PendingAdmission::unchecked(&skip)
            .unwrap()
            .persist()
            .await
            .unwrap();
        let share = frost_ed25519::keys::SigningShare::deserialize(&[1; 32]).unwrap();
        let (nonces, commitments) = round1(admitted, &share);
        assert_eq!(nonces.commitments(), &commitments);
    }
}
