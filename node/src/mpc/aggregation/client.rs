//! The client side of a report: check the task's keys, share the vector, seal each share to
//! its node. Used by `p2p-mpc aggregate submit` (and by tests that craft bad reports).

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libp2p::PeerId;

use super::store::TaskInfo;
use super::{Report, SealedShare, encryption, shares};

/// Checks the task's parameters as every node does (participants sorted and unique, so no
/// peer gets two shares; 1 <= t < n; the field) and that every participant's HPKE key is
/// signed by that participant's identity key.
pub fn verify_task(task: &TaskInfo) -> Result<(), String> {
    let p = &task.params;
    super::check_shape(p).map_err(|e| format!("task {}: {e}", p.task_id))?;
    if task.keys.len() != p.participants.len() {
        return Err(format!(
            "task {} lists {} participants but {} keys",
            p.task_id,
            p.participants.len(),
            task.keys.len()
        ));
    }
    for (peer, key) in p.participants.iter().zip(&task.keys) {
        if *peer != key.peer_id {
            return Err(format!("the key of {} is listed for {peer}", key.peer_id));
        }
        let peer_id: PeerId = peer
            .parse()
            .map_err(|e| format!("`{peer}` is not a peer id: {e}"))?;
        let dec = |what: &str, s: &str| {
            hex::decode(s).map_err(|e| format!("participant {peer}: {what} is not hex: {e}"))
        };
        encryption::verify_binding(
            &peer_id,
            &dec("identity_public_key", &key.identity_public_key)?,
            &dec("hpke_public_key", &key.hpke_public_key)?,
            &dec("signature", &key.signature)?,
        )?;
    }
    Ok(())
}

/// Checks that every participant of `task` is one of `members`, the peers the client trusts
/// (its pinned cluster): a node that names peers of its own in a task gets no share sealed
/// to them. [`verify_task`] checks that each HPKE key is signed by its participant.
pub fn check_pinned(task: &TaskInfo, members: &BTreeSet<PeerId>) -> Result<(), String> {
    let strangers: Vec<&str> = task
        .params
        .participants
        .iter()
        .filter(|p| {
            p.parse::<PeerId>()
                .map_or(true, |id| !members.contains(&id))
        })
        .map(String::as_str)
        .collect();
    if strangers.is_empty() {
        return Ok(());
    }
    Err(format!(
        "task {} names {} participant(s) that are not among the {} pinned members: {}; no share is sealed to them",
        task.params.task_id,
        strangers.len(),
        members.len(),
        strangers.join(", ")
    ))
}

/// Checks that `task`'s threshold is at least `min`, the one the client was told to expect:
/// a node that lowers it lets fewer colluding participants read every input.
pub fn check_min_threshold(task: &TaskInfo, min: u16) -> Result<(), String> {
    let t = task.params.threshold;
    if t < min {
        return Err(format!(
            "task {} has threshold {t}, below the {min} this client requires (--min-threshold): {} colluding participants could read every input",
            task.params.task_id,
            t + 1
        ));
    }
    Ok(())
}

/// Parses the peer ids a client pins: separated by newlines, spaces or commas, `#` starting
/// a comment. An error names the line.
pub fn parse_pinned(text: &str) -> Result<BTreeSet<PeerId>, String> {
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for word in line.split(|c: char| c == ',' || c.is_whitespace()) {
            if word.is_empty() {
                continue;
            }
            let peer = word
                .parse::<PeerId>()
                .map_err(|e| format!("line {}: `{word}` is not a peer id ({e})", i + 1))?;
            out.insert(peer);
        }
    }
    Ok(out)
}

/// A fresh random report id (32 hex digits).
pub fn new_report_id() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

