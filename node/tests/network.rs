//! Several real node processes on loopback: bootnodes, Kademlia discovery, gossip over the
//! API and stdin, reconnection after a restart, WebSocket, QUIC, identity persistence.

mod common;

use std::time::Duration;

use common::{
    NodeProcess, args, identity, post, start_pair, tempdir, verify_everywhere, wait_for, write_file,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_discovery_gossip_and_bootnode_reconnect() {
    let dir = tempdir();
    let key_a = dir.path().join("keys/a.key");
    let key_a_str = key_a.display().to_string();

    let a = NodeProcess::start(
        "A",
        dir.path(),
        &args(&["-t", "chat", "--identity-key-path", &key_a_str]),
    )
    .await;
    assert!(key_a.exists(), "A created its key file");
    let a_peer = a.peer_id.clone();
    let a_addr = a.tcp_addr.clone();

    let b = NodeProcess::start(
        "B",
        dir.path(),
        &args(&["-t", "chat", "--bootnode", &a_addr]),
    )
    .await;
    let mut c = NodeProcess::start(
        "C",
        dir.path(),
        &args(&["-t", "chat", "--bootnode", &a_addr]),
    )
    .await;

    b.wait_connected_to(&a_peer, Duration::from_secs(20)).await;
    c.wait_connected_to(&a_peer, Duration::from_secs(20)).await;
    for node in [&b, &c] {
        let log = node.stderr_lines().join("\n");
        assert!(
            !log.contains("bootnode unreachable"),
            "a reachable bootnode is not reported lost: {log}"
        );
    }
    // B and C were only told of A: they must find each other through Kademlia.
    b.wait_connected_to(&c.peer_id, Duration::from_secs(60))
        .await;
    c.wait_connected_to(&b.peer_id, Duration::from_secs(20))
        .await;

    // Published on C over the API: arrives at A and B, with C as author.
    let id = c
        .publish_when_ready("chat", "hello from C over the API")
        .await;
    for node in [&a, &b] {
        let m = node.wait_message("chat", "hello from C over the API").await;
        assert_eq!(m["source"], c.peer_id.as_str());
        assert_eq!(m["message_id"], id.as_str());
    }
    // Received messages are printed as chat lines.
    let expected_line = format!("[chat] {}: hello from C over the API", c.peer_id);
    wait_for("A to print the chat line", Duration::from_secs(10), || {
        let out = a.stdout_lines();
        let line = expected_line.clone();
        async move {
            if out.contains(&line) {
                Ok(())
            } else {
                Err(format!("{out:?}"))
            }
        }
    })
    .await;

    // Typed on C's stdin: the default topic, and `topic> text` for another one.
    c.type_line("typed on C's stdin");
    for node in [&a, &b] {
        node.wait_message("chat", "typed on C's stdin").await;
    }

    // Status reports the topics, listen addresses and peers.
    let status = b.get("/v1/status").await.unwrap();
    assert_eq!(status["peer_id"], b.peer_id.as_str());
    assert_eq!(status["topics"], serde_json::json!(["chat"]));
    assert!(status["connected_peers"].as_u64().unwrap() >= 2, "{status}");
    assert!(
        status["listen_addrs"][0]
            .as_str()
            .unwrap()
            .ends_with(&b.peer_id)
    );

    // Kill A; restart it with the same key on the same port: B reconnects on its own.
    let port = a_addr.split('/').nth(4).unwrap().to_string();
    drop(a);
    wait_for("B to notice A is gone", Duration::from_secs(20), || async {
        let peers = b.connected_peer_ids().await?;
        if peers.contains(&a_peer) {
            Err(format!("{peers:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    let a2 = NodeProcess::start(
        "A2",
        dir.path(),
        &args(&[
            "-t",
            "chat",
            "--identity-key-path",
            &key_a_str,
            "--network-port",
            &port,
        ]),
    )
    .await;
    assert_eq!(a2.peer_id, a_peer, "same key file, same peer id");
    b.wait_connected_to(&a_peer, Duration::from_secs(60)).await;

    // The restarted A still gets gossip. Its mesh re-forms over a few heartbeats, so C keeps
    // publishing fresh messages until one arrives.
    let mut round = 0;
    wait_for(
        "the restarted A to receive gossip from C",
        Duration::from_secs(30),
        || {
            round += 1;
            let text = format!("after A's restart #{round}");
            let (a2, c) = (&a2, &c);
            async move {
                let _ = c.publish("chat", &text).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
                let got = a2.get("/v1/topics/chat/messages").await?;
                let seen = got["messages"].as_array().map_or(0, |m| {
                    m.iter()
                        .filter(|m| {
                            m["data"]
                                .as_str()
                                .is_some_and(|d| d.starts_with("after A's restart"))
                        })
                        .count()
                });
                if seen > 0 {
                    Ok(())
                } else {
                    Err(format!("nothing after {round} messages"))
                }
            }
        },
    )
    .await;
    c.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reachable_only_over_websocket_joins_the_mesh() {
    let dir = tempdir();
    let a = NodeProcess::start("A", dir.path(), &args(&["-t", "chat", "--ws-port", "0"])).await;
    let ws = a.ws_addr.clone().expect("A listens on WebSocket");
    assert!(ws.contains("/ws/p2p/"), "{ws}");
    // W is given only A's WebSocket address.
    let w = NodeProcess::start("W", dir.path(), &args(&["-t", "chat", "--bootnode", &ws])).await;
    w.wait_connected_to(&a.peer_id, Duration::from_secs(20))
        .await;
    let peers = w.get("/v1/peers").await.unwrap();
    let via = peers["peers"][0]["connected_addrs"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        via.contains("/ws"),
        "W's connection to A runs over WebSocket: {via}"
    );

    w.publish_when_ready("chat", "from W over ws").await;
    a.wait_message("chat", "from W over ws").await;
    a.publish_when_ready("chat", "to W over ws").await;
    w.wait_message("chat", "to W over ws").await;
}

/// QUIC is a transport like TCP: Q knows only A's QUIC address, connects over it, and the
/// two gossip and make and use a key over it. A node started without `--quic-port` listens
/// on no UDP port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_connect_gossip_and_sign_over_quic() {
    let dir = tempdir();
    let a = NodeProcess::start("A", dir.path(), &args(&["-t", "chat", "--quic-port", "0"])).await;
    let quic = a.quic_addr.clone().expect("A listens on QUIC");
    assert!(
        quic.contains("/udp/") && quic.contains("/quic-v1/p2p/"),
        "{quic}"
    );
    let q = NodeProcess::start(
        "Q",
        dir.path(),
        &args(&["-t", "chat", "--quic-port", "0", "--bootnode", &quic]),
    )
    .await;
    q.wait_connected_to(&a.peer_id, Duration::from_secs(20))
        .await;
    let peers = q.get("/v1/peers").await.unwrap();
    let via: Vec<String> = peers["peers"][0]["connected_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        via.iter().any(|a| a.contains("/quic-v1")),
        "Q reached A over QUIC: {via:?}"
    );
    q.publish_when_ready("chat", "from Q over quic").await;
    a.wait_message("chat", "from Q over quic").await;
    a.publish_when_ready("chat", "to Q over quic").await;
    q.wait_message("chat", "to Q over quic").await;

    let (status, key) = wait_for("a DKG over QUIC", Duration::from_secs(30), || async {
        match post(
            &q,
            "/v1/keys",
            json!({"threshold": 2, "participants": [q.peer_id, a.peer_id], "policy": {"open": true}}),
        )
        .await
        {
            (201, key) => Ok((201, key)),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert_eq!(status, 201);
    let key_id = key["key_id"].as_str().unwrap();
    let (status, body) = post(
        &a,
        &format!("/v1/keys/{key_id}/sign"),
        json!({"message": hex::encode(b"over quic")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    verify_everywhere(&key, b"over quic", body["signature"].as_str().unwrap());

    // Without a QUIC listener a node does not dial over QUIC either: A's QUIC address is no
    // way in for it.
    let mut off = NodeProcess::start("off", dir.path(), &args(&["--bootnode", &quic])).await;
    wait_for(
        "off to give up on A's QUIC address",
        Duration::from_secs(20),
        || async {
            let unreachable = off
                .stderr_lines()
                .iter()
                .any(|l| l.contains("bootnode unreachable"));
            if unreachable {
                Ok(())
            } else {
                Err("no dial failure yet".to_string())
            }
        },
    )
    .await;
    assert!(off.connected_peer_ids().await.unwrap().is_empty());
    off.terminate(Duration::from_secs(10));
    let listening: Vec<String> = off
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains(" listening address="))
        .collect();
    assert!(!listening.is_empty());
    assert!(
        listening.iter().all(|l| !l.contains("/udp/")),
        "{listening:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_bootnode_peer() {
    let dir = tempdir();
    let a = NodeProcess::start("A", dir.path(), &args(&["-t", "chat"])).await;
    let ready = |n: &NodeProcess| {
        let url = format!("{}/readyz", n.metrics);
        let http = n.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(ready(&a).await, 200, "no bootnodes: ready once listening");
    let health = a
        .http
        .get(format!("{}/healthz", a.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // A bootnode that does not exist: listening, but not ready.
    let ghost = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWLzVeoBe8Xb4bnRVFzsLuNQhPh9WkZVXqEXHZ1QVDR6VP";
    let lonely = NodeProcess::start(
        "lonely",
        dir.path(),
        &args(&["-t", "chat", "--bootnode", ghost]),
    )
    .await;
    assert_eq!(ready(&lonely).await, 503);

    let b = NodeProcess::start(
        "B",
        dir.path(),
        &args(&["-t", "chat", "--bootnode", &a.tcp_addr]),
    )
    .await;
    wait_for("B to become ready", Duration::from_secs(20), || async {
        match ready(&b).await {
            200 => Ok(()),
            s => Err(s.to_string()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_node_cleanly() {
    let dir = tempdir();
    let (mut a, b) = start_pair(dir.path(), &[]).await;
    let status = a
        .terminate(Duration::from_secs(10))
        .expect("node exits within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    let log = a.stderr_lines().join("\n");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("node stopped"), "{log}");
    // B saw the connection close.
    wait_for("B to lose A", Duration::from_secs(10), || async {
        let peers = b.connected_peer_ids().await?;
        if peers.contains(&a.peer_id) {
            Err(format!("{peers:?}"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// A JSON topic with a schema on B and C, none on A. A (A — B — C, C admits only B) publishes
/// valid and invalid readings: the valid ones reach both; the invalid ones reach neither, are
/// counted by reason on B (the first receiver) and are not forwarded by it (C sees none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_rules_keep_invalid_messages_from_every_node_that_has_them() {
    let dir = tempdir();
    write_file(
        dir.path(),
        "reading.schema.json",
        r#"{"type": "object", "required": ["sensor", "value"],
            "properties": {"sensor": {"type": "string"}, "value": {"type": "number"}}}"#,
    );
    let ruled = write_file(
        dir.path(),
        "ruled.yml",
        "topics: [readings, frames]\ntopic_rules:\n  readings:\n    max_bytes: 120\n    content_type: json\n    schema: reading.schema.json\n  frames:\n    content_type: cbor\n",
    );
    let ruled = ruled.display().to_string();
    let (key_b, peer_b) = identity(dir.path(), "b");
    let (key_c, peer_c) = identity(dir.path(), "c");

    let b = NodeProcess::start(
        "B",
        dir.path(),
        &args(&["-c", &ruled, "--identity-key-path", &key_b]),
    )
    .await;
    let (b_id, c_id) = (peer_b.to_string(), peer_c.to_string());
    let c = NodeProcess::start(
        "C",
        dir.path(),
        &args(&[
            "-c",
            &ruled,
            "--identity-key-path",
            &key_c,
            "--bootnode",
            &b.tcp_addr,
            "--cluster-member",
            &b_id,
            "--cluster-member",
            &c_id,
        ]),
    )
    .await;
    let a = NodeProcess::start(
        "A",
        dir.path(),
        &args(&["-t", "readings", "--bootnode", &b.tcp_addr]),
    )
    .await;
    a.wait_connected_to(&b_id, Duration::from_secs(20)).await;
    c.wait_connected_to(&b_id, Duration::from_secs(20)).await;

    // The rule is shown by B's status and topic list.
    let topics = b.get("/v1/topics").await.unwrap();
    let rule = &topics["topics"][0];
    assert_eq!(rule["topic"], "readings", "{topics}");
    assert_eq!(rule["content_type"], "json", "{topics}");
    assert_eq!(rule["max_bytes"], 120, "{topics}");
    assert_eq!(rule["schema"]["required"][1], "value", "{topics}");
    let status = b.get("/v1/status").await.unwrap();
    assert_eq!(status["topic_rules"][0]["topic"], "readings", "{status}");
    let plain = a.get("/v1/topics").await.unwrap();
    assert_eq!(plain["topics"][0]["content_type"], "text", "{plain}");
    assert!(plain["topics"][0]["max_bytes"].is_null(), "{plain}");

    // Valid: delivered to B. C has a roster of B and itself, so it refuses a message whose
    // author (A) is not a member, even through B, which forwards it (B has no roster).
    let valid = r#"{"sensor":"t1","value":21.5}"#;
    a.publish_when_ready("readings", valid).await;
    b.wait_message("readings", valid).await;
    let c_rejected = |reason: &'static str| {
        let c = &c;
        async move {
            c.metric(
                "p2p_mpc_gossip_messages_rejected_total",
                &[("topic", "readings"), ("reason", reason)],
            )
            .await
        }
    };
    wait_for(
        "C to refuse A's message",
        Duration::from_secs(20),
        || async {
            match c_rejected("author_not_member").await {
                1.0 => Ok(()),
                n => Err(format!("{n}")),
            }
        },
    )
    .await;

    // Invalid, from A which has no rule: wrong type, missing field, not JSON, too long.
    let long = format!(r#"{{"sensor":"{}","value":1}}"#, "x".repeat(120));
    let invalid = [
        r#"{"sensor":"t1","value":"hot"}"#.to_string(),
        r#"{"sensor":"t1"}"#.to_string(),
        "21.5 degrees".to_string(),
        long,
    ];
    for text in &invalid {
        let (status, body) = a.publish("readings", text).await;
        assert_eq!(status, 201, "A has no rule and publishes: {body}");
    }
    // A valid message after them: once B forwarded it, the others had their chance.
    let after = r#"{"sensor":"t1","value":22}"#;
    a.publish("readings", after).await;
    b.wait_message("readings", after).await;
    wait_for(
        "C to refuse A's second valid message",
        Duration::from_secs(20),
        || async {
            match c_rejected("author_not_member").await {
                2.0 => Ok(()),
                n => Err(format!("{n}")),
            }
        },
    )
    .await;

    let got = b.get("/v1/topics/readings/messages").await.unwrap();
    let texts: Vec<&str> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec![valid, after], "B: {got}");
    let got = c.get("/v1/topics/readings/messages").await.unwrap();
    assert_eq!(got["messages"], serde_json::json!([]), "C: {got}");
    let b_page = b.metrics_page().await;
    let rejected = |reason: &str| {
        p2p_mpc_testenv::metric_sum(
            &b_page,
            "p2p_mpc_gossip_messages_rejected_total",
            &[("topic", "readings"), ("reason", reason)],
        )
    };
    assert_eq!(rejected("schema"), 2.0);
    assert_eq!(rejected("not_json"), 1.0);
    assert_eq!(rejected("over_max_bytes"), 1.0);
    let c_page = c.metrics_page().await;
    assert_eq!(
        p2p_mpc_testenv::metric_sum(
            &c_page,
            "p2p_mpc_gossip_messages_rejected_total",
            &[("topic", "readings")]
        ),
        2.0,
        "B forwarded a message it rejected (C would have refused it too)"
    );
    assert!(
        b.stderr_lines()
            .iter()
            .any(|l| l.contains("gossip message rejected")
                && l.contains("reason=\"schema\"")
                && l.contains("/value")),
        "B logs what was wrong"
    );

    // B refuses to publish what its own rule refuses, and says why.
    let (status, body) = b.publish("readings", r#"{"sensor":1,"value":2}"#).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "breaks_topic_rule", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("/sensor"),
        "{body}"
    );

    // A CBOR topic carries bytes: published and shown in base64, malformed CBOR refused.
    let frame = "oWF2AQ=="; // CBOR {"v": 1}
    let (status, body) = common::post(
        &b,
        "/v1/topics/frames/messages",
        serde_json::json!({"data_base64": frame}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_for(
        "C to receive the CBOR frame",
        Duration::from_secs(20),
        || async {
            let got = c.get("/v1/topics/frames/messages").await?;
            match got["messages"][0]["data_base64"].as_str() {
                Some(f) if f == frame && got["messages"][0]["data"].is_null() => Ok(()),
                _ => Err(got.to_string()),
            }
        },
    )
    .await;
    // Base64 of more than a message is refused before it is decoded.
    let huge = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(vec![0u8; (1 << 20) + 16])
    };
    let (status, body) = common::post(
        &b,
        "/v1/topics/frames/messages",
        serde_json::json!({ "data_base64": huge }),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("message_too_large")),
        "{body}"
    );
    let (status, body) = common::post(
        &b,
        "/v1/topics/frames/messages",
        serde_json::json!({"data_base64": "oWF2"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("breaks_topic_rule")),
        "{body}"
    );
    let (status, body) = common::post(
        &b,
        "/v1/topics/frames/messages",
        serde_json::json!({"data": "x", "data_base64": "eA=="}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_body")),
        "{body}"
    );
}
