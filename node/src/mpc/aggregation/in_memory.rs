//! Aggregation among cores, without processes or a network: every node has its own HPKE
//! key and task store (in a temporary directory); a few lines per round carry the cores'
//! messages from one to another, as the drivers do.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libp2p::PeerId;
use libp2p::identity::Keypair;

use super::client::prepare_report;
use super::collect::core::{
    BatchAnswer, Collector, Held, Open, Participant, Proposal, ReportSet, Signers, Statement,
    VoteAnswer, encode_ids, statement_bytes,
};
use super::encryption::EncryptionKey;
use super::relay::core::{
    Decision, Judged, Owner, Refusal, Relay, Sealed, TaskShape, check_client, open_sealed,
};
use super::relay::{decode_report, open_reserved};
use super::shares::{self, Field};
use super::store::{AggregationStore, ParticipantKey, TaskEntry, TaskInfo, TaskParams};
use super::{AggError, Report};
use crate::mpc::chunks::pieces;

struct Node {
    peer: PeerId,
    identity: Keypair,
    key: Arc<EncryptionKey>,
    task: Arc<TaskEntry>,
    _dir: tempfile::TempDir,
}

/// `n` nodes holding one task of threshold `t` and vector length `length`.
async fn cluster(n: usize, t: u16, length: u32, min_reports: u64) -> (Vec<Node>, TaskInfo) {
    let mut identities: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
    identities.sort_by_key(|k| k.public().to_peer_id());
    let peers: Vec<PeerId> = identities.iter().map(|k| k.public().to_peer_id()).collect();
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
            clients: Vec::new(),
            collectors: Vec::new(),
            input: Default::default(),
        },
        keys: identities
            .iter()
            .zip(&keys)
            .map(|(id, k)| ParticipantKey {
                peer_id: id.public().to_peer_id().to_string(),
                identity_public_key: hex::encode(id.public().encode_protobuf()),
                hpke_public_key: hex::encode(k.public_key()),
                signature: String::new(),
            })
            .collect(),
    };
    let mut nodes = Vec::new();
    for (i, ((identity, key), dir)) in identities.into_iter().zip(keys).zip(dirs).enumerate() {
        let peer = identity.public().to_peer_id();
        let (store, _) = AggregationStore::open(dir.path(), &peer.to_string()).unwrap();
        let task = store.insert(info.clone(), i).await.unwrap();
        nodes.push(Node {
            peer,
            identity,
            key,
            task,
            _dir: dir,
        });
    }
    (nodes, info)
}

/// A node's share of a report opened as the driver opens it: the client's signature, then
/// the seal; the share and the client it counts under.
async fn open_on(
    node: &Node,
    shape: &TaskShape,
    id: &str,
    sealed: Sealed,
) -> Result<(Vec<Field>, Option<String>), Refusal> {
    let client = check_client(shape, id, &sealed.enc, &sealed.ct, sealed.signed.as_ref())?;
    let key = node.key.clone();
    let (task_id, length, report_id) = (shape.task_id.clone(), shape.length, id.to_string());
    let Sealed { enc, ct, .. } = sealed;
    let share = open_reserved(&node.task, id, move || {
        open_sealed(&key, &task_id, length, &report_id, &enc, &ct, false)
    })
    .await?;
    Ok((share, client))
}

type Opened = Result<(Vec<Field>, Option<String>), Refusal>;

