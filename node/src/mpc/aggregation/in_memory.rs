//! Aggregation among cores, without processes or a network: every node has its own HPKE
//! key and task store (in a temporary directory); a few lines per round carry the cores'
//! messages from one to another, as the drivers do.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libp2p::PeerId;

use super::client::prepare_report;
use super::collect::core::{Collector, Participant, ReportSet};
use super::encryption::EncryptionKey;
use super::relay::core::{Decision, Judged, Owner, Refusal, Relay, TaskShape, open_sealed};
use super::relay::{decode_report, open_reserved};
use super::shares::{self, Field};
use super::store::{AggregationStore, ParticipantKey, TaskEntry, TaskInfo, TaskParams};
use super::{AggError, Report};
use crate::mpc::chunks::pieces;

struct Node {
    peer: PeerId,
    key: Arc<EncryptionKey>,
    task: Arc<TaskEntry>,
    _dir: tempfile::TempDir,
}

/// `n` nodes holding one task of threshold `t` and vector length `length`.
async fn cluster(n: usize, t: u16, length: u32, min_reports: u64) -> (Vec<Node>, TaskInfo) {
    let mut peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
    peers.sort();
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<Arc<EncryptionKey>> = dirs
        .iter()
        .map(|d| Arc::new(EncryptionKey::load_or_create(d.path()).unwrap()))
        .collect();
    let info = TaskInfo {
        params: TaskParams {
            task_id: "ab".repeat(16),
            participants: peers.iter().map(ToString::to_string).collect(),
            threshold: t,
            length,
            modulus: shares::MODULUS,
            min_reports,
            created_at: 0,
            created_by: None,
        },
        keys: peers
            .iter()
            .zip(&keys)
            .map(|(p, k)| ParticipantKey {
                peer_id: p.to_string(),
                identity_public_key: String::new(),
                hpke_public_key: hex::encode(k.public_key()),
                signature: String::new(),
            })
            .collect(),
    };
    let mut nodes = Vec::new();
    for (i, ((peer, key), dir)) in peers.into_iter().zip(keys).zip(dirs).enumerate() {
        let (store, _) = AggregationStore::open(dir.path(), &peer.to_string()).unwrap();
        let task = store.insert(info.clone(), i).await.unwrap();
        nodes.push(Node {
            peer,
            key,
            task,
            _dir: dir,
        });
    }
    (nodes, info)
}

async fn open_on(
    node: &Node,
    shape: &TaskShape,
    id: &str,
    enc: Vec<u8>,
    ct: Vec<u8>,
) -> Result<Vec<Field>, Refusal> {
    let key = node.key.clone();
    let (task_id, length, report_id) = (shape.task_id.clone(), shape.length, id.to_string());
    open_reserved(&node.task, id, move || {
        open_sealed(&key, &task_id, length, &report_id, &enc, &ct, false)
    })
    .await
}

fn verdicts(opened: &[Result<Vec<Field>, Refusal>]) -> Vec<Result<(), Refusal>> {
    opened
        .iter()
        .map(|o| o.as_ref().map(|_| ()).map_err(Clone::clone))
        .collect()
}

