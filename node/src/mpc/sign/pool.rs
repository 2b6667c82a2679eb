//! Presignatures as an I/O-free core: the pools of signing commitments made ahead of time,
//! so that a signature takes one round trip instead of two (FROST's preprocessing stage,
//! which RFC 9591 allows: round 1 does not depend on the message).
//!
//! Two sides, one per role a node plays:
//!
//! - [`HeldNonces`]: on a holder, the secret nonces it made for each (key, coordinator),
//!   kept in memory only (never on disk: a restart drops them all), at most `cap` per
//!   coordinator and key, [`MAX_HELD_PER_COORDINATOR`] per coordinator and [`MAX_HELD`] in
//!   all. A nonce leaves the pool the first time a
//!   signing package names its commitments ([`HeldNonces::take`]), whatever happens next:
//!   each is used at most once.
//! - [`Commitments`]: on a coordinator, the commitments each holder made for it, per key,
//!   under the pool's [`PoolEpoch`]. [`Commitments::take_signers`] hands out one set per
//!   holder and forgets it, and only when enough holders have one: a signature is presigned
//!   by all its signers or by none.
//!
//! A presigned signature still passes every check a two-round one does: the holder admits
//! the request (its own policy, request ids on disk) before the nonce signs anything
//! ([`super::core::Signer::presigned`] takes the admission's token).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use frost_core as frost;
use libp2p::PeerId;

use super::super::scheme::{self, AnyNonces, Share, Suite};
use super::super::wire::PoolEpoch;

/// Most nonces one holder keeps for all coordinators and keys together.
pub const MAX_HELD: usize = 65_536;
/// Most nonces one holder keeps for one coordinator, all keys together (so that one member
/// sharing many keys with this holder cannot take all of [`MAX_HELD`]).
pub const MAX_HELD_PER_COORDINATOR: usize = 8_192;
/// A coordinator may start a new pool of one key on a holder at most this often (a new
/// pool throws the old nonces away and makes new ones: work the coordinator chooses).
pub const MIN_EPOCH_INTERVAL: Duration = Duration::from_secs(1);

/// One coordinator's pool for one key on a holder.
struct Held {
    epoch: PoolEpoch,
    started: Instant,
    /// Serialized commitments → the secret nonces (frost zeroes them when dropped).
    nonces: HashMap<Vec<u8>, AnyNonces>,
}

/// The nonces a holder made ahead of time for coordinators. Making nonces is the slow part,
/// so it happens outside: [`room`](Self::room) says how many, [`make`] makes them, and
/// [`keep`](Self::keep) keeps those that still fit.
#[derive(Default)]
pub struct HeldNonces {
    pools: HashMap<(String, PeerId), Held>,
    total: usize,
}

/// Makes `count` nonces with `share`: (serialized commitments, nonces).
pub fn make<C: Suite>(share: &Share<C>, count: usize) -> Result<Vec<(Vec<u8>, AnyNonces)>, String> {
    (0..count)
        .map(|_| {
            let (nonces, commitments) =
                frost::round1::commit(share.key_package.signing_share(), &mut rand_core::OsRng);
            let commitments = commitments
                .serialize()
                .map_err(|e| format!("commitments: {e}"))?;
            Ok((commitments, C::wrap_nonces(nonces)))
        })
        .collect()
}

impl HeldNonces {
    /// How many nonces to make for `coordinator`'s pool `epoch` of key `key_id`, which asks
    /// for `requested`: at most `cap` in the pool, [`MAX_HELD_PER_COORDINATOR`] for the
    /// coordinator and [`MAX_HELD`] in all. A new epoch drops the coordinator's earlier pool
    /// of this key first, but is refused within [`MIN_EPOCH_INTERVAL`] of that pool's start.
    pub fn room(
        &mut self,
        key_id: &str,
        coordinator: PeerId,
        epoch: PoolEpoch,
        requested: usize,
        cap: usize,
        now: Instant,
    ) -> Result<usize, String> {
        let slot = (key_id.to_string(), coordinator);
        if let Some(pool) = self.pools.get(&slot)
            && pool.epoch != epoch
        {
            if now.saturating_duration_since(pool.started) < MIN_EPOCH_INTERVAL {
                return Err(format!(
                    "peer {coordinator} started a new presignature pool of key {key_id} less than {MIN_EPOCH_INTERVAL:?} after the last one"
                ));
            }
            self.forget_slot(&slot);
        }
        let in_pool = self.pools.get(&slot).map_or(0, |p| p.nonces.len());
        let for_coordinator: usize = self
            .pools
            .iter()
            .filter(|((_, c), _)| *c == coordinator)
            .map(|(_, p)| p.nonces.len())
            .sum();
        Ok(requested
            .min(cap.saturating_sub(in_pool))
            .min(MAX_HELD_PER_COORDINATOR.saturating_sub(for_coordinator))
            .min(MAX_HELD.saturating_sub(self.total)))
    }

