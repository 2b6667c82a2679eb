//! Signing under a flood: a 2-of-3 cluster with a roster signs through the API of node 0
//! while a peer floods node 0 with session invitations, messages for sessions that do not
//! exist and garbage, as fast as 64 requests in flight allow. Once the flooder is outside
//! the roster (each attempt is a new connection, refused after its handshake: nothing it
//! sends is read), once a member (decoded, checked and refused by the session layer); each
//! p50 beside the quiet p50 of the same cluster in the same run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use p2p_mpc_node::mpc::wire::{self, Blob, Body, MpcMessage, SessionId};
use p2p_mpc_node::network::{MpcSendError, NetworkClient};
use serde_json::json;

use crate::nodes::{Node, cluster_each, node_binary, post};
use crate::results::{Figure, quantile};

/// What the flooder sends, in turn: message `i` of the flood.
fn flood_message(i: u64, victim: &str, flooder: &str) -> Vec<u8> {
    let body = match i % 4 {
        0 => Body::DkgInvite {
            scheme: Default::default(),
            key_id: format!("{i:032x}"),
            threshold: 2,
            participants: vec![victim.to_string(), flooder.to_string()],
            policy: Blob(b"{\"open\":true}".to_vec().into()),
        },
        1 => Body::SignInvite {
            key_id: format!("{i:032x}"),
            message: vec![1; 64],
            authorizations: vec![],
            policy: p2p_mpc_node::mpc::policy::PolicyStamp {
                version: 0,
                digest: [0; 32],
            },
            generation: 0,
        },
        2 => Body::DkgRound1 {
            package: vec![0; 64 * 1024],
        },
        _ => return vec![0xff; 1000],
    };
    wire::encode(&MpcMessage::new(SessionId::random(), body))
}