/// One relay session of node `r` for `reports`, every owner answering.
async fn relay_batch(nodes: &[Node], info: &TaskInfo, r: usize, reports: &[Report]) -> Vec<Judged> {
    let relay_peer = nodes[r].peer;
    let shape = TaskShape::of(info, relay_peer).unwrap();
    let decoded: Vec<(String, _)> = reports
        .iter()
        .map(|rep| (rep.report_id.clone(), decode_report(&shape, rep).unwrap()))
        .collect();
    let ids: Vec<String> = decoded.iter().map(|(id, _)| id.clone()).collect();
    let (mut relay, invites, own) = Relay::start(shape.clone(), decoded).unwrap();
    let mut local = Vec::new();
    for (id, (enc, ct)) in ids.iter().zip(own) {
        local.push(open_on(&nodes[r], &shape, id, enc, ct).await);
    }
    let mut owners = Vec::new();
    for (peer, invite) in invites {
        let j = nodes.iter().position(|n| n.peer == peer).unwrap();
        let owner_shape = TaskShape::of(info, peer).unwrap();
        let streamed = invite.streamed.is_some();
        assert_eq!(streamed, shape.streamed());
        let mut owner =
            Owner::invited(owner_shape.clone(), relay_peer, invite.shares, streamed).unwrap();
        if let Some(bytes) = invite.streamed {
            let chunks: Vec<_> = pieces(bytes).collect();
            for (i, piece) in chunks.iter().enumerate() {
                let done = owner.receive_chunk(relay_peer, i as u32, piece).unwrap();
                assert_eq!(done, i + 1 == chunks.len());
            }
        }
        assert!(!owner.waits_for_chunks());
        let (judging, list) = owner.shares().unwrap();
        let mut opened = Vec::new();
        for (id, enc, ct) in list {
            opened.push(open_on(&nodes[j], &owner_shape, &id, enc, ct).await);
        }
        let (awaiting, rejected) = judging.verdicts(&verdicts(&opened));
        relay.receive(peer, &rejected).unwrap();
        owners.push((j, awaiting, opened));
    }
    let (mut committing, commits, outcomes) = relay.judge(&verdicts(&local)).unwrap();
    for (j, awaiting, opened) in owners {
        let decisions = awaiting.receive_commit(relay_peer, &commits).unwrap();
        for ((id, o), d) in ids.iter().zip(opened).zip(decisions) {
            match (d, o) {
                (Decision::Store, Ok(share)) => {
                    nodes[j].task.commit(id, &share).await.unwrap();
                }
                (Decision::Drop, _) => nodes[j].task.release(id),
                (Decision::Refused, o) => assert!(o.is_err()),
                (Decision::Store, Err(_)) => panic!("told to store a share that was refused"),
            }
        }
        committing.receive_stored(nodes[j].peer).unwrap();
    }
    assert!(committing.is_done());
    for ((id, o), commit) in ids.iter().zip(local).zip(&commits) {
        match o {
            Ok(share) if *commit => {
                nodes[r].task.commit(id, &share).await.unwrap();
            }
            Ok(_) => nodes[r].task.release(id),
            Err(_) => {}
        }
    }
    outcomes
}

async fn set_of(node: &Node) -> (ReportSet, Vec<Field>) {
    let s = node.task.snapshot().await;
    let set = ReportSet {
        digest: s.digest,
        count: s.count,
    };
    (set, s.share_sum)
}

/// A collect by node `c`, every other node answering.
async fn collect(nodes: &[Node], info: &TaskInfo, c: usize) -> Result<(Vec<u64>, u64), AggError> {
    let collector_peer = nodes[c].peer;
    let shape = TaskShape::of(info, collector_peer).unwrap();
    let (own, own_sum) = set_of(&nodes[c]).await;
    let (mut collector, others) = Collector::start(shape, info.params.min_reports, own);
    let mut participants = BTreeMap::new();
    for peer in others {
        let j = nodes.iter().position(|n| n.peer == peer).unwrap();
        let (set, sum) = set_of(&nodes[j]).await;
        let participant = Participant::start(
            collector_peer,
            info.params.task_id.clone(),
            info.params.min_reports,
            set,
        );
        collector.receive_set(peer, set).unwrap();
        participants.insert(peer, (j, participant, sum));
    }
    let (requests, opening) = collector.choose(false);
    let mut sums = Vec::new();
    for (peer, open) in requests {
        let (j, participant, sum) = participants.remove(&peer).unwrap();
        if let Some(digest) = participant.receive_open(collector_peer, open).unwrap() {
            nodes[j].task.mark_opened(digest).await.unwrap();
            sums.push((peer, shares::encode(&sum)));
        }
    }
    let mut opening = opening?;
    for (peer, bytes) in sums {
        for (i, piece) in pieces(bytes.into()).enumerate() {
            opening.receive_chunk(peer, i as u32, &piece).unwrap();
        }
    }
    let own = if opening.local_opens() {
        nodes[c]
            .task
            .mark_opened(opening.set().digest)
            .await
            .unwrap();
        Some(own_sum)
    } else {
        None
    };
    let opened = opening.finish(own).unwrap();
    let sum = shares::reconstruct(&opened.points).unwrap();
    Ok((shares::to_integers(&sum), opened.set.count))
}

/// `report` with the ciphertext sealed to participant `owner` altered.
fn corrupt(mut report: Report, owner: &PeerId) -> Report {
    let share = report
        .shares
        .iter_mut()
        .find(|s| s.peer_id == owner.to_string())
        .unwrap();
    let mut ct = B64.decode(&share.ciphertext).unwrap();
    ct[0] ^= 1;
    share.ciphertext = B64.encode(ct);
    report
}

/// What happened to each report: accepted, or the refusal's code.
fn codes(outcomes: &[Judged]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Ok(_) => "accepted".to_string(),
            Err((code, _)) => code.clone(),
        })
        .collect()
}

