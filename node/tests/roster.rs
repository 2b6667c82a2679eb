//! The cluster roster against real node processes: a peer outside the roster gets no
//! connection (refused after the handshake and counted, so none of its messages is read),
//! a member that invites a stranger is refused by every participant, the default
//! participants are the roster's members, and the members file is re-read while the node
//! runs (a peer that leaves it is disconnected).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{NodeProcess, args, identity, library_peer, post, tempdir, wait_for};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use p2p_mpc_node::mpc::policy::SigningPolicy;
use p2p_mpc_node::mpc::wire::{Blob, Body, MpcMessage, SessionId};
use p2p_mpc_node::network::{MpcSendError, NetworkClient};
use serde_json::json;

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `p2p_mpc_connections_refused_total` of `direction` on a metrics page.
fn connections_refused(page: &str, direction: &str) -> u64 {
    p2p_mpc_testenv::metric_sum(
        page,
        "p2p_mpc_connections_refused_total",
        &[("direction", direction)],
    ) as u64
}

fn refused(page: &str, reason: &str) -> u64 {
    p2p_mpc_testenv::metric_sum(page, "p2p_mpc_mpc_refused_total", &[("reason", reason)]) as u64
}

/// Sends `body` until the victim answers (the connection may still be coming up), and
/// returns the refusal reason.
async fn send_refused(client: &NetworkClient, to: PeerId, bytes: Vec<u8>) -> String {
    wait_for("an answer to the message", Duration::from_secs(20), || {
        let bytes = bytes.clone();
        async move {
            match client.send_mpc_raw(to, bytes).await {
                Err(MpcSendError::Rejected { reason, .. }) => Ok(reason),
                Ok(()) => panic!("the message was accepted"),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

fn open_policy() -> Blob {
    Blob(SigningPolicy::open().to_bytes().into())
}

fn encode(body: Body) -> Vec<u8> {
    p2p_mpc_node::mpc::wire::encode(&MpcMessage::new(SessionId::random(), body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_get_nothing_and_members_check_every_participant() {
    let dir = tempdir();
    let (key_a, a) = identity(dir.path(), "a");
    let (key_b, b) = identity(dir.path(), "b");
    // A member that the test drives through the library (it may misbehave).
    let member_key = Keypair::generate_ed25519();
    let member = member_key.public().to_peer_id();
    let members = dir.path().join("members");
    std::fs::write(&members, format!("# test cluster\n{a}\n{b}\n{member}\n")).unwrap();
    let members_arg = members.display().to_string();

    let node_a = NodeProcess::start(
        "A",
        dir.path(),
        &args(&[
            "--identity-key-path",
            &key_a,
            "--cluster-members-file",
            &members_arg,
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
            &format!("{a},{member}"),
            "--cluster-member",
            &b.to_string(),
            "--bootnode",
            &node_a.tcp_addr,
        ]),
    )
    .await;
    node_b
        .wait_connected_to(&node_a.peer_id, Duration::from_secs(20))
        .await;

    let status = node_a.get("/v1/status").await.unwrap();
    assert_eq!(status["roster"]["size"], 3, "{status}");
    assert_eq!(status["roster"]["member"], true, "{status}");
    assert_eq!(node_b.get("/v1/status").await.unwrap()["roster"]["size"], 3);

    let data_a = dir.path().join("data-A");
    let files_before = files(&data_a);
    // A stranger dials A: the connection is refused right after the handshake, so none of
    // its messages (invitations, garbage) is even read; the refusals are counted.
    let stranger_key = Keypair::generate_ed25519();
    let stranger = stranger_key.public().to_peer_id();
    let outsider = library_peer(stranger_key, &node_a.tcp_addr, &[], 1024 * 1024).await;
    let invites = vec![
        encode(Body::DkgInvite {
            scheme: Default::default(),
            key_id: "0".repeat(32),
            threshold: 2,
            participants: vec![a.to_string(), stranger.to_string()],
            policy: open_policy(),
        }),
        encode(Body::AggTaskInvite {
            params: b"{}".to_vec(),
        }),
        encode(Body::TransferInvite {
            bytes: 1 << 20,
            chunks: 16,
        }),
        vec![0xff; 1000],
    ];
    for bytes in invites {
        match outsider.send_mpc_raw(a, bytes).await {
            Err(MpcSendError::Unreachable { .. }) => {}
            other => panic!("a stranger's message got through the door: {other:?}"),
        }
    }
    wait_for(
        "A to count the stranger's refused connections",
        Duration::from_secs(20),
        || async {
            let page = node_a.metrics_page().await;
            let n = connections_refused(&page, "inbound");
            if n >= 1 {
                Ok(())
            } else {
                Err(format!("{n} refused"))
            }
        },
    )
    .await;
    let page = node_a.metrics_page().await;
    assert_eq!(
        refused(&page, "not_member"),
        0,
        "no message of the stranger was read"
    );
    assert_eq!(refused(&page, "malformed"), 0);
    assert!(
        !node_a
            .connected_peer_ids()
            .await
            .unwrap()
            .contains(&stranger.to_string())
    );

    // Nothing was stored, and the node keeps serving.
    assert_eq!(node_a.get("/v1/keys").await.unwrap()["keys"], json!([]));
    assert_eq!(files(&data_a), files_before, "no file appears on A");

    // The API refuses a stranger as a participant.
    let (code, body) = post(
        &node_a,
        "/v1/keys",
        json!({"threshold": 2, "participants": [a.to_string(), stranger.to_string()], "policy": {"open": true}}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("not in the cluster roster") && msg.contains(&stranger.to_string()),
        "{body}"
    );

    // A member's invitation that lists a stranger is refused by the participant itself.
    let rogue_at_a = library_peer(member_key.clone(), &node_a.tcp_addr, &[], 1024 * 1024).await;
    let rogue = library_peer(member_key, &node_b.tcp_addr, &[], 1024 * 1024).await;
    node_a
        .wait_connected_to(&member.to_string(), Duration::from_secs(20))
        .await;
    let reason = send_refused(
        &rogue,
        b,
        encode(Body::DkgInvite {
            scheme: Default::default(),
            key_id: "1".repeat(32),
            threshold: 2,
            participants: vec![b.to_string(), member.to_string(), stranger.to_string()],
            policy: open_policy(),
        }),
    )
    .await;
    assert!(
        reason.contains("not in the cluster roster") && reason.contains(&stranger.to_string()),
        "{reason}"
    );
    assert_eq!(node_b.get("/v1/keys").await.unwrap()["keys"], json!([]));

    // Without `participants`, a key is made among the roster's members: here A and B and
    // the library member, which does not run MPC sessions, so the DKG fails naming it
    // instead of silently leaving it out.
    let (code, body) = post(
        &node_b,
        "/v1/keys",
        json!({"threshold": 2, "policy": {"open": true}}),
    )
    .await;
    assert!(code == 400 || code == 502, "{code} {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&member.to_string()),
        "{body}"
    );

    // Drop the library member from the file: A re-reads it, and the default DKG among the
    // two remaining members succeeds.
    std::fs::write(&members, format!("{a}\n{b}\n")).unwrap();
    wait_for(
        "A to re-read its members file",
        Duration::from_secs(20),
        || async {
            let s = node_a.get("/v1/status").await?;
            if s["roster"]["size"] == 2 {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    )
    .await;
    // The library member left A's roster: A disconnects it and lets it in no more.
    wait_for(
        "A to disconnect the member that left its roster",
        Duration::from_secs(20),
        || async {
            let peers = node_a.connected_peer_ids().await?;
            let evicted = connections_refused(&node_a.metrics_page().await, "evicted");
            if !peers.contains(&member.to_string()) && evicted >= 1 {
                Ok(())
            } else {
                Err(format!("evicted {evicted}, peers {peers:?}"))
            }
        },
    )
    .await;
    drop(rogue_at_a);
    let (code, body) = post(
        &node_a,
        "/v1/keys",
        json!({"threshold": 2, "participants": [a.to_string(), b.to_string()], "policy": {"open": true}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = post(
        &node_a,
        "/v1/keys",
        json!({"threshold": 2, "policy": {"open": true}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        body["participants"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
    drop(rogue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_roster_the_node_says_so() {
    let dir = tempdir();
    let node = NodeProcess::start("N", dir.path(), &[]).await;
    let status = node.get("/v1/status").await.unwrap();
    assert!(status["roster"].is_null(), "{status}");
    wait_for("the no-roster warning", Duration::from_secs(10), || async {
        node.stderr_lines()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("no cluster roster"))
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
}
