//! Hostile input: garbage on the TCP port, a half-open connection, gossip over the size
//! limit and invalid UTF-8 on a chat topic. The node keeps serving and counts what it refused.
//!
//! The hostile peer runs in this test process on the node library's own network service,
//! with a larger message limit and no outbound validation, so it can send what an honest
//! node never would.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{NodeProcess, args, library_peer, tempdir, wait_for};
use p2p_mpc_node::network::{NetworkClient, NetworkError, PublishError};

async fn publish_retrying(client: &NetworkClient, data: Vec<u8>) {
    wait_for(
        "the hostile peer to publish",
        Duration::from_secs(20),
        || {
            let data = data.clone();
            async move {
                match client.publish("chat", data).await {
                    Ok(_) => Ok(()),
                    Err(NetworkError::Publish(PublishError::NoPeers(_))) => {
                        Err("no peers yet".into())
                    }
                    Err(e) => panic!("publish failed: {e}"),
                }
            }
        },
    )
    .await;
}

fn rejected(page: &str, reason: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.starts_with("p2p_mpc_gossip_messages_rejected_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_the_node_keeps_serving() {
    let dir = tempdir();
    // The victim accepts gossip payloads up to 64 KiB.
    let victim = NodeProcess::start(
        "V",
        dir.path(),
        &args(&["-t", "chat", "--max-message-size", "65536"]),
    )
    .await;
    let honest = NodeProcess::start(
        "H",
        dir.path(),
        &args(&["-t", "chat", "--bootnode", &victim.tcp_addr]),
    )
    .await;
    honest
        .wait_connected_to(&victim.peer_id, Duration::from_secs(20))
        .await;

    let port: u16 = victim.tcp_addr.split('/').nth(4).unwrap().parse().unwrap();
    // A half-open connection: connected, never says anything; held for the whole test.
    let _half_open = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Garbage bytes instead of multistream-select: the node drops the connection.
    {
        let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
        garbage
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = garbage.write_all(&junk);
        let mut buf = [0u8; 1024];
        let mut closed = false;
        for _ in 0..64 {
            match garbage.read(&mut buf) {
                Ok(0) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(_) => continue,
            }
        }
        assert!(closed, "the node closes a connection that speaks garbage");
    }

    let hostile = library_peer(
        libp2p::identity::Keypair::generate_ed25519(),
        &victim.tcp_addr,
        &["chat"],
        8 * 1024 * 1024,
    )
    .await;
    // Invalid UTF-8 on a chat topic.
    publish_retrying(&hostile, vec![0xff, 0xfe, 0xfd, b'x']).await;
    // Over the victim's 64 KiB payload limit, within its transport frame limit.
    publish_retrying(&hostile, vec![b'a'; 65536 + 100]).await;
    // Far over any limit: the victim's transport refuses the frame outright.
    publish_retrying(&hostile, vec![b'b'; 4 * 1024 * 1024]).await;

    wait_for(
        "the victim to count both rejections",
        Duration::from_secs(20),
        || async {
            let page = victim.metrics_page().await;
            let (utf8, large) = (
                rejected(&page, "invalid_utf8"),
                rejected(&page, "too_large"),
            );
            if utf8 >= 1.0 && large >= 1.0 {
                Ok(())
            } else {
                Err(format!("invalid_utf8={utf8} too_large={large}"))
            }
        },
    )
    .await;

    // None of it reached the API buffer.
    let msgs = victim.get("/v1/topics/chat/messages").await.unwrap();
    assert!(
        msgs["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| !m["data"].as_str().unwrap().starts_with('a')),
        "rejected messages must not be delivered"
    );

    // Still serving: the API answers and gossip flows both ways with the honest peer.
    let status = victim.get("/v1/status").await.expect("API still answers");
    assert_eq!(status["peer_id"], victim.peer_id.as_str());
    honest.publish_when_ready("chat", "still alive?").await;
    victim.wait_message("chat", "still alive?").await;
    victim.publish_when_ready("chat", "yes").await;
    honest.wait_message("chat", "yes").await;
    let log = victim.stderr_lines().join("\n");
    assert!(
        log.contains("gossip message rejected"),
        "the rejection is logged"
    );
}