/// Good reports, a corrupt one and a replayed one relayed among five cores (t = 2), then
/// the sum opened: the outcome of each report, and the sum, for a vector of `length`.
async fn relay_and_collect(length: u32) -> (Vec<String>, Vec<u64>, u64) {
    let (nodes, info) = cluster(5, 2, length, 3).await;
    let values = |k: u64| -> Vec<u64> { (0..u64::from(length)).map(|i| i * k + 1).collect() };
    let good1 = prepare_report(&info, &values(1)).unwrap();
    let good2 = prepare_report(&info, &values(2)).unwrap();
    let good3 = prepare_report(&info, &values(3)).unwrap();
    let bad = corrupt(prepare_report(&info, &values(100)).unwrap(), &nodes[3].peer);
    let replay = good1.clone();
    let shape = TaskShape::of(&info, nodes[0].peer).unwrap();
    let mut outcomes = Vec::new();
    let first = [good1, good2];
    let second = [replay, bad, good3];
    if shape.streamed() {
        // Long vectors: one report per batch.
        for report in first.iter().chain(&second) {
            outcomes.extend(relay_batch(&nodes, &info, 1, std::slice::from_ref(report)).await);
        }
    } else {
        outcomes.extend(relay_batch(&nodes, &info, 1, &first).await);
        outcomes.extend(relay_batch(&nodes, &info, 2, &second).await);
    }
    for node in &nodes {
        assert_eq!(node.task.report_count().await, 3);
    }
    let (sum, count) = collect(&nodes, &info, 0).await.unwrap();
    let expected: Vec<u64> = (0..u64::from(length)).map(|i| i * 6 + 3).collect();
    assert_eq!(sum, expected);
    (codes(&outcomes), sum, count)
}

#[tokio::test]
async fn reports_are_judged_the_same_way_and_summed_whatever_their_size() {
    let (short, _, short_count) = relay_and_collect(3).await;
    // 30,000 values make a sealed share of 240,016 bytes: too long for one message.
    let (long, _, long_count) = relay_and_collect(30_000).await;
    let expected = [
        "accepted",
        "accepted",
        "duplicate_report",
        "bad_ciphertext",
        "accepted",
    ];
    assert_eq!(short, expected);
    assert_eq!(long, expected);
    assert_eq!((short_count, long_count), (3, 3));
}

#[tokio::test]
async fn a_sum_under_min_reports_is_refused_by_the_collector_and_by_every_participant() {
    let (nodes, info) = cluster(3, 1, 4, 2).await;
    let one = prepare_report(&info, &[1, 2, 3, 4]).unwrap();
    let outcome = relay_batch(&nodes, &info, 0, &[one]).await;
    assert_eq!(codes(&outcome), ["accepted"]);
    let e = collect(&nodes, &info, 0).await.unwrap_err();
    assert_eq!(e.code, "not_enough_reports", "{e}");
    // A collector that skips the check (the test fault) gets nothing from a participant.
    let collector = nodes[0].peer;
    let (set, _) = set_of(&nodes[1]).await;
    let (mut rogue, _) = Collector::start(
        TaskShape::of(&info, collector).unwrap(),
        2,
        set_of(&nodes[0]).await.0,
    );
    rogue.receive_set(nodes[1].peer, set).unwrap();
    let (requests, opening) = rogue.choose(true);
    assert!(opening.is_ok());
    let (_, open) = requests[0];
    assert!(open.send_sum);
    let participant = Participant::start(collector, info.params.task_id.clone(), 2, set);
    let e = participant.receive_open(collector, open).unwrap_err();
    assert_eq!(e.blamed(), [collector]);
    assert!(e.reason().contains("min_reports = 2"), "{e}");
    // Nothing was marked opened anywhere: the task still takes reports.
    let two = prepare_report(&info, &[1, 1, 1, 1]).unwrap();
    assert_eq!(
        codes(&relay_batch(&nodes, &info, 2, &[two]).await),
        ["accepted"]
    );
    let (sum, count) = collect(&nodes, &info, 1).await.unwrap();
    assert_eq!((sum, count), (vec![2, 3, 4, 5], 2));
    // Once opened, a task takes no more reports, on every node.
    let three = prepare_report(&info, &[0, 0, 0, 0]).unwrap();
    let outcome = relay_batch(&nodes, &info, 0, &[three]).await;
    assert_eq!(codes(&outcome), ["task_collected"]);
}