    /// Keeps the nonces `made` for `coordinator`'s pool `epoch` of `key_id`, as many as
    /// [`room`](Self::room) allows now (another request may have filled it meanwhile, or
    /// started a newer epoch: then none); returns the commitments of those kept.
    pub fn keep(
        &mut self,
        key_id: &str,
        coordinator: PeerId,
        epoch: PoolEpoch,
        made: Vec<(Vec<u8>, AnyNonces)>,
        cap: usize,
        now: Instant,
    ) -> Vec<Vec<u8>> {
        let slot = (key_id.to_string(), coordinator);
        if self.pools.get(&slot).is_some_and(|p| p.epoch != epoch) {
            return Vec::new();
        }
        let room = self
            .room(key_id, coordinator, epoch, made.len(), cap, now)
            .unwrap_or(0);
        if room == 0 {
            return Vec::new();
        }
        let pool = self.pools.entry(slot).or_insert_with(|| Held {
            epoch,
            started: now,
            nonces: HashMap::new(),
        });
        let mut kept = Vec::with_capacity(room);
        for (commitments, nonces) in made.into_iter().take(room) {
            if pool.nonces.insert(commitments.clone(), nonces).is_none() {
                self.total += 1;
                kept.push(commitments);
            }
        }
        kept
    }

    /// [`room`](Self::room), [`make`] and [`keep`](Self::keep) in one (tests).
    #[cfg(test)]
    pub fn issue<C: Suite>(
        &mut self,
        key_id: &str,
        coordinator: PeerId,
        epoch: PoolEpoch,
        requested: usize,
        cap: usize,
        share: &Share<C>,
    ) -> Result<Vec<Vec<u8>>, String> {
        let now = Instant::now();
        let count = self.room(key_id, coordinator, epoch, requested, cap, now)?;
        let made = make(share, count)?;
        Ok(self.keep(key_id, coordinator, epoch, made, cap, now))
    }

    /// Takes the nonces of `commitments` out of `coordinator`'s pool `epoch` of `key_id`:
    /// `None` when there are none (never made, made for another coordinator, key or epoch,
    /// already used, or dropped by a restart).
    pub fn take(
        &mut self,
        key_id: &str,
        coordinator: PeerId,
        epoch: PoolEpoch,
        commitments: &[u8],
    ) -> Option<AnyNonces> {
        let pool = self.pools.get_mut(&(key_id.to_string(), coordinator))?;
        if pool.epoch != epoch {
            return None;
        }
        let nonces = pool.nonces.remove(commitments)?;
        self.total -= 1;
        Some(nonces)
    }

    /// Drops every nonce made for `coordinator` (it disconnected: its pools are gone too).
    pub fn forget_peer(&mut self, coordinator: &PeerId) {
        let slots: Vec<(String, PeerId)> = self
            .pools
            .keys()
            .filter(|(_, c)| c == coordinator)
            .cloned()
            .collect();
        for slot in slots {
            self.forget_slot(&slot);
        }
    }

    fn forget_slot(&mut self, slot: &(String, PeerId)) {
        if let Some(pool) = self.pools.remove(slot) {
            self.total -= pool.nonces.len();
        }
    }

    /// How many nonces are held, for all coordinators.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// One holder's commitments for this coordinator and one key.
struct Pool {
    epoch: PoolEpoch,
    commitments: VecDeque<Vec<u8>>,
    /// A refill is on its way (at most one per holder and key at a time).
    refilling: bool,
}

/// A refill to ask a holder for: its pool `epoch` and how many commitments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refill {
    pub holder: PeerId,
    pub epoch: PoolEpoch,
    pub count: usize,
}

