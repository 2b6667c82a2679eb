//! A member of the cluster floods one node: 10,000 session invitations, 100 MiB of messages
//! for sessions that do not exist, oversized and amplifying messages. The node's memory
//! stays bounded (RSS grows by at most 32 MiB), its log stays short, signing among the honest
//! members still works, and 16 valid invitations fill the member's session cap, so that the
//! 17th is refused. Sybil strangers outside the roster are refused at the door (their
//! connections, after the handshake) while members sign and reconnect.

mod common;

use std::time::Duration;

use common::{NodeProcess, args, identity, post, tempdir, wait_for};
use futures::StreamExt;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use p2p_mpc_node::mpc::wire::{self, Body, MpcMessage, SessionId};
use p2p_mpc_node::network::{MpcSendError, NetworkClient};
use p2p_mpc_testenv::metric_sum;
use serde_json::json;

fn rss_kib(node: &NodeProcess) -> u64 {
    node.rss_bytes() / 1024
}

/// Sends every message, `parallel` at a time; returns how many the victim accepted.
async fn send_all(
    client: &NetworkClient,
    to: PeerId,
    messages: Vec<Vec<u8>>,
    parallel: usize,
) -> usize {
    futures::stream::iter(messages)
        .map(|m| {
            let c = client.clone();
            async move { c.send_mpc_raw(to, m).await.is_ok() }
        })
        .buffer_unordered(parallel)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_member_gets_bounded_memory_and_signing_goes_on() {
    let dir = tempdir();
    let (key_a, a) = identity(dir.path(), "a");
    let (key_b, b) = identity(dir.path(), "b");
    let flood_key = Keypair::generate_ed25519();
    let flood_peer = flood_key.public().to_peer_id();
    let members = format!("{a},{b},{flood_peer}");
    // Round deadlines of 60 s: the member's valid sessions below stay open while it fills
    // them, however slow the machine.
    let node_a = NodeProcess::start(
        "A",
        dir.path(),
        &args(&[
            "--identity-key-path",
            &key_a,
            "--cluster-member",
            &members,
            "--mpc-round-timeout",
            "60",
        ]),
    )
    .await;
    let node_b = NodeProcess::start(
        "B",
        dir.path(),
        &args(&[
            "--identity-key-path",
            &key_b,
            "--cluster-member",
            &members,
            "--bootnode",
            &node_a.tcp_addr,
        ]),
    )
    .await;
    node_b
        .wait_connected_to(&node_a.peer_id, Duration::from_secs(20))
        .await;
    let ids = [a.to_string(), b.to_string()];
    let key = wait_for("the DKG", Duration::from_secs(60), || async {
        match post(
            &node_b,
            "/v1/keys",
            json!({"threshold": 2, "participants": ids, "policy": {"open": true}}),
        )
        .await
        {
            (201, body) => Ok(body),
            (s, body) => Err(format!("{s} {body}")),
        }
    })
    .await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let sign = || async {
        post(
            &node_b,
            &format!("/v1/keys/{key_id}/sign"),
            json!({"message": "00ff"}),
        )
        .await
    };
    assert_eq!(sign().await.0, 200);

    // The flooder takes whatever the node sends it and answers nothing (a silent member).
    let flood = p2p_mpc_node::network::dial_silent_member(flood_key, &node_a.tcp_addr, 1 << 20)
        .await
        .expect("the flooding peer starts");
    // Wait for the connection (the first message may race it).
    wait_for(
        "the flooder to reach A",
        Duration::from_secs(20),
        || async {
            match flood
                .send_mpc_raw(
                    a,
                    wire::encode(&MpcMessage::new(
                        SessionId::random(),
                        Body::TransferDone { bytes: 0 },
                    )),
                )
                .await
            {
                Err(p2p_mpc_node::network::MpcSendError::Unreachable { message, .. }) => {
                    Err(message)
                }
                _ => Ok(()),
            }
        },
    )
    .await;
    let before = rss_kib(&node_a);

    // 10,000 session invitations (for keys and DKGs that cannot exist).
    let invites: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            let body = if i % 2 == 0 {
                Body::SignInvite {
                    key_id: format!("{i:032x}"),
                    message: vec![1; 64],
                    authorizations: vec![],
                    policy: p2p_mpc_node::mpc::policy::PolicyStamp {
                        version: 0,
                        digest: [0; 32],
                    },
                    generation: 0,
                }
            } else {
                Body::DkgInvite {
                    scheme: Default::default(),
                    key_id: format!("{i:032x}"),
                    threshold: 9,
                    participants: vec![a.to_string(), flood_peer.to_string()],
                    policy: wire::Blob(b"{\"open\":true}".to_vec().into()),
                }
            };
            wire::encode(&MpcMessage::new(SessionId::random(), body))
        })
        .collect();
    let accepted = send_all(&flood, a, invites, 64).await;
    assert_eq!(accepted, 0, "no invitation opens a session");

    // 100 MiB of messages for sessions that do not exist (they would wait for an invite).
    let early: Vec<Vec<u8>> = (0..400)
        .map(|_| {
            wire::encode(&MpcMessage::new(
                SessionId::random(),
                Body::DkgRound1 {
                    package: vec![0; 250 * 1024],
                },
            ))
        })
        .collect();
    let buffered = send_all(&flood, a, early, 8).await;
    assert!(
        buffered <= 10,
        "{buffered} large early messages were buffered"
    );

    // Oversized messages, and messages that would amplify when decoded.
    let oversized = vec![vec![0u8; 300 * 1024]; 20];
    assert_eq!(send_all(&flood, a, oversized, 8).await, 0);
    let amplifying: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            wire::encode(&MpcMessage::new(
                SessionId::random(),
                Body::Abort {
                    reason: String::new(),
                    blamed: vec![String::new(); 200_000],
                },
            ))
        })
        .collect();
    assert_eq!(send_all(&flood, a, amplifying, 8).await, 0);

    let after = rss_kib(&node_a);
    let grown = after.saturating_sub(before);
    eprintln!("RSS of the flooded node: {before} KiB before, {after} KiB after (+{grown} KiB)");
    assert!(grown <= 32 * 1024, "RSS grew by {grown} KiB");

    // The honest members still sign, and A still serves.
    let (status, body) = sign().await;
    assert_eq!(status, 200, "{body}");
    node_a.get("/v1/status").await.unwrap();
    let page = node_a.metrics_page().await;
    assert!(
        page.lines().any(
            |l| l.starts_with("p2p_mpc_mpc_refused_total{reason=\"malformed\"}")
                && !l.ends_with(" 0")
        ),
        "amplifying messages are counted as malformed"
    );
    // The flood did not flood the log: 10,000 refused invitations and hundreds of refused
    // messages leave a few lines at most (they are counted in the metrics instead).
    let lines = node_a.stderr_lines();
    assert!(
        lines.len() < 300,
        "the flooded node wrote {} log lines; the last: {:?}",
        lines.len(),
        lines.last()
    );

    // The per-peer session cap holds for valid invitations too: 16 DKG invitations with fresh
    // key ids among members open 16 sessions (mpc_max_sessions_per_peer), the 17th is refused
    // with the cap's rule while they run. The inviter takes the node's round-1 messages and
    // stays silent, so its sessions stay open until their deadline.

    let sessions: Vec<SessionId> = (0..17).map(|_| SessionId::random()).collect();
    let valid = |i: u64| {
        wire::encode(&MpcMessage::new(
            sessions[i as usize],
            Body::DkgInvite {
                scheme: Default::default(),
                key_id: format!("{:032x}", 0xcafe_0000 + i),
                threshold: 2,
                participants: vec![a.to_string(), flood_peer.to_string()],
                policy: wire::Blob(b"{\"open\":true}".to_vec().into()),
            },
        ))
    };
    for i in 0..16 {
        flood
            .send_mpc_raw(a, valid(i))
            .await
            .unwrap_or_else(|e| panic!("valid invitation {i} was refused: {e}"));
    }
    match flood.send_mpc_raw(a, valid(16)).await {
        // Typed as busy: a cap that frees up when sessions end, not a final refusal.
        Err(MpcSendError::Busy { reason, .. }) => {
            assert!(reason.contains("mpc_max_sessions_per_peer"), "{reason}")
        }
        other => panic!("the 17th session was not refused: {other:?}"),
    }

    // The member fills its 16 sessions with messages for a later round (250 KiB each, kept
    // by each session until then): the byte budgets hold it to 16 MiB in all, the rest is
    // answered busy and counted, and the node's memory stays bounded.
    let before_fill = rss_kib(&node_a);
    // 8 messages per session: 32 MiB in all, twice what the member may have held.
    let fill: Vec<Vec<u8>> = sessions[..16]
        .iter()
        .flat_map(|s| {
            let one = wire::encode(&MpcMessage::new(
                *s,
                Body::DkgRound2 {
                    package: vec![3; 250 * 1024],
                },
            ));
            std::iter::repeat_n(one, 8)
        })
        .collect();
    let held = send_all(&flood, a, fill, 8).await;
    let page = node_a.metrics_page().await;
    let held_bytes = metric_sum(&page, "p2p_mpc_mpc_held_bytes", &[]);
    assert!(
        held_bytes <= (16 * 1024 * 1024) as f64 && held > 0,
        "held {held_bytes} bytes ({held} messages)"
    );
    assert!(
        metric_sum(&page, "p2p_mpc_mpc_held_bytes_refused_total", &[]) > 0.0,
        "{page}"
    );
    let grown = rss_kib(&node_a).saturating_sub(before_fill);
    assert!(
        grown <= 32 * 1024,
        "RSS grew by {grown} KiB while the member filled its sessions"
    );
    assert_eq!(sign().await.0, 200, "signing goes on");
}