/// Seals already-encoded share plaintexts (one per participant, in participant order).
pub fn seal_shares(
    task: &TaskInfo,
    report_id: &str,
    plaintexts: &[Vec<u8>],
) -> Result<Report, String> {
    let aad = encryption::associated_data(&task.params.task_id, report_id);
    let mut sealed = Vec::with_capacity(plaintexts.len());
    for (key, plain) in task.keys.iter().zip(plaintexts) {
        let pk = hex::decode(&key.hpke_public_key)
            .map_err(|e| format!("participant {}: bad HPKE key: {e}", key.peer_id))?;
        let (enc, ct) = encryption::seal(&pk, plain, &aad)?;
        sealed.push(SealedShare {
            peer_id: key.peer_id.clone(),
            enc: B64.encode(enc),
            ciphertext: B64.encode(ct),
            signature: None,
        });
    }
    Ok(Report {
        report_id: report_id.to_string(),
        shares: sealed,
        client: None,
    })
}

/// Signs every share of `report` with a client key of `task`: each owner checks the
/// signature of its own share (see `relay::core::share_signed_bytes`).
pub fn sign_report(
    task: &TaskInfo,
    report: &mut Report,
    key: &ed25519_dalek::SigningKey,
) -> Result<(), String> {
    use ed25519_dalek::Signer;
    let public = hex::encode(key.verifying_key().as_bytes());
    if !task
        .params
        .clients
        .iter()
        .any(|c| c.eq_ignore_ascii_case(&public))
    {
        return Err(format!(
            "the client key {public} is not one of the {} clients of task {}",
            task.params.clients.len(),
            task.params.task_id
        ));
    }
    for share in &mut report.shares {
        let owner: PeerId = share
            .peer_id
            .parse()
            .map_err(|_| format!("`{}` is not a peer id", share.peer_id))?;
        let enc = B64.decode(&share.enc).map_err(|e| e.to_string())?;
        let ct = B64.decode(&share.ciphertext).map_err(|e| e.to_string())?;
        let bytes = super::relay::core::share_signed_bytes(
            &task.params.task_id,
            &report.report_id,
            &owner,
            &enc,
            &ct,
        );
        share.signature = Some(hex::encode(key.sign(&bytes).to_bytes()));
    }
    report.client = Some(public);
    Ok(())
}

/// Builds a report of `values` for `task` (which must have passed [`verify_task`]): checks
/// length and range, splits into Shamir shares, seals share i to participant i.
/// A validated task takes one value (a count's 0 or 1, a sum's value, a histogram's
/// bucket), sharded and proven with Prio3.
pub fn prepare_report(task: &TaskInfo, values: &[u64]) -> Result<Report, String> {
    prepare_report_with(task, values, false)
}

/// Like [`prepare_report`]; with `forge` (the test-only `forge-report` fault of a client), a
/// validated task's report proves 0 (bucket 0 for a histogram) while its shares add up to
/// the given value (a histogram: one more 1, in the given bucket), so that only the
/// participants' check of the proof can refuse it.
pub fn prepare_report_with(task: &TaskInfo, values: &[u64], forge: bool) -> Result<Report, String> {
    let report_id = new_report_id();
    let p = &task.params;
    let plaintexts = match super::validity::Validator::new(p.input, p.participants.len())? {
        None if forge => {
            return Err(format!(
                "task {} takes raw input; a forged report needs a validated task",
                p.task_id
            ));
        }
        None => share_values(task, values)?,
        Some(v) => {
            let [value] = values else {
                return Err(format!(
                    "task {} takes one {} value per report; got {}",
                    p.task_id,
                    p.input.name(),
                    values.len()
                ));
            };
            if forge {
                let (index, delta) = match p.input {
                    super::validity::InputType::Histogram { .. } => (*value as usize, 1),
                    _ => (0, *value),
                };
                v.shard_forged(&p.task_id, &report_id, 0, Some((index, delta)))?
            } else {
                v.shard(&p.task_id, &report_id, *value)
                    .map_err(|e| format!("task {} ({}): {e}", p.task_id, p.input.name()))?
            }
        }
    };
    seal_shares(task, &report_id, &plaintexts)
}