/// A coordinator's presignatures: per key, per holder, the commitments it may use once.
#[derive(Default)]
pub struct Commitments {
    pools: HashMap<String, HashMap<PeerId, Pool>>,
}

impl Commitments {
    /// One set of commitments of each of `needed` holders, taken in the order of
    /// `candidates` and forgotten here, with the pool epoch each belongs to; `None` (and
    /// nothing taken) when fewer than `needed` holders have one.
    pub fn take_signers(
        &mut self,
        key_id: &str,
        candidates: &[PeerId],
        needed: usize,
    ) -> Option<Vec<(PeerId, PoolEpoch, Vec<u8>)>> {
        let pools = self.pools.get_mut(key_id)?;
        let chosen: Vec<PeerId> = candidates
            .iter()
            .filter(|p| {
                pools
                    .get(p)
                    .is_some_and(|pool| !pool.commitments.is_empty())
            })
            .take(needed)
            .copied()
            .collect();
        if chosen.len() < needed {
            return None;
        }
        Some(
            chosen
                .into_iter()
                .map(|p| {
                    let pool = pools.get_mut(&p).expect("chosen among the pools");
                    let c = pool.commitments.pop_front().expect("not empty");
                    (p, pool.epoch, c)
                })
                .collect(),
        )
    }

    /// The refills to ask for now so that every one of `holders` has at least `low_water`
    /// commitments of `key_id` here, topped up to `size`; each is marked as on its way
    /// until [`filled`](Self::filled). A holder without a pool gets a new epoch.
    pub fn refills(
        &mut self,
        key_id: &str,
        holders: &[PeerId],
        low_water: usize,
        size: usize,
    ) -> Vec<Refill> {
        if size == 0 {
            return Vec::new();
        }
        let pools = self.pools.entry(key_id.to_string()).or_default();
        let mut out = Vec::new();
        for holder in holders {
            let pool = pools.entry(*holder).or_insert_with(|| Pool {
                epoch: PoolEpoch::random(),
                commitments: VecDeque::new(),
                refilling: false,
            });
            if pool.refilling || pool.commitments.len() >= low_water.max(1) {
                continue;
            }
            pool.refilling = true;
            out.push(Refill {
                holder: *holder,
                epoch: pool.epoch,
                count: size - pool.commitments.len().min(size),
            });
        }
        out
    }

    /// A refill from `holder` ended: its commitments (already checked: see
    /// [`decode_commitments`]) join the pool if it still has `epoch`, up to `size` in all.
    pub fn filled(
        &mut self,
        key_id: &str,
        holder: PeerId,
        epoch: PoolEpoch,
        commitments: Vec<Vec<u8>>,
        size: usize,
    ) {
        let Some(pool) = self
            .pools
            .get_mut(key_id)
            .and_then(|pools| pools.get_mut(&holder))
        else {
            return;
        };
        if pool.epoch != epoch {
            return;
        }
        pool.refilling = false;
        let room = size.saturating_sub(pool.commitments.len());
        pool.commitments.extend(commitments.into_iter().take(room));
    }

    /// Forgets every pool of `holder` (it disconnected, or refused a presignature): the
    /// next refill starts a new epoch.
    pub fn forget_peer(&mut self, holder: &PeerId) {
        for pools in self.pools.values_mut() {
            pools.remove(holder);
        }
    }

    /// Forgets `holder`'s pool of `key_id`.
    pub fn forget(&mut self, key_id: &str, holder: &PeerId) {
        if let Some(pools) = self.pools.get_mut(key_id) {
            pools.remove(holder);
        }
    }

    /// A refill for `epoch` failed or came back empty: forgets `holder`'s pool of `key_id`
    /// if it still has that epoch (the next refill starts a new one, which makes the
    /// holder drop whatever it keeps for the old), and leaves a newer pool alone.
    pub fn refill_failed(&mut self, key_id: &str, holder: &PeerId, epoch: PoolEpoch) {
        if let Some(pools) = self.pools.get_mut(key_id)
            && pools.get(holder).is_some_and(|p| p.epoch == epoch)
        {
            pools.remove(holder);
        }
    }

