//! Keys follow the members. When an MpcCluster scales, every threshold key whose signing
//! policy lets the roster move it (`"reshare": "roster"`) is reshared to the new member set
//! through a member's API: on scale-up once every member is Ready (and has the new roster),
//! on scale-down before the leaving members' StatefulSets are deleted. A scale-down that would
//! leave a key fewer holders than its threshold is held back (condition `ScaleBlocked`), and
//! the PodDisruptionBudget never lets voluntary disruptions take a key below its threshold.
//!
//! The nodes decide: each holder checks a reshare against its own copy of the key's policy
//! and its own roster (a `roster` key moves only to exactly the roster's members), so the
//! operator can move a key only where the roster it wrote says.

use std::collections::BTreeMap;

use p2p_mpc_node::api::client::{ApiClient, ClientError};
use p2p_mpc_node::mpc::policy::ReshareRule;
use p2p_mpc_node::mpc::store::KeyInfo;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One key of a cluster as the status shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub key_id: String,
    pub scheme: String,
    pub threshold: u16,
    /// The generation of its shares (one more per refresh or reshare).
    pub generation: u64,
    /// How many members hold a share.
    pub holders: usize,
    /// `roster` (the operator moves it with the members) or `approvals` (its clients do).
    pub reshare: String,
    /// When its current generation was made (the DKG, the last refresh or reshare), in
    /// seconds since the Unix epoch.
    pub generated_at: u64,
}

impl KeyStatus {
    pub fn of(key: &KeyInfo) -> Self {
        Self {
            key_id: key.key_id.clone(),
            scheme: key.scheme.to_string(),
            threshold: key.threshold,
            generation: key.generation,
            holders: key.participants.len(),
            reshare: match key.policy.reshare_rule() {
                ReshareRule::Roster => "roster".into(),
                ReshareRule::Approvals => "approvals".into(),
            },
            generated_at: made_at(key),
        }
    }
}

/// When `key`'s current generation was made (keys from before generations: created).
fn made_at(key: &KeyInfo) -> u64 {
    if key.generated_at > 0 {
        key.generated_at
    } else {
        key.created_at
    }
}

/// The `roster` keys held by exactly the members whose current generation is at least
/// `interval` seconds old at `now`: due for a refresh, each through a holder.
pub fn refresh_due(
    keys: &BTreeMap<String, KeyInfo>,
    members: &[String],
    now: u64,
    interval: u64,
) -> Vec<Reshare> {
    keys.values()
        .filter(|k| k.policy.reshare_rule() == ReshareRule::Roster)
        .filter(|k| {
            let mut holders = k.participants.clone();
            holders.sort();
            holders == members
        })
        .filter(|k| made_at(k).saturating_add(interval) <= now)
        .map(|k| Reshare {
            key_id: k.key_id.clone(),
            coordinator: members.first().cloned().unwrap_or_default(),
            holders: members.to_vec(),
        })
        .collect()
}

/// The keys the members hold, each as the member with the newest generation shows it.
pub fn merge(views: impl IntoIterator<Item = KeyInfo>) -> BTreeMap<String, KeyInfo> {
    let mut keys: BTreeMap<String, KeyInfo> = BTreeMap::new();
    for key in views {
        match keys.get(&key.key_id) {
            Some(known) if known.generation >= key.generation => {}
            _ => {
                keys.insert(key.key_id.clone(), key);
            }
        }
    }
    keys
}

/// A key to move to the members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reshare {
    pub key_id: String,
    /// The current holder asked to coordinate (one that stays, else the first holder).
    pub coordinator: String,
    pub holders: Vec<String>,
}

/// A key the member set cannot carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub key_id: String,
    pub threshold: u16,
    /// How many of its holders would be left (a `roster` key: the members).
    pub left: usize,
}

/// What the keys need for a member set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub reshares: Vec<Reshare>,
    pub blocked: Vec<Blocked>,
    /// `approvals` keys with holders outside the member set: only their clients can move
    /// them (`p2p-mpc keys reshare`).
    pub unmanaged: Vec<String>,
    /// The largest threshold of any key.
    pub largest_threshold: Option<u16>,
    /// How many members the keys can spare: over every key, its holders among the members
    /// less its threshold (the least); `None` without keys.
    pub spare: Option<usize>,
}