/// Checks `values` against the task and splits them into encoded shares, one per participant.
fn share_values(task: &TaskInfo, values: &[u64]) -> Result<Vec<Vec<u8>>, String> {
    let p = &task.params;
    if values.len() != p.length as usize {
        return Err(format!(
            "task {} takes vectors of {} values; got {}",
            p.task_id,
            p.length,
            values.len()
        ));
    }
    let field = shares::to_field(values).map_err(|e| e.to_string())?;
    let split = shares::split(
        &field,
        usize::from(p.threshold),
        p.participants.len(),
        &mut rand10::rng(),
    )
    .map_err(|e| e.to_string())?;
    Ok(split.iter().map(|s| shares::encode(s)).collect())
}

/// Builds a report whose shares are NOT sealed: empty `enc`, and the share bytes followed by
/// 16 zero bytes in place of the ciphertext. Nodes refuse such shares unless started with the
/// test-only `plaintext-shares` fault; tests and the benchmarks' plaintext baseline use it.
/// Every relay sees every share of such a report: never for real inputs.
pub fn unsealed_report_for_tests(task: &TaskInfo, values: &[u64]) -> Result<Report, String> {
    let shares_out = share_values(task, values)?
        .into_iter()
        .zip(&task.keys)
        .map(|(mut plain, key)| {
            plain.extend_from_slice(&[0u8; 16]);
            SealedShare {
                peer_id: key.peer_id.clone(),
                enc: String::new(),
                ciphertext: B64.encode(plain),
                signature: None,
            }
        })
        .collect();
    Ok(Report {
        report_id: new_report_id(),
        shares: shares_out,
        client: None,
    })
}

/// Parses values: integers separated by commas and/or whitespace.
pub fn parse_values(text: &str) -> Result<Vec<u64>, String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u64>().map_err(|_| {
                format!(
                    "value {} (`{s}`) is not an integer from 0 to {}",
                    i + 1,
                    shares::MODULUS - 1
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpc::aggregation::store::{ParticipantKey, TaskParams};

    fn task(participants: &[PeerId]) -> TaskInfo {
        TaskInfo {
            params: TaskParams {
                task_id: "ab".repeat(16),
                participants: participants.iter().map(ToString::to_string).collect(),
                threshold: 1,
                length: 1,
                modulus: shares::MODULUS,
                min_reports: 1,
                created_at: 0,
                created_by: None,
                clients: Vec::new(),
                collectors: Vec::new(),
                input: Default::default(),
            },
            keys: Vec::<ParticipantKey>::new(),
        }
    }

    #[test]
    fn a_task_with_a_participant_outside_the_pinned_members_is_refused() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let members: BTreeSet<PeerId> = [a, b].into();
        assert!(check_pinned(&task(&[a, b]), &members).is_ok());
        let e = check_pinned(&task(&[a, c]), &members).unwrap_err();
        assert!(
            e.contains(&c.to_string()) && e.contains("2 pinned members"),
            "{e}"
        );
        assert!(!e.contains(&a.to_string()), "{e}");
    }

    #[test]
    fn a_task_that_gives_one_peer_two_shares_or_a_low_threshold_is_refused() {
        let mut peers = vec![PeerId::random(), PeerId::random(), PeerId::random()];
        peers.sort();
        let mut twice = task(&[peers[0], peers[0], peers[1]]);
        twice.keys = vec![];
        let e = verify_task(&twice).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        let mut unsorted = task(&[peers[1], peers[0]]);
        unsorted.keys = vec![];
        assert!(verify_task(&unsorted).unwrap_err().contains("sorted"));
        let mut all = task(&peers);
        all.params.threshold = 3;
        assert!(
            verify_task(&all)
                .unwrap_err()
                .contains("threshold 3 is out of range")
        );
        all.params.threshold = 1;
        let e = check_min_threshold(&all, 2).unwrap_err();
        assert!(e.contains("threshold 1, below the 2"), "{e}");
        assert!(check_min_threshold(&all, 1).is_ok());
    }

    #[test]
    fn pinned_members_are_read_from_lines_spaces_and_commas() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let text = format!("# the cluster\n{a} {b},{c}\n\n{a}  # again\n");
        assert_eq!(parse_pinned(&text).unwrap(), [a, b, c].into());
        let e = parse_pinned(&format!("{a}\nnot-a-peer\n")).unwrap_err();
        assert!(e.starts_with("line 2: `not-a-peer`"), "{e}");
    }
}