/// Floods `victim` from `client` until `stop`; returns how many messages were answered
/// (`refused_at_the_door`: how many attempts ended, each a connection the victim refused).
async fn flood(
    client: NetworkClient,
    victim: libp2p::PeerId,
    victim_id: String,
    flooder_id: String,
    stop: Arc<AtomicBool>,
    refused_at_the_door: bool,
) -> u64 {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    futures::stream::iter(0u64..)
        .take_while(|_| std::future::ready(!stop.load(Ordering::Relaxed)))
        .map(|i| {
            let (client, sent) = (client.clone(), counter.clone());
            let bytes = flood_message(i, &victim_id, &flooder_id);
            async move {
                // Refusals are the point; any answer counts as a message the node handled.
                let result = client.send_mpc_raw(victim, bytes).await;
                if refused_at_the_door || !matches!(result, Err(MpcSendError::Unreachable { .. })) {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .buffer_unordered(64)
        .for_each(|()| std::future::ready(()))
        .await;
    sent.load(Ordering::Relaxed)
}

/// Waits until `client` reaches `victim` (the dial may still be in progress).
async fn wait_reachable(client: &NetworkClient, victim: libp2p::PeerId) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = wire::encode(&MpcMessage::new(
            SessionId::random(),
            Body::TransferDone { bytes: 0 },
        ));
        match client.send_mpc_raw(victim, probe).await {
            Err(MpcSendError::Unreachable { message, .. }) => {
                if Instant::now() > deadline {
                    anyhow::bail!("the flooder cannot reach node 0: {message}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return Ok(()),
        }
    }
}

/// `count` sequential signatures through node 0's API; their latencies in seconds.
async fn sign_sequence(
    http: &reqwest::Client,
    node: &Node,
    key: &str,
    count: usize,
    tag: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut lat = Vec::with_capacity(count);
    for i in 0..count {
        let t0 = Instant::now();
        post(
            http,
            format!("{}/v1/keys/{key}/sign", node.api),
            json!({"message": hex::encode(format!("{tag} {i}"))}),
        )
        .await
        .with_context(|| format!("signature {i} ({tag})"))?;
        lat.push(t0.elapsed().as_secs_f64());
    }
    Ok(lat)
}

fn identity(dir: &Path, name: &str) -> anyhow::Result<(String, libp2p::identity::Keypair, String)> {
    let key = p2p_mpc_node::identity::generate();
    let path = dir.join(format!("{name}.key"));
    p2p_mpc_node::identity::write_new_keypair(&path, &key)
        .with_context(|| format!("writing {}", path.display()))?;
    let peer = key.public().to_peer_id().to_string();
    Ok((path.display().to_string(), key, peer))
}

/// Runs the flood benchmark.
pub async fn run(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let bin = node_binary()?;
    let dir = std::env::temp_dir().join(format!("p2p-mpc-bench-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let nodes_ids: Vec<_> = (0..3)
        .map(|i| identity(&dir, &format!("n{i}")))
        .collect::<anyhow::Result<_>>()?;
    let (_, member_key, member_id) = identity(&dir, "member-flooder")?;
    let outsider_key = libp2p::identity::Keypair::generate_ed25519();
    let outsider_id = outsider_key.public().to_peer_id().to_string();
    let mut members: Vec<String> = nodes_ids.iter().map(|(_, _, p)| p.clone()).collect();
    members.push(member_id.clone());
    let members = members.join(",");
    let nodes = cluster_each(
        &bin,
        &dir,
        3,
        |i| {
            vec![
                "--identity-key-path".into(),
                nodes_ids[i].0.clone(),
                "--cluster-member".into(),
                members.clone(),
            ]
        },
        &[],
    )
    .await?;
    let holders: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let key = post(
        &http,
        format!("{}/v1/keys", nodes[0].api),
        json!({"threshold": 2, "participants": holders, "policy": {"open": true}}),
    )
    .await?["key_id"]
        .as_str()
        .context("key_id in the answer")?
        .to_string();
    let count = if quick { 50 } else { 500 };
    sign_sequence(&http, &nodes[0], &key, 10, "warm-up").await?;
    let mut quiet = sign_sequence(&http, &nodes[0], &key, count, "quiet").await?;
    let quiet_p50 = quantile(&mut quiet, 0.5);
    let victim: libp2p::PeerId = nodes[0].peer_id.parse()?;
    let rss_quiet = nodes[0].rss_bytes().unwrap_or(0);
    let mut figures = Vec::new();

    for (who, flood_key, flood_id, outsider) in [
        ("an outsider", outsider_key, outsider_id, true),
        ("a member", member_key, member_id, false),
    ] {
        let client = p2p_mpc_node::network::dial_peer(flood_key, &nodes[0].tcp_addr, &[], 1 << 20)
            .await
            .map_err(|e| anyhow::anyhow!("the flooding peer does not start: {e}"))?;
        if !outsider {
            wait_reachable(&client, victim).await?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let flooding = tokio::spawn(flood(
            client.clone(),
            victim,
            nodes[0].peer_id.clone(),
            flood_id,
            stop.clone(),
            outsider,
        ));
        // Let the flood reach its pace before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let signed = sign_sequence(&http, &nodes[0], &key, count, who).await;
        stop.store(true, Ordering::Relaxed);
        let handled = flooding.await.context("the flood task")?;
        let secs = started.elapsed().as_secs_f64();
        let _ = client.shutdown().await;
        let mut lat = signed?;
        figures.push(Figure::against(
            format!("FROST sign 2-of-3 while {who} floods the coordinator: p50"),
            quantile(&mut lat, 0.5) * 1e3,
            "ms",
            "quiet, same cluster",
            quiet_p50 * 1e3,
        ));
        figures.push(Figure::plain(
            if outsider {
                format!("flood attempts by {who}, each refused at the coordinator's door")
            } else {
                format!("flood messages from {who} handled by the coordinator")
            },
            handled as f64 / secs,
            "msg/s",
        ));
    }
    let rss_after = nodes[0].rss_bytes().unwrap_or(0);
    figures.push(Figure::plain(
        "flooded coordinator RSS growth over both floods",
        rss_after.saturating_sub(rss_quiet) as f64 / 1048576.0,
        "MiB",
    ));
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}