/// Plans what `keys` need for the member set `members` (peer ids, sorted).
pub fn plan(keys: &BTreeMap<String, KeyInfo>, members: &[String]) -> Plan {
    let mut plan = Plan::default();
    for key in keys.values() {
        plan.largest_threshold = plan.largest_threshold.max(Some(key.threshold));
        let mut holders = key.participants.clone();
        holders.sort();
        let threshold = usize::from(key.threshold);
        let kept = holders.iter().filter(|h| members.contains(h)).count();
        let spare = kept.saturating_sub(threshold);
        plan.spare = Some(plan.spare.map_or(spare, |s| s.min(spare)));
        match key.policy.reshare_rule() {
            ReshareRule::Roster => {
                // The members that deal the new shares are its holders among the members
                // (the others are outside the roster by then): at least the threshold.
                if members.len() < threshold || kept < threshold {
                    plan.blocked.push(Blocked {
                        key_id: key.key_id.clone(),
                        threshold: key.threshold,
                        left: kept.min(members.len()),
                    });
                } else if holders != members {
                    let coordinator = holders
                        .iter()
                        .find(|h| members.contains(h))
                        .or(holders.first())
                        .cloned()
                        .unwrap_or_default();
                    plan.reshares.push(Reshare {
                        key_id: key.key_id.clone(),
                        coordinator,
                        holders: members.to_vec(),
                    });
                }
            }
            ReshareRule::Approvals => {
                let left = holders.iter().filter(|h| members.contains(h)).count();
                if left < threshold {
                    plan.blocked.push(Blocked {
                        key_id: key.key_id.clone(),
                        threshold: key.threshold,
                        left,
                    });
                } else if left < holders.len() {
                    plan.unmanaged.push(key.key_id.clone());
                }
            }
        }
    }
    plan
}

/// The keys one member holds (`GET /v1/keys`).
pub async fn list_keys(client: &ApiClient) -> Result<Vec<KeyInfo>, ClientError> {
    let answer: Value = client.get("v1/keys").await?;
    serde_json::from_value(answer["keys"].clone())
        .map_err(|e| ClientError::Decode(format!("the key list: {e}")))
}

/// Asks a holder to refresh `key_id` (`POST /v1/keys/{id}/refresh`, no client approval: the
/// key's policy lets the roster do it).
pub async fn refresh(client: &ApiClient, key_id: &str) -> Result<KeyInfo, ClientError> {
    let path = format!(
        "v1/keys/{}/refresh",
        p2p_mpc_node::api::client::encode_segment(key_id)
    );
    let answer: Value = client.post(&path, &json!({})).await?;
    serde_json::from_value(answer)
        .map_err(|e| ClientError::Decode(format!("the refreshed key: {e}")))
}