    /// How many commitments of `key_id` are here, for all holders.
    pub fn len(&self, key_id: &str) -> usize {
        self.pools
            .get(key_id)
            .map_or(0, |pools| pools.values().map(|p| p.commitments.len()).sum())
    }
}

/// Checks a holder's refill answer: each item must be signing commitments of ciphersuite
/// `C`, none twice, at most `asked`. Returns them re-encoded (canonical bytes).
pub fn decode_commitments<C: Suite>(
    items: &[Vec<u8>],
    asked: usize,
) -> Result<Vec<Vec<u8>>, String> {
    if items.len() > asked {
        return Err(format!(
            "{} commitments for a request of {asked}",
            items.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let c = scheme::decode(item, frost::round1::SigningCommitments::<C>::deserialize).map_err(
            |e| match e {
                scheme::DecodeError::OtherScheme(s) => {
                    format!("commitments {i}: of another scheme ({s})")
                }
                scheme::DecodeError::Malformed(e) => format!("commitments {i}: {e}"),
            },
        )?;
        let bytes = c.serialize().map_err(|e| format!("commitments {i}: {e}"))?;
        if !seen.insert(bytes.clone()) {
            return Err(format!("commitments {i} repeat an earlier set"));
        }
        out.push(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::super::scheme::testing::dealt;
    use super::*;

    type Ed = frost_ed25519::Ed25519Sha512;

    #[test]
    fn a_holder_keeps_at_most_its_cap_and_each_nonce_leaves_once() {
        let (peers, keys) = dealt::<Ed>(2, 3);
        let mut held = HeldNonces::default();
        let (c, e) = (peers[0], PoolEpoch::random());
        let first = held.issue("k", c, e, 10, 4, &keys[1]).unwrap();
        assert_eq!(first.len(), 4, "capped at 4");
        assert!(held.issue("k", c, e, 10, 4, &keys[1]).unwrap().is_empty());
        assert_eq!(held.total(), 4);
        // Another coordinator, another key, another epoch: none of them reaches these.
        assert!(held.take("k", peers[2], e, &first[0]).is_none());
        assert!(held.take("other", c, e, &first[0]).is_none());
        assert!(held.take("k", c, PoolEpoch::random(), &first[0]).is_none());
        assert!(held.take("k", c, e, &first[0]).is_some());
        assert!(held.take("k", c, e, &first[0]).is_none(), "used once");
        assert_eq!(held.total(), 3);
        // Room for one more now.
        assert_eq!(held.issue("k", c, e, 10, 4, &keys[1]).unwrap().len(), 1);
        // A new epoch drops the old pool, but not within MIN_EPOCH_INTERVAL of its start.
        let e2 = PoolEpoch::random();
        let now = Instant::now();
        let refused = held.room("k", c, e2, 2, 4, now).unwrap_err();
        assert!(refused.contains("new presignature pool"), "{refused}");
        let later = now + MIN_EPOCH_INTERVAL;
        assert_eq!(held.room("k", c, e2, 2, 4, later).unwrap(), 2);
        assert_eq!(held.total(), 0, "the old pool is gone");
        assert!(held.take("k", c, e, &first[1]).is_none());
        let made = make(&keys[1], 2).unwrap();
        assert_eq!(held.keep("k", c, e2, made, 4, later).len(), 2);
        // Nonces made for an epoch that a newer one replaced meanwhile are not kept.
        let made = make(&keys[1], 2).unwrap();
        assert!(held.keep("k", c, e, made, 4, later).is_empty());
        assert_eq!(held.total(), 2);
        held.forget_peer(&c);
        assert_eq!(held.total(), 0);
    }

    #[test]
    fn one_coordinator_cannot_take_every_holders_room() {
        let (peers, keys) = dealt::<Ed>(2, 3);
        let mut held = HeldNonces::default();
        let now = Instant::now();
        let (greedy, other) = (peers[0], peers[2]);
        // Many keys, each pool at the largest cap: the coordinator's share runs out.
        let per_key = 256;
        let keys_needed = MAX_HELD_PER_COORDINATOR / per_key;
        for k in 0..keys_needed {
            let key = format!("k{k}");
            let e = PoolEpoch::random();
            let n = held.room(&key, greedy, e, per_key, per_key, now).unwrap();
            assert_eq!(n, per_key);
            let made = make(&keys[1], n).unwrap();
            assert_eq!(held.keep(&key, greedy, e, made, per_key, now).len(), n);
        }
        assert_eq!(held.total(), MAX_HELD_PER_COORDINATOR);
        let e = PoolEpoch::random();
        assert_eq!(
            held.room("one more", greedy, e, 8, per_key, now).unwrap(),
            0
        );
        // Another coordinator still gets its pool.
        assert_eq!(held.room("k0", other, e, 8, per_key, now).unwrap(), 8);
    }

    #[test]
    fn a_coordinator_hands_out_all_signers_or_none_and_never_twice() {
        let holders: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let mut pools = Commitments::default();
        assert!(
            pools.take_signers("k", &holders, 1).is_none(),
            "no pool yet"
        );
        let refills = pools.refills("k", &holders[..2], 2, 3);
        assert_eq!(refills.len(), 2);
        assert!(refills.iter().all(|r| r.count == 3));
        // On its way: not asked again.
        assert!(pools.refills("k", &holders[..2], 2, 3).is_empty());
        pools.filled("k", holders[0], refills[0].epoch, vec![vec![1], vec![2]], 3);
        // The other's answer for a stale epoch is dropped.
        pools.filled("k", holders[1], PoolEpoch::random(), vec![vec![9]], 3);
        assert_eq!(pools.len("k"), 2);
        assert!(
            pools.take_signers("k", &holders, 2).is_none(),
            "one holder only"
        );
        assert_eq!(pools.len("k"), 2, "nothing taken");
        pools.filled("k", holders[1], refills[1].epoch, vec![vec![3]], 3);
        // A failed refill of an older epoch leaves the pool alone.
        pools.refill_failed("k", &holders[1], PoolEpoch::random());
        assert_eq!(pools.len("k"), 3);
        let taken = pools.take_signers("k", &holders, 2).unwrap();
        assert_eq!(
            taken,
            vec![
                (holders[0], refills[0].epoch, vec![1]),
                (holders[1], refills[1].epoch, vec![3])
            ]
        );
        let again = pools.take_signers("k", &holders, 1).unwrap();
        assert_eq!(again, vec![(holders[0], refills[0].epoch, vec![2])]);
        assert_eq!(pools.len("k"), 0);
        // Below the low-water mark: refilled up to the size.
        let r = pools.refills("k", &holders[..1], 2, 3);
        assert_eq!((r[0].count, r[0].epoch), (3, refills[0].epoch));
        pools.forget_peer(&holders[0]);
        let r = pools.refills("k", &holders[..1], 2, 3);
        assert_ne!(
            r[0].epoch, refills[0].epoch,
            "a forgotten pool starts a new epoch"
        );
        assert!(pools.refills("k", &holders, 2, 0).is_empty(), "size 0: off");
    }

    #[test]
    fn refill_answers_must_be_commitments_none_twice_and_no_more_than_asked() {
        let (peers, keys) = dealt::<Ed>(2, 3);
        let mut held = HeldNonces::default();
        let made = held
            .issue("k", peers[0], PoolEpoch::random(), 3, 8, &keys[1])
            .unwrap();
        assert_eq!(decode_commitments::<Ed>(&made, 3).unwrap(), made);
        assert!(
            decode_commitments::<Ed>(&made, 2)
                .unwrap_err()
                .contains("request of 2")
        );
        let twice = vec![made[0].clone(), made[0].clone()];
        assert!(
            decode_commitments::<Ed>(&twice, 3)
                .unwrap_err()
                .contains("repeat")
        );
        let e = decode_commitments::<Ed>(&[vec![1, 2, 3]], 3).unwrap_err();
        assert!(e.starts_with("commitments 0"), "{e}");
        // Commitments of the other scheme are refused too.
        let e = decode_commitments::<frost_secp256k1_tr::Secp256K1Sha256TR>(&made, 3);
        assert!(e.is_err());
    }
}