fn verdicts(opened: &[Opened]) -> Vec<Result<(), Refusal>> {
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
    for (id, sealed) in ids.iter().zip(own) {
        local.push(open_on(&nodes[r], &shape, id, sealed).await);
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
        for (id, sealed) in list {
            opened.push(open_on(&nodes[j], &owner_shape, &id, sealed).await);
        }
        let batch = nodes[j].task.current_batch();
        let (awaiting, rejected) = judging.verdicts(&verdicts(&opened), batch);
        relay.receive(peer, &rejected, batch).unwrap();
        owners.push((j, awaiting, opened));
    }
    let (mut committing, commits, outcomes) = relay
        .judge(&verdicts(&local), nodes[r].task.current_batch())
        .unwrap();
    let batch = committing.batch();
    for (j, awaiting, opened) in owners {
        let decisions = awaiting
            .receive_commit(relay_peer, &commits, batch)
            .unwrap();
        for ((id, o), d) in ids.iter().zip(opened).zip(decisions) {
            match (d, o) {
                (Decision::Store, Ok((share, client))) => {
                    nodes[j]
                        .task
                        .commit(id, &share, batch, client)
                        .await
                        .unwrap();
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
            Ok((share, client)) if *commit => {
                nodes[r]
                    .task
                    .commit(id, &share, batch, client)
                    .await
                    .unwrap();
            }
            Ok(_) => nodes[r].task.release(id),
            Err(_) => {}
        }
    }
    outcomes
}

fn held(node_batch: &super::store::Snapshot) -> Held {
    Held {
        set: node_batch.set,
        frozen: node_batch.frozen,
        vote: node_batch.vote,
        clients: node_batch.clients,
    }
}

fn sign(node: &Node, info: &TaskInfo, statement: Statement, batch: u64, set: ReportSet) -> Vec<u8> {
    let bytes = statement_bytes(statement, &info.params.task_id, batch, set);
    node.identity.sign(&bytes).unwrap()
}

/// A node's answer to a collect invite of `batch`, as the driver makes it.
async fn answer(node: &Node, info: &TaskInfo, p: &Participant, batch: u64) -> BatchAnswer {
    let mut snapshot = node.task.snapshot(batch).await;
    if p.freezes(&held(&snapshot)) {
        snapshot = node
            .task
            .freeze(batch, Duration::from_secs(1))
            .await
            .unwrap();
    }
    BatchAnswer {
        set: snapshot.set,
        clients: snapshot.clients,
        holds: snapshot
            .frozen
            .then(|| sign(node, info, Statement::Holds, batch, snapshot.set)),
        vote: snapshot
            .vote
            .map(|v| (v, sign(node, info, Statement::Vote, batch, v))),
    }
}

/// A node's vote on a proposal, as the driver makes it.
async fn vote_on(
    node: &Node,
    info: &TaskInfo,
    p: &Participant,
    collector: PeerId,
    proposal: &Proposal,
    batch: u64,
) -> (Option<(ReportSet, Vec<u8>)>, String) {
    let mut snapshot = node.task.snapshot(batch).await;
    let mut answer = p
        .receive_proposal(collector, proposal, &held(&snapshot))
        .unwrap();
    if answer == VoteAnswer::FreezeFirst {
        snapshot = node
            .task
            .freeze(batch, Duration::from_secs(1))
            .await
            .unwrap();
        answer = p
            .receive_proposal(collector, proposal, &held(&snapshot))
            .unwrap();
    }
    match answer {
        VoteAnswer::Vote(set) => match node.task.vote(batch, set, &proposal.ids).await.unwrap() {
            Ok(v) => (
                Some((v, sign(node, info, Statement::Vote, batch, v))),
                String::new(),
            ),
            Err(why) => (None, why),
        },
        VoteAnswer::Refuse(why) => (None, why),
        VoteAnswer::FreezeFirst => panic!("frozen above"),
    }
}

/// A node's share sum of `batch` if it opens, as the driver releases it.
async fn release(
    node: &Node,
    p: &Participant,
    collector: PeerId,
    open: &Open,
    batch: u64,
) -> Option<Vec<Field>> {
    let snapshot = node.task.snapshot(batch).await;
    let set = p.receive_open(collector, open, &held(&snapshot)).unwrap()?;
    node.task.mark_released(batch, set.digest).await.unwrap();
    Some(snapshot.share_sum)
}

/// A collect of `batch` by node `c`, every other node answering.
async fn collect(
    nodes: &[Node],
    info: &TaskInfo,
    c: usize,
    batch: u64,
) -> Result<(Vec<u64>, u64), AggError> {
    let collector_peer = nodes[c].peer;
    let shape = |i: usize| TaskShape::of(info, nodes[i].peer).unwrap();
    let signers = Signers::of(info, batch).unwrap();
    let min = info.params.min_reports;
    let participant = |i: usize| Participant::new(collector_peer, shape(i), signers.clone(), min);
    let me = participant(c);
    let own = answer(&nodes[c], info, &me, batch).await;
    let (mut collector, others) = Collector::start(shape(c), signers.clone(), min, own);
    let index = |peer: PeerId| nodes.iter().position(|n| n.peer == peer).unwrap();
    for peer in &others {
        let j = index(*peer);
        let a = answer(&nodes[j], info, &participant(j), batch).await;
        collector.receive_answer(*peer, a).unwrap();
    }
    let (mut proposal, ask, mut voting) = collector.propose(false).map_err(|(_, e)| e)?;
    // The ids from the first holder of the set, as the driver gets them.
    let holder = voting.holders()[0];
    let held_ids = nodes[index(holder)].task.snapshot(batch).await.report_ids;
    proposal.ids = voting.receive_ids(holder, &encode_ids(&held_ids)).unwrap();
    let (own_vote, why) = vote_on(&nodes[c], info, &me, collector_peer, &proposal, batch).await;
    voting.local_vote(own_vote, &why);
    for peer in ask {
        let j = index(peer);
        let (v, why) = vote_on(
            &nodes[j],
            info,
            &participant(j),
            collector_peer,
            &proposal,
            batch,
        )
        .await;
        voting.receive_vote(peer, v, &why).unwrap();
    }
    let (requests, opening) = voting.certify(false);
    let mut sums = Vec::new();
    for (peer, open) in requests {
        let j = index(peer);
        if let Some(sum) = release(&nodes[j], &participant(j), collector_peer, &open, batch).await {
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
        let snapshot = nodes[c].task.snapshot(batch).await;
        assert_eq!(snapshot.set, opening.set());
        nodes[c]
            .task
            .mark_released(batch, opening.set().digest)
            .await
            .unwrap();
        Some(snapshot.share_sum)
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
    let (sum, count) = collect(&nodes, &info, 0, 0).await.unwrap();
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
    let e = collect(&nodes, &info, 0, 0).await.unwrap_err();
    assert_eq!(e.code, "not_enough_reports", "{e}");
    // Nobody froze batch 0 (it is under min_reports), so a rogue collector cannot prove a
    // set to vote for: its own signature is one, t + 1 = 2 are needed.
    let rogue = nodes[0].peer;
    let signers = Signers::of(&info, 0).unwrap();
    let honest = Participant::new(
        rogue,
        TaskShape::of(&info, nodes[1].peer).unwrap(),
        signers,
        2,
    );
    let (set, ids) = {
        let s = nodes[1].task.snapshot(0).await;
        assert!(!s.frozen);
        (s.set, s.report_ids.into_iter().collect())
    };
    let proposal = Proposal {
        set,
        holds: vec![(0, sign(&nodes[0], &info, Statement::Holds, 0, set))],
        ids,
    };
    let held_by_1 = held(&nodes[1].task.snapshot(0).await);
    let e = honest
        .receive_proposal(rogue, &proposal, &held_by_1)
        .unwrap_err();
    assert_eq!(e.blamed(), [rogue]);
    assert!(e.reason().contains("min_reports = 2"), "{e}");
    // Nor can it open one report with votes it cannot get.
    let open = Open {
        set,
        send_sum: true,
        certificate: vec![(0, sign(&nodes[0], &info, Statement::Vote, 0, set))],
    };
    assert_eq!(
        honest
            .receive_open(rogue, &open, &held_by_1)
            .unwrap_err()
            .blamed(),
        [rogue]
    );
    // Nothing was frozen or opened anywhere: batch 0 still takes reports.
    let two = prepare_report(&info, &[1, 1, 1, 1]).unwrap();
    assert_eq!(
        codes(&relay_batch(&nodes, &info, 2, &[two]).await),
        ["accepted"]
    );
    let (sum, count) = collect(&nodes, &info, 1, 0).await.unwrap();
    assert_eq!((sum, count), (vec![2, 3, 4, 5], 2));
    // Batch 0 is opened; later reports go to batch 1, which opens on its own.
    for node in &nodes {
        assert_eq!(node.task.current_batch(), 1);
    }
    let three = prepare_report(&info, &[5, 0, 0, 0]).unwrap();
    assert_eq!(
        codes(&relay_batch(&nodes, &info, 0, &[three]).await),
        ["accepted"]
    );
    assert_eq!(
        collect(&nodes, &info, 2, 1).await.unwrap_err().code,
        "not_enough_reports"
    );
    let four = prepare_report(&info, &[1, 0, 0, 7]).unwrap();
    assert_eq!(
        codes(&relay_batch(&nodes, &info, 1, &[four]).await),
        ["accepted"]
    );
    let (sum, count) = collect(&nodes, &info, 2, 1).await.unwrap();
    assert_eq!((sum, count), (vec![6, 0, 0, 7], 2));
    // Batch 0 opened again gives the same sum: the same set, certified once.
    let (sum, count) = collect(&nodes, &info, 1, 0).await.unwrap();
    assert_eq!((sum, count), (vec![2, 3, 4, 5], 2));
}

/// A compromised relay commits report X into batch 0 on three nodes and into batch 1 on the
/// other three (n = 6, t = 2). Opening batch 0 with X and batch 1 with X would give the sum
/// of the honest report v of batch 0 by subtraction. The nodes that hold X in batch 1
/// refuse to vote for a batch-0 set that holds it, so that set never reaches the quorum of
/// 5, and no two sets that share a report are ever certified.
#[tokio::test]
async fn a_report_split_across_batches_by_a_relay_is_never_opened_twice() {
    let (nodes, info) = cluster(6, 2, 1, 1).await;
    let v = prepare_report(&info, &[41]).unwrap();
    assert_eq!(
        codes(&relay_batch(&nodes, &info, 3, &[v]).await),
        ["accepted"]
    );
    // The relay's doing: X (any share will do here) in batch 0 on nodes 0-2, batch 1 on 3-5.
    let x = "ff".repeat(16);
    let share = shares::to_field(&[7]).unwrap();
    for (i, node) in nodes.iter().enumerate() {
        assert!(node.task.reserve(&x));
        node.task
            .commit(&x, &share, u64::from(i >= 3), None)
            .await
            .unwrap();
    }
    let e = collect(&nodes, &info, 0, 0).await.unwrap_err();
    assert_eq!(e.code, "no_quorum", "{e}");
    assert!(
        e.message.contains(&format!(
            "report {x} of the proposed set is in batch 1 here"
        )),
        "{e}"
    );
    // Nothing of batch 0 was released anywhere.
    for node in &nodes {
        assert_eq!(node.task.snapshot(0).await.released, None);
    }
}