/// Asks a holder to move `reshare.key_id` to `reshare.holders` (`POST
/// /v1/keys/{id}/reshare`, no client approval: the key's policy lets the roster move it).
pub async fn reshare(client: &ApiClient, reshare: &Reshare) -> Result<KeyInfo, ClientError> {
    let path = format!(
        "v1/keys/{}/reshare",
        p2p_mpc_node::api::client::encode_segment(&reshare.key_id)
    );
    let answer: Value = client
        .post(&path, &json!({ "holders": reshare.holders }))
        .await?;
    serde_json::from_value(answer)
        .map_err(|e| ClientError::Decode(format!("the reshared key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_mpc_node::mpc::policy::SigningPolicy;

    fn key(id: &str, t: u16, holders: &[&str], roster: bool, generation: u64) -> KeyInfo {
        let mut policy = SigningPolicy::open();
        if roster {
            policy.reshare = Some(ReshareRule::Roster);
        }
        KeyInfo {
            key_id: id.into(),
            scheme: p2p_mpc_node::mpc::scheme::Scheme::Ed25519,
            public_key: "00".repeat(32),
            internal_key: None,
            threshold: t,
            participants: holders.iter().map(|h| h.to_string()).collect(),
            status: "active".into(),
            created_by: None,
            created_at: 0,
            policy,
            policy_version: 0,
            generation,
            generated_at: 1_000 + generation,
        }
    }

    fn members(list: &[&str]) -> Vec<String> {
        list.iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn the_newest_generation_of_a_key_wins() {
        let keys = merge([
            key("k", 2, &["a", "b", "c"], true, 1),
            key("k", 2, &["a", "b"], true, 0),
        ]);
        assert_eq!(keys["k"].generation, 1);
        assert_eq!(keys["k"].participants.len(), 3);
    }

    #[test]
    fn roster_keys_follow_the_members_and_approvals_keys_do_not() {
        let keys = merge([
            key("r", 2, &["a", "b", "c"], true, 0),
            key("p", 2, &["a", "b", "c"], false, 0),
        ]);
        // Scale up: the roster key moves to all five, coordinated by a holder.
        let up = plan(&keys, &members(&["a", "b", "c", "d", "e"]));
        assert_eq!(
            up.reshares,
            vec![Reshare {
                key_id: "r".into(),
                coordinator: "a".into(),
                holders: members(&["a", "b", "c", "d", "e"]),
            }]
        );
        assert!(up.blocked.is_empty() && up.unmanaged.is_empty());
        assert_eq!(up.largest_threshold, Some(2));
        assert_eq!(
            up.spare,
            Some(1),
            "each key has 3 holders among the members, needs 2"
        );
        // Scale down to b and c: a holder that stays coordinates; the approvals key keeps
        // two holders (enough) but only its clients can move it.
        let down = plan(&keys, &members(&["b", "c"]));
        assert_eq!(down.reshares[0].coordinator, "b");
        assert_eq!(down.unmanaged, vec!["p".to_string()]);
        assert!(down.blocked.is_empty());
        // Nothing to do when the holders are the members.
        assert_eq!(plan(&keys, &members(&["a", "b", "c"])).reshares, vec![]);
    }

    #[test]
    fn roster_keys_held_by_the_members_are_refreshed_when_due() {
        let keys = merge([
            key("old", 2, &["a", "b", "c"], true, 0),
            key("new", 2, &["a", "b", "c"], true, 5),
            key("clients", 2, &["a", "b", "c"], false, 0),
            key("moving", 2, &["a", "b"], true, 0),
        ]);
        let m = members(&["a", "b", "c"]);
        // `old` was made at 1000, `new` at 1005; an interval of 10 s.
        let due = refresh_due(&keys, &m, 1_012, 10);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].key_id, "old");
        assert_eq!(refresh_due(&keys, &m, 1_015, 10).len(), 2);
        assert!(refresh_due(&keys, &m, 1_009, 10).is_empty());
    }

    #[test]
    fn refresh_intervals_read_as_minutes_hours_and_days() {
        let of = |s: &str| {
            crate::crd::KeysSpec {
                refresh_interval: Some(s.into()),
            }
            .refresh_seconds()
        };
        assert_eq!(of("30m"), Some(1_800));
        assert_eq!(of("24h"), Some(86_400));
        assert_eq!(of("7d"), Some(604_800));
        assert_eq!(of("0h"), None);
        assert_eq!(of("5s"), None);
        assert_eq!(of("h"), None);
        assert_eq!(crate::crd::KeysSpec::default().refresh_seconds(), None);
    }

    #[test]
    fn a_scale_below_a_threshold_is_blocked() {
        let keys = merge([
            key("r", 3, &["a", "b", "c"], true, 0),
            key("p", 2, &["a", "b", "c"], false, 0),
        ]);
        let down = plan(&keys, &members(&["a", "b"]));
        assert_eq!(
            down.blocked,
            vec![Blocked {
                key_id: "r".into(),
                threshold: 3,
                left: 2,
            }]
        );
        assert!(down.reshares.is_empty());
        let further = plan(&keys, &members(&["a"]));
        assert_eq!(further.blocked.len(), 2, "{further:?}");
        assert_eq!(further.largest_threshold, Some(3));
        // Members swapped for others: too few holders stay to deal the new shares.
        let swapped = plan(&keys, &members(&["a", "d", "e"]));
        assert!(
            swapped
                .blocked
                .iter()
                .any(|b| b.key_id == "r" && b.left == 1),
            "{swapped:?}"
        );
        assert!(swapped.reshares.is_empty());
        assert_eq!(swapped.spare, Some(0));
    }
}