/// `p2p_mpc_connections_refused_total{direction="inbound"}` on a metrics page.
fn refused_inbound(page: &str) -> u64 {
    page.lines()
        .filter(|l| {
            l.starts_with("p2p_mpc_connections_refused_total{") && l.contains("\"inbound\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Sybil strangers (fresh identities outside the roster) dial one node over and over and
/// try to write 256 KiB messages on every attempt, while the members sign and one member
/// restarts: every stranger's connection is refused after its handshake (none of its bytes
/// is read as a message), the node's memory stays bounded, the restarted member gets back in
/// and at least 90 % of the signatures made during the flood succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_at_the_door_and_members_keep_signing() {
    let dir = tempdir();
    let (key_a, a) = identity(dir.path(), "a");
    let (key_b, b) = identity(dir.path(), "b");
    let members = format!("{a},{b}");
    let node_a = NodeProcess::start(
        "A",
        dir.path(),
        &args(&["--identity-key-path", &key_a, "--cluster-member", &members]),
    )
    .await;
    let b_args = args(&[
        "--identity-key-path",
        &key_b,
        "--cluster-member",
        &members,
        "--bootnode",
        &node_a.tcp_addr,
    ]);
    let mut node_b = NodeProcess::start("B", dir.path(), &b_args).await;
    node_b
        .wait_connected_to(&node_a.peer_id, Duration::from_secs(20))
        .await;
    let ids = [a.to_string(), b.to_string()];
    let (status, key) = post(
        &node_b,
        "/v1/keys",
        json!({"threshold": 2, "participants": ids, "policy": {"open": true}}),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let before = rss_kib(&node_a);

    // 16 strangers, each with 16 messages of 256 KiB in flight, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut floods = Vec::new();
    for _ in 0..16 {
        let client = p2p_mpc_node::network::dial_peer(
            Keypair::generate_ed25519(),
            &node_a.tcp_addr,
            &[],
            1 << 20,
        )
        .await
        .expect("a stranger starts");
        let stop = stop.clone();
        floods.push(tokio::spawn(async move {
            let message = wire::encode(&MpcMessage::new(
                SessionId::random(),
                Body::DkgRound1 {
                    package: vec![7; 250 * 1024],
                },
            ));
            let mut read = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answers = futures::future::join_all(
                    (0..16).map(|_| client.send_mpc_raw(a, message.clone())),
                )
                .await;
                read += answers
                    .iter()
                    .filter(|r| !matches!(r, Err(MpcSendError::Unreachable { .. })))
                    .count();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            read
        }));
    }

    // The members sign through the flood; B restarts half way and must get back in.
    let path = format!("/v1/keys/{key_id}/sign");
    let mut signed = 0;
    for i in 0..20 {
        if i == 10 {
            node_b.kill();
            node_b = NodeProcess::start("B", dir.path(), &b_args).await;
            node_b
                .wait_connected_to(&node_a.peer_id, Duration::from_secs(20))
                .await;
        }
        if post(&node_b, &path, json!({"message": "00ff"})).await.0 == 200 {
            signed += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut read = 0;
    for f in floods {
        read += f.await.unwrap();
    }
    assert!(
        signed >= 18,
        "only {signed} of 20 signatures during the flood"
    );
    assert_eq!(read, 0, "a stranger's message was answered");
    let page = node_a.metrics_page().await;
    assert!(refused_inbound(&page) >= 16, "{page}");
    let grown = rss_kib(&node_a).saturating_sub(before);
    assert!(
        grown <= 32 * 1024,
        "RSS grew by {grown} KiB under the strangers' flood"
    );
}

/// What requests still being read may hold is bounded by bytes for all peers together
/// (`mpc_max_reading_mib`), members included: a member that sends 64 messages of 250 KiB at
/// once to a node with a 1 MiB read budget gets most of them dropped while they are read,
/// counted in `p2p_mpc_mpc_reads_refused_total`; the budget is given back, and the member's
/// next small message is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_requests_are_bounded_by_the_read_budget() {
    let dir = tempdir();
    let (key_a, a) = identity(dir.path(), "a");
    let flood_key = Keypair::generate_ed25519();
    let flood_peer = flood_key.public().to_peer_id();
    let members = format!("{a},{flood_peer}");
    let node_a = NodeProcess::start(
        "A",
        dir.path(),
        &args(&[
            "--identity-key-path",
            &key_a,
            "--cluster-member",
            &members,
            "--mpc-max-reading-mib",
            "1",
        ]),
    )
    .await;
    let flood = p2p_mpc_node::network::dial_silent_member(flood_key, &node_a.tcp_addr, 1 << 20)
        .await
        .expect("the flooding peer starts");
    let small = || {
        wire::encode(&MpcMessage::new(
            SessionId::random(),
            Body::TransferDone { bytes: 0 },
        ))
    };
    wait_for("the member to reach A", Duration::from_secs(20), || async {
        match flood.send_mpc_raw(a, small()).await {
            Err(MpcSendError::Unreachable { message, .. }) => Err(message),
            _ => Ok(()),
        }
    })
    .await;

    let big = wire::encode(&MpcMessage::new(
        SessionId::random(),
        Body::DkgRound2 {
            package: vec![5; 250 * 1024],
        },
    ));
    let read = send_all(&flood, a, vec![big; 64], 64).await;
    let page = node_a.metrics_page().await;
    let refused = metric_sum(&page, "p2p_mpc_mpc_reads_refused_total", &[]);
    eprintln!("{read} of 64 messages of 250 KiB read, {refused} dropped while read");
    assert!(
        refused > 0.0 && read < 64,
        "64 messages of 250 KiB at once fit in a 1 MiB read budget? read {read}, refused {refused}"
    );
    wait_for(
        "the read budget to be given back",
        Duration::from_secs(20),
        || async {
            let page = node_a.metrics_page().await;
            match page
                .lines()
                .find(|l| l.starts_with("p2p_mpc_mpc_reading_bytes "))
            {
                Some(l) if l.ends_with(" 0") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // The member is still connected and its next message is read (answered, not dropped).
    if let Err(e @ (MpcSendError::Unreachable { .. } | MpcSendError::Transport(_))) =
        flood.send_mpc_raw(a, small()).await
    {
        panic!("a small message after the burst was not read: {e}");
    }
}
