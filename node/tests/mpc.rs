//! MPC over real node processes on loopback: FROST DKG and threshold signing, dead and
//! restarted participants, misbehaving participants, outsiders, and many sessions at once.
//! Signatures are checked with ed25519-dalek and with Python's `cryptography`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{NodeProcess, args, post, tempdir, verify_everywhere, wait_for};
use serde_json::{Value, json};

/// Runs each named signing test, an async fn taking the scheme's name, once per signature
/// scheme: the same test, not a copy, for `ed25519` and `secp256k1-tr` keys.
macro_rules! for_each_scheme {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ed25519() {
                super::$name("ed25519").await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn secp256k1_tr() {
                super::$name("secp256k1-tr").await
            }
        }
    )*};
}

for_each_scheme!(
    dkg_3_of_5_sign_kill_restart_and_many_at_once,
    misbehaving_participants_are_named_and_outsiders_ignored,
    kill_9_during_dkg_leaves_no_torn_key_and_a_new_dkg_succeeds,
    every_holder_checks_the_signing_policy,
    t_minus_one_compromised_holders_cannot_sign_alone,
    a_front_running_holder_gets_nothing_and_the_chosen_coordinator_signs,
    a_revocation_holds_while_a_holder_is_down_and_stale_holders_catch_up,
    a_key_grows_to_new_holders_and_moves_away_from_dropped_ones,
    kill_9_during_a_reshare_leaves_one_generation_and_a_new_one_succeeds,
);

/// Round deadline of the test nodes, so that dead participants are noticed quickly.
const ROUND_TIMEOUT_MS: &str = "3000";

/// Starts nodes `names`, node i with every earlier node as a bootnode (a full mesh), each with
/// its own identity key and data dir under `dir`; `env_of` gives per-node environment.
async fn start_cluster(
    dir: &Path,
    names: &[&str],
    env_of: impl Fn(&str) -> Vec<(&'static str, &'static str)>,
) -> Vec<NodeProcess> {
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for name in names {
        let node = start_node(dir, name, &nodes, &env_of(name)).await;
        nodes.push(node);
    }
    for node in &nodes {
        for other in &nodes {
            if other.peer_id != node.peer_id {
                node.wait_connected_to(&other.peer_id, Duration::from_secs(30))
                    .await;
            }
        }
    }
    nodes
}

async fn start_node(
    dir: &Path,
    name: &str,
    bootnodes: &[NodeProcess],
    env: &[(&str, &str)],
) -> NodeProcess {
    let key = dir.join(format!("{name}.key"));
    let mut extra = args(&["--identity-key-path", key.to_str().unwrap()]);
    for b in bootnodes {
        extra.push("--bootnode".into());
        extra.push(b.tcp_addr.clone());
    }
    let mut env = env.to_vec();
    if !env
        .iter()
        .any(|(k, _)| *k == "P2P_MPC_TEST_ROUND_TIMEOUT_MS")
    {
        env.push(("P2P_MPC_TEST_ROUND_TIMEOUT_MS", ROUND_TIMEOUT_MS));
    }
    NodeProcess::start_with_env(name, dir, &extra, &env).await
}

/// Runs a DKG of an `open` key on `coordinator` among `participants`, retrying while peers
/// are still being identified as MPC peers (a 400 that says "not connected").
async fn create_key(
    scheme: &str,
    coordinator: &NodeProcess,
    threshold: u16,
    participants: &[&NodeProcess],
) -> Value {
    create_key_with(
        scheme,
        coordinator,
        threshold,
        participants,
        json!({"open": true}),
    )
    .await
}

/// Like [`create_key`], with a signing policy.
async fn create_key_with(
    scheme: &str,
    coordinator: &NodeProcess,
    threshold: u16,
    participants: &[&NodeProcess],
    policy: Value,
) -> Value {
    let ids: Vec<&str> = participants.iter().map(|n| n.peer_id.as_str()).collect();
    wait_for("the DKG to succeed", Duration::from_secs(60), || async {
        let (status, body) = post(
            coordinator,
            "/v1/keys",
            json!({"scheme": scheme, "threshold": threshold, "participants": ids, "policy": policy}),
        )
        .await;
        match status {
            201 => {
                assert_eq!(body["scheme"], scheme, "{body}");
                Ok(body)
            }
            400 if body["error"]
                .as_str()
                .unwrap_or("")
                .contains("not connected") =>
            {
                Err(body.to_string())
            }
            _ => panic!("DKG failed: {status} {body}"),
        }
    })
    .await
}

/// Waits until `node` has identified `peer` (so it knows whether `peer` speaks MPC).
async fn wait_identified(node: &NodeProcess, peer: &str) {
    wait_for(
        &format!("{} to identify {peer}", node.name),
        Duration::from_secs(30),
        || async {
            let peers = node.get("/v1/peers").await?;
            let found = peers["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["peer_id"] == peer && !p["agent_version"].is_null());
            if found {
                Ok(())
            } else {
                Err(peers.to_string())
            }
        },
    )
    .await
}

async fn sign(node: &NodeProcess, key_id: &str, message: &[u8]) -> (u16, Value) {
    post(
        node,
        &format!("/v1/keys/{key_id}/sign"),
        json!({ "message": hex::encode(message) }),
    )
    .await
}

fn signers(body: &Value) -> Vec<String> {
    body["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// `GET /v1/keys/{id}?network=…`: a `secp256k1-tr` key's P2TR address on each network is
/// bech32m, segwit v1, with `public_key` as its witness program; an Ed25519 key has none, and
/// a network or parameter this node does not know is a 400 that says what it knows.
async fn check_address(node: &NodeProcess, key: &Value) {
    let key_id = key["key_id"].as_str().unwrap();
    let path = |query: &str| format!("/v1/keys/{key_id}?{query}");
    for (network, hrp) in [
        ("bitcoin", "bc"),
        ("testnet", "tb"),
        ("signet", "tb"),
        ("regtest", "bcrt"),
    ] {
        let answer = node.get(&path(&format!("network={network}"))).await;
        if key["scheme"] == "ed25519" {
            let e = answer.unwrap_err();
            assert!(
                e.starts_with("400") && e.contains("only secp256k1-tr keys have a Bitcoin address"),
                "{e}"
            );
            continue;
        }
        let info = answer.unwrap();
        assert_eq!(
            (&info["network"], &info["key_id"]),
            (&json!(network), &key["key_id"])
        );
        let address = info["address"].as_str().unwrap();
        let (got_hrp, version, program) = bech32::segwit::decode(address).unwrap();
        assert_eq!(got_hrp.as_str(), hrp, "{address}");
        assert_eq!(version, bech32::segwit::VERSION_1, "{address}");
        assert_eq!(
            hex::encode(program),
            key["public_key"].as_str().unwrap(),
            "{address}"
        );
    }
    for (query, says) in [
        (
            "network=mainnet",
            "unknown Bitcoin network `mainnet` (known: bitcoin, testnet, signet, regtest)",
        ),
        ("net=bitcoin", "the only parameter is `network`"),
    ] {
        let e = node.get(&path(query)).await.unwrap_err();
        assert!(e.starts_with("400") && e.contains(says), "{query}: {e}");
    }
    assert!(node.get(&path("")).await.unwrap().get("address").is_none());
}

async fn metric_sum(node: &NodeProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    node.metric(name, labels).await
}

async fn dkg_3_of_5_sign_kill_restart_and_many_at_once(scheme: &str) {
    let dir = tempdir();
    // The default round deadline: 50 sessions at once on a loaded 2-core machine need it.
    let mut nodes = start_cluster(dir.path(), &["n0", "n1", "n2", "n3", "n4"], |_| {
        vec![("P2P_MPC_TEST_ROUND_TIMEOUT_MS", "10000")]
    })
    .await;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let key = create_key(scheme, &nodes[0], 3, &all).await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let public_key = key["public_key"].as_str().unwrap().to_string();
    assert_eq!(key["threshold"], 3);
    assert_eq!(key["participants"].as_array().unwrap().len(), 5);
    check_address(&nodes[1], &key).await;

    // Every participant holds the key; metadata only, and the share file is private.
    for node in &nodes {
        let k = wait_for("the key on every node", Duration::from_secs(10), || async {
            node.get(&format!("/v1/keys/{key_id}")).await
        })
        .await;
        assert_eq!(k["public_key"], public_key.as_str());
        assert_eq!(k["status"], "active");
        let text = k.to_string();
        assert!(
            !text.contains("key_package") && !text.contains("signing_share"),
            "{text}"
        );
        let list = node.get("/v1/keys").await.unwrap();
        assert_eq!(list["keys"].as_array().unwrap().len(), 1);
        let file = dir
            .path()
            .join(format!("data-{}/keys/{key_id}.key.json", node.name));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    // No secret in the logs.
    let share_hex =
        std::fs::read_to_string(dir.path().join(format!("data-n0/keys/{key_id}.key.json")))
            .unwrap();
    let share: Value = serde_json::from_str(&share_hex).unwrap();
    let secret = share["key_package"].as_str().unwrap();
    for node in &nodes {
        assert!(!node.stderr_lines().join("\n").contains(&secret[40..100]));
    }

    // Sign on two different nodes.
    for (i, node) in [&nodes[1], &nodes[3]].into_iter().enumerate() {
        let message = format!("message {i} signed by {}", node.name);
        let (status, body) = sign(node, &key_id, message.as_bytes()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(signers(&body).len(), 3, "{body}");
        assert!(signers(&body).contains(&node.peer_id));
        verify_everywhere(
            &key,
            message.as_bytes(),
            body["signature"].as_str().unwrap(),
        );
    }

    // 50 signing sessions at once on one key, coordinated by all five nodes.
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let node = &nodes[i % 5];
            let key_id = key_id.clone();
            async move {
                let message = format!("concurrent message {i}");
                let (status, body) = sign(node, &key_id, message.as_bytes()).await;
                (message, status, body)
            }
        })
        .collect();
    for (message, status, body) in futures::future::join_all(tasks).await {
        assert_eq!(status, 200, "{message}: {body}");
        verify_everywhere(
            &key,
            message.as_bytes(),
            body["signature"].as_str().unwrap(),
        );
    }
    eprintln!("50 concurrent signatures in {:?}", started.elapsed());
    let completed = metric_sum(
        &nodes[0],
        "p2p_mpc_mpc_sessions_completed_total",
        &[("protocol", "frost_sign")],
    )
    .await;
    assert!(completed >= 10.0, "sessions completed on n0: {completed}");

    // A frozen participant (SIGSTOP: connected, but silent) is skipped without waiting for
    // its deadline.
    let frozen = nodes[3].peer_id.clone();
    let signal = |pid: u32, sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
    };
    signal(nodes[3].pid(), "-STOP");
    let started = Instant::now();
    let (status, body) = sign(&nodes[0], &key_id, b"one is frozen").await;
    let elapsed = started.elapsed();
    signal(nodes[3].pid(), "-CONT");
    assert_eq!(status, 200, "{body}");
    assert!(!signers(&body).contains(&frozen), "{body}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    // Kill one participant: the remaining four still sign, without it.
    let dead = nodes[4].peer_id.clone();
    nodes[4].kill();
    let (status, body) = sign(&nodes[0], &key_id, b"after one died").await;
    assert_eq!(status, 200, "{body}");
    assert!(!signers(&body).contains(&dead), "{body}");
    verify_everywhere(&key, b"after one died", body["signature"].as_str().unwrap());

    // Restart it with its data dir: it still holds its share and signs (as coordinator it
    // is always one of the signers).
    let restarted = start_node(
        dir.path(),
        "n4",
        &nodes[..4],
        &[("P2P_MPC_TEST_ROUND_TIMEOUT_MS", "10000")],
    )
    .await;
    assert_eq!(restarted.peer_id, dead);
    let k = restarted.get(&format!("/v1/keys/{key_id}")).await.unwrap();
    assert_eq!(k["public_key"], public_key.as_str());
    for n in &nodes[..4] {
        restarted
            .wait_connected_to(&n.peer_id, Duration::from_secs(30))
            .await;
    }
    let (status, body) = wait_for(
        "the restarted node to sign",
        Duration::from_secs(30),
        || async {
            match sign(&restarted, &key_id, b"signed by the restarted node").await {
                (200, body) => Ok((200, body)),
                (s, b) => Err(format!("{s} {b}")),
            }
        },
    )
    .await;
    assert_eq!(status, 200);
    assert!(signers(&body).contains(&dead), "{body}");
    verify_everywhere(
        &key,
        b"signed by the restarted node",
        body["signature"].as_str().unwrap(),
    );
    drop(restarted);

    // Kill three: signing fails within its deadline and names the missing participants.
    let missing: Vec<String> = nodes[1..4].iter().map(|n| n.peer_id.clone()).collect();
    for n in &mut nodes[1..4] {
        n.kill();
    }
    let started = Instant::now();
    let (status, body) = sign(&nodes[0], &key_id, b"too few alive").await;
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap();
    for m in &missing {
        assert!(error.contains(m.as_str()), "error names {m}: {error}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // The node still serves.
    nodes[0].get("/v1/status").await.unwrap();
}

async fn misbehaving_participants_are_named_and_outsiders_ignored(scheme: &str) {
    let dir = tempdir();
    let nodes = start_cluster(
        dir.path(),
        &["a", "b", "liar", "cheat", "intruder"],
        |name| match name {
            "liar" => vec![("P2P_MPC_TEST_FAULT", "equivocate-dkg-round1")],
            "cheat" => vec![("P2P_MPC_TEST_FAULT", "corrupt-signature-share")],
            "intruder" => vec![("P2P_MPC_TEST_FAULT", "intrude-signing")],
            "a" => vec![("P2P_MPC_TEST_FAULT", "replay-sign-round2")],
            _ => vec![],
        },
    )
    .await;
    let (a, b, liar, cheat, intruder) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3], &nodes[4]);

    // Different round-1 packages to different participants: caught by the echo round.
    let ids = [
        a.peer_id.as_str(),
        b.peer_id.as_str(),
        liar.peer_id.as_str(),
    ];
    let (status, body) = wait_for(
        "the DKG with the liar to end",
        Duration::from_secs(60),
        || async {
            match post(
                a,
                "/v1/keys",
                json!({"scheme": scheme, "policy": {"open": true}, "threshold": 2, "participants": ids}),
            )
            .await
            {
                (400, body)
                    if body["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("not connected") =>
                {
                    Err(body.to_string())
                }
                other => Ok(other),
            }
        },
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "session_aborted", "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&liar.peer_id) && error.contains("different"),
        "{error}"
    );
    assert!(
        a.get("/v1/keys").await.unwrap()["keys"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A corrupted signature share: the cheater is named.
    let key = create_key(scheme, a, 3, &[a, b, cheat]).await;
    let key_id = key["key_id"].as_str().unwrap();
    let (status, body) = sign(a, key_id, b"cheat here").await;
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&cheat.peer_id)
            && !error.contains(&b.peer_id)
            && error.contains("Invalid signature share"),
        "{error}"
    );

    // Forged messages from a peer outside the session's participants: dropped, counted, and
    // the session completes.
    let key = create_key(scheme, a, 3, &[a, b, intruder]).await;
    let key_id = key["key_id"].as_str().unwrap();
    let (status, body) = sign(a, key_id, b"despite the intruder").await;
    assert_eq!(status, 200, "{body}");
    verify_everywhere(
        &key,
        b"despite the intruder",
        body["signature"].as_str().unwrap(),
    );
    let dropped = wait_for(
        "b to drop the intruder's messages",
        Duration::from_secs(10),
        || async {
            let n = metric_sum(
                b,
                "p2p_mpc_mpc_messages_dropped_total",
                &[("reason", "not_participant")],
            )
            .await;
            if n >= 1.0 { Ok(n) } else { Err(format!("{n}")) }
        },
    )
    .await;
    assert!(dropped >= 1.0);
    // A replayed round-2 request (the coordinator's test fault sends each one twice) is
    // refused by every signer: its nonces are spent.
    let replays: Vec<String> = a
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("test fault: replayed round-2 request"))
        .collect();
    assert!(!replays.is_empty(), "the replay fault ran");
    assert!(
        replays
            .iter()
            .all(|l| l.contains("refused") && !l.contains("ACCEPTED")),
        "{replays:#?}"
    );
    // Still serving, and still signing.
    let (status, body) = sign(b, key_id, b"after the intrusion").await;
    assert_eq!(status, 200, "{body}");
}

async fn kill_9_during_dkg_leaves_no_torn_key_and_a_new_dkg_succeeds(scheme: &str) {
    let dir = tempdir();
    let mut nodes = start_cluster(dir.path(), &["p0", "p1", "victim"], |_| vec![]).await;
    let victim_id = nodes[2].peer_id.clone();
    for (round, delay_ms) in [0u64, 3, 8, 15, 30, 60, 120].into_iter().enumerate() {
        let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.clone()).collect();
        let request = post(
            &nodes[0],
            "/v1/keys",
            json!({"scheme": scheme, "policy": {"open": true}, "threshold": 2, "participants": ids}),
        );
        let kill = async {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let pid = nodes[2].pid();
            // SIGKILL through the shell: the process gets no chance to clean up.
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        };
        let ((status, body), ()) = tokio::join!(request, kill);
        nodes[2].kill();
        eprintln!(
            "kill after {delay_ms} ms: {status} {}",
            body["error"].as_str().unwrap_or("(key created)")
        );
        if status != 201 {
            // 400 when the victim was gone before the request was checked (not connected),
            // 502 when it died during the session; either way the answer names it.
            assert!(status == 502 || status == 400, "round {round}: {body}");
            let error = body["error"].as_str().unwrap_or("");
            assert!(
                error.contains(&victim_id),
                "round {round}: the failure names the victim: {error}"
            );
        }
        // Every key file of the victim is whole; restart it on the same data dir.
        let keys_dir = dir.path().join("data-victim/keys");
        for entry in std::fs::read_dir(&keys_dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".key.json") {
                let text = std::fs::read_to_string(entry.path()).unwrap();
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("round {round}: torn key file {name}: {e}"));
                assert_eq!(v["format"], 1);
            }
        }
        let restarted = start_node(dir.path(), "victim", &nodes[..2], &[]).await;
        assert!(
            !restarted
                .stderr_lines()
                .iter()
                .any(|l| l.contains("key file ignored")),
            "round {round}: a key file could not be read"
        );
        // A share whose DKG the kill cut short is not reloaded: removed at start.
        let pending = pending_files(dir.path(), "victim");
        assert!(
            pending.is_empty(),
            "round {round}: the restarted victim kept {pending:?}"
        );
        for n in &nodes[..2] {
            restarted
                .wait_connected_to(&n.peer_id, Duration::from_secs(30))
                .await;
            wait_identified(n, &restarted.peer_id).await;
        }
        nodes[2] = restarted;
        assert_eq!(nodes[2].peer_id, victim_id);
    }
    // The survivors dropped the shares of every DKG the kills cut short once its session
    // ended: none is left pending.
    for n in &nodes[..2] {
        wait_no_pending(dir.path(), n, "drop the shares of the cut DKGs").await;
    }
    // A new DKG afterwards succeeds, and the key signs.
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let key = create_key(scheme, &nodes[0], 2, &all).await;
    let key_id = key["key_id"].as_str().unwrap();
    let (status, body) = sign(&nodes[2], key_id, b"after the storm").await;
    assert_eq!(status, 200, "{body}");
    verify_everywhere(
        &key,
        b"after the storm",
        body["signature"].as_str().unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_requests_are_400s_that_say_why() {
    let dir = tempdir();
    let nodes = start_cluster(dir.path(), &["x", "y"], |_| vec![]).await;
    let (x, y) = (&nodes[0], &nodes[1]);
    let stranger = "12D3KooWGjvrfKdiCmNmcAKEEVoYwQX3R3M6b4oWvbqhWQq9DC4S";
    let cases = [
        (
            json!({"policy": {"open": true}, "threshold": 1, "participants": [x.peer_id, y.peer_id]}),
            "at least 2",
        ),
        (
            json!({"policy": {"open": true}, "threshold": 3, "participants": [x.peer_id, y.peer_id]}),
            "larger than",
        ),
        (
            json!({"policy": {"open": true}, "threshold": 2, "participants": [x.peer_id, y.peer_id, y.peer_id]}),
            "twice",
        ),
        (
            json!({"policy": {"open": true}, "threshold": 2, "participants": [x.peer_id, "nonsense"]}),
            "not a peer id",
        ),
        (
            json!({"policy": {"open": true}, "threshold": 2, "participants": [x.peer_id, stranger]}),
            stranger,
        ),
        (
            json!({"policy": {"open": true}, "threshold": 2, "participants": [y.peer_id, stranger]}),
            "must be one of",
        ),
        (
            json!({"scheme": "secp256k1", "threshold": 2, "policy": {"open": true}}),
            "unknown signature scheme `secp256k1` (known: ed25519",
        ),
        (
            json!({"policy": {"open": true}, "threshold": "two"}),
            "invalid JSON",
        ),
        (
            json!({"threshold": 2, "participants": [x.peer_id, y.peer_id]}),
            "`policy` is required",
        ),
        (
            json!({"threshold": 2, "policy": {"clients": ["abcd"]}}),
            "not an Ed25519 public key",
        ),
        (
            json!({"threshold": 2, "policy": {"open": true, "approvals": 1}}),
            "an open policy takes no",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = post(x, "/v1/keys", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{body} → {answer}"
        );
    }
    let (status, answer) = sign(x, "00112233445566778899aabbccddeeff", b"m").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("unknown_key")),
        "{answer}"
    );
    let (status, answer) = post(x, "/v1/keys/abc/sign", json!({"message": "zz"})).await;
    assert_eq!(status, 400, "{answer}");
    // Participants default to this node and its MPC peers.
    let key = wait_for(
        "a DKG with default participants",
        Duration::from_secs(30),
        || async {
            match post(
                x,
                "/v1/keys",
                json!({"policy": {"open": true}, "threshold": 2}),
            )
            .await
            {
                (201, body) if body["participants"].as_array().map(Vec::len) == Some(2) => Ok(body),
                (s, b) => Err(format!("{s} {b}")),
            }
        },
    )
    .await;
    let key_id = key["key_id"].as_str().unwrap();
    assert_eq!(
        y.get(&format!("/v1/keys/{key_id}")).await.unwrap()["key_id"],
        key_id
    );
    x.get("/v1/status").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signature_is_one_session_span_on_every_node_and_metrics_pass_promtool() {
    let dir = tempdir();
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for name in ["t0", "t1"] {
        let trace = dir.path().join(format!("{name}.trace.json"));
        let mut extra = args(&["--json-trace", "--json-trace-file", trace.to_str().unwrap()]);
        for b in &nodes {
            extra.push("--bootnode".into());
            extra.push(b.tcp_addr.clone());
        }
        nodes.push(NodeProcess::start(name, dir.path(), &extra).await);
    }
    nodes[1]
        .wait_connected_to(&nodes[0].peer_id, Duration::from_secs(30))
        .await;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let key = create_key("ed25519", &nodes[0], 2, &all).await;
    let (status, body) = sign(&nodes[0], key["key_id"].as_str().unwrap(), b"traced").await;
    assert_eq!(status, 200, "{body}");
    let session = body["session_id"].as_str().unwrap().to_string();

    let started = metric_sum(
        &nodes[1],
        "p2p_mpc_mpc_sessions_started_total",
        &[("role", "participant")],
    )
    .await;
    assert!(
        started >= 2.0,
        "t1 took part in the DKG and the signature: {started}"
    );
    let completed = metric_sum(
        &nodes[0],
        "p2p_mpc_mpc_sessions_completed_total",
        &[("protocol", "frost_sign")],
    )
    .await;
    assert_eq!(completed, 1.0);
    let page = nodes[0].metrics_page().await;
    assert!(
        page.contains("p2p_mpc_mpc_session_duration_seconds_bucket"),
        "{page}"
    );
    if let Some(promtool) = p2p_mpc_testenv::or_skip(p2p_mpc_testenv::promtool().await) {
        use std::io::Write;
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    for node in &mut nodes {
        assert!(
            node.terminate(Duration::from_secs(10))
                .is_some_and(|s| s.success())
        );
        let trace = dir.path().join(format!("{}.trace.json", node.name));
        let text = std::fs::read_to_string(&trace).unwrap();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| {
                v["type"] == "span"
                    && v["name"] == "mpc_session"
                    && v["fields"]["session"] == session.as_str()
            });
        assert!(
            found,
            "{}: no mpc_session span with session {session}",
            node.name
        );
    }
}

fn client_key() -> ed25519_dalek::SigningKey {
    p2p_mpc_node::mpc::policy::generate_client_key()
}

fn public(k: &ed25519_dalek::SigningKey) -> String {
    hex::encode(k.verifying_key().as_bytes())
}

/// An authorization of `message` with `key_id` by `client` for a request coordinated by
/// `coordinator`, expiring `ttl` seconds from now (negative: already expired).
fn auth(
    client: &ed25519_dalek::SigningKey,
    coordinator: &NodeProcess,
    key_id: &str,
    message: &[u8],
    ttl: i64,
) -> Value {
    let expires = p2p_mpc_node::mpc::policy::now().saturating_add_signed(ttl);
    let coordinator: libp2p::PeerId = coordinator.peer_id.parse().unwrap();
    serde_json::to_value(p2p_mpc_node::mpc::policy::authorize(
        client,
        key_id,
        &coordinator,
        message,
        expires,
    ))
    .unwrap()
}

async fn sign_with(
    node: &NodeProcess,
    key_id: &str,
    message: &[u8],
    auths: Vec<Value>,
) -> (u16, Value) {
    post(
        node,
        &format!("/v1/keys/{key_id}/sign"),
        json!({ "message": hex::encode(message), "authorizations": auths }),
    )
    .await
}

fn assert_refused(what: &str, (status, body): (u16, Value), rule: &str) {
    assert_eq!(status, 403, "{what}: {body}");
    assert_eq!(body["code"], "unauthorized", "{what}: {body}");
    assert_eq!(body["rule"], rule, "{what}: {body}");
}

/// Like [`assert_refused`], for a refusal by the key's other holders (the coordinator did
/// not refuse): the answer names exactly `holders` as the ones that refused.
fn assert_refused_by(what: &str, answer: (u16, Value), rule: &str, holders: &[&NodeProcess]) {
    let body = answer.1.clone();
    assert_refused(what, answer, rule);
    let mut refused_by: Vec<String> = body["refused_by"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no refused_by in {body}"))
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_string())
        .collect();
    refused_by.sort();
    let mut expected: Vec<String> = holders.iter().map(|n| n.peer_id.clone()).collect();
    expected.sort();
    assert_eq!(refused_by, expected, "{what}: {body}");
}

/// The environment of node `name` of a cluster whose node `rogue` is a compromised holder
/// that skips its own authorization checks.
fn rogue_skips_its_checks(name: &str) -> Vec<(&'static str, &'static str)> {
    if name == "rogue" {
        vec![("P2P_MPC_TEST_FAULT", "skip-sign-authorization")]
    } else {
        vec![]
    }
}

async fn every_holder_checks_the_signing_policy(scheme: &str) {
    let dir = tempdir();
    let names = ["a", "b", "rogue"];
    let env_of = rogue_skips_its_checks;
    let nodes = start_cluster(dir.path(), &names, env_of).await;
    let (a, b, rogue) = (&nodes[0], &nodes[1], &nodes[2]);
    let (c1, c2, outsider) = (client_key(), client_key(), client_key());
    let policy =
        json!({"clients": [public(&c1), public(&c2)], "approvals": 2, "max_message_bytes": 64});
    let key = create_key_with(scheme, a, 2, &[a, b, rogue], policy).await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    // Every holder stores the same policy, in canonical form.
    let mut clients = vec![public(&c1), public(&c2)];
    clients.sort();
    for node in [a, b, rogue] {
        let k = node.get(&format!("/v1/keys/{key_id}")).await.unwrap();
        assert_eq!(k["policy"]["clients"], json!(clients), "{k}");
        assert_eq!(k["policy"]["approvals"], 2, "{k}");
    }
    let msg = b"transfer 10 to carol";

    // A holder that skips its own check (one compromised holder = t - 1 here) coordinates
    // without valid approvals: the honest holders refuse, so there is no signature and they
    // never open a signing session (no nonce, no signature share).
    // The caller hears a typed refusal (403, the rule, who refused), not a 502.
    for auths in [vec![], vec![auth(&c1, rogue, &key_id, msg, 60)]] {
        let answer = sign_with(rogue, &key_id, msg, auths).await;
        assert!(answer.1["signature"].is_null(), "{}", answer.1);
        assert_refused_by("no approvals", answer, "too_few_approvals", &[a, b]);
    }
    for honest in [a, b] {
        assert!(
            metric_sum(
                honest,
                "p2p_mpc_sign_authorizations_total",
                &[("outcome", "too_few_approvals")]
            )
            .await
                >= 1.0,
            "{} counted the refusal",
            honest.name
        );
        assert_eq!(
            metric_sum(
                honest,
                "p2p_mpc_mpc_sessions_started_total",
                &[("protocol", "frost_sign")]
            )
            .await,
            0.0,
            "{} opened no signing session",
            honest.name
        );
    }
    // With valid approvals the same coordinator gets a signature that verifies.
    let (status, body) = sign_with(
        rogue,
        &key_id,
        msg,
        vec![
            auth(&c1, rogue, &key_id, msg, 60),
            auth(&c2, rogue, &key_id, msg, 60),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    verify_everywhere(&key, msg, body["signature"].as_str().unwrap());

    // On an honest coordinator, each refusal names its rule (the authorizations name the
    // coordinator they are sent to).
    let cases = |via: &NodeProcess| {
        let ok2 = || auth(&c2, via, &key_id, msg, 60);
        let long = [b'x'; 65];
        let cases: Vec<(&str, Vec<u8>, Vec<Value>, &str)> = vec![
            (
                "expired",
                msg.to_vec(),
                vec![auth(&c1, via, &key_id, msg, -1), ok2()],
                "expired",
            ),
            (
                "too far ahead",
                msg.to_vec(),
                vec![auth(&c1, via, &key_id, msg, 3600), ok2()],
                "expiry_too_far",
            ),
            (
                "wrong key id",
                msg.to_vec(),
                vec![auth(&c1, via, &"0".repeat(32), msg, 60), ok2()],
                "invalid_signature",
            ),
            (
                "wrong message",
                msg.to_vec(),
                vec![auth(&c1, via, &key_id, b"other", 60), ok2()],
                "invalid_signature",
            ),
            (
                "unlisted client",
                msg.to_vec(),
                vec![auth(&outsider, via, &key_id, msg, 60), ok2()],
                "unlisted_client",
            ),
            (
                "one of two approvals",
                msg.to_vec(),
                vec![ok2()],
                "too_few_approvals",
            ),
            (
                "message over max_message_bytes",
                long.to_vec(),
                vec![
                    auth(&c1, via, &key_id, &long, 60),
                    auth(&c2, via, &key_id, &long, 60),
                ],
                "max_message_bytes",
            ),
        ];
        cases
    };
    for (what, message, auths, rule) in cases(a) {
        assert_refused(what, sign_with(a, &key_id, &message, auths).await, rule);
    }
    // And each is refused by the holders themselves when the coordinator checks nothing.
    for (what, message, auths, rule) in cases(rogue) {
        assert_refused_by(
            what,
            sign_with(rogue, &key_id, &message, auths).await,
            rule,
            &[a, b],
        );
    }

    // A request id is accepted once, also after every holder restarted.
    let pair = vec![
        auth(&c1, a, &key_id, msg, 300),
        auth(&c2, a, &key_id, msg, 300),
    ];
    let (status, body) = sign_with(a, &key_id, msg, pair.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_refused(
        "replay",
        sign_with(a, &key_id, msg, pair.clone()).await,
        "replayed",
    );
    drop(nodes);
    let nodes = start_cluster(dir.path(), &names, env_of).await;
    let (a, b, rogue) = (&nodes[0], &nodes[1], &nodes[2]);
    assert_refused(
        "replay after a restart",
        sign_with(a, &key_id, msg, pair.clone()).await,
        "replayed",
    );

    // A policy change needs K approvals under the current policy, checked by every holder.
    use p2p_mpc_node::mpc::policy::{Approves, SigningPolicy, approve_change};
    let current: SigningPolicy = serde_json::from_value(key["policy"].clone()).unwrap();
    let c3 = client_key();
    let new_policy: SigningPolicy =
        serde_json::from_value(json!({"clients": [public(&c3)], "approvals": 1})).unwrap();
    let new_policy = new_policy.normalized().unwrap();
    let approval = |c: &ed25519_dalek::SigningKey, from: &SigningPolicy| {
        let expires = p2p_mpc_node::mpc::policy::now() + 60;
        serde_json::to_value(approve_change(
            c,
            &key_id,
            from.stamp(0),
            &new_policy,
            expires,
        ))
        .unwrap()
    };
    let policy_path = format!("/v1/keys/{key_id}/policy");

    // Signing authorizations are no change approvals, whatever bytes the clients signed:
    // not the bytes of the change approval itself, not the message that approved a change
    // before approvals had a domain of their own. The compromised holder skips its own check
    // and forwards them; every honest holder refuses, and the policy stays.
    let what = Approves::PolicyChange {
        current: current.stamp(0),
        new: new_policy.digest(),
    };
    let approval_bytes = what.signed_bytes(&key_id, &[7; 16], p2p_mpc_node::mpc::policy::now());
    let earlier_change_message = [
        b"p2p-mpc policy change v1\0".as_slice(),
        &new_policy.to_bytes(),
    ]
    .concat();
    for signed in [approval_bytes, earlier_change_message] {
        // (Without the coordinator they name: a change approval names none, and with it
        // they are refused as malformed before any signature is checked.)
        let signing: Vec<Value> = [&c1, &c2]
            .into_iter()
            .map(|c| {
                let mut signing = auth(c, a, &key_id, &signed, 60);
                signing.as_object_mut().unwrap().remove("coordinator");
                signing
            })
            .collect();
        let body = json!({"policy": new_policy, "authorizations": signing});
        assert_refused_by(
            "signing authorizations as change approvals, through a rogue coordinator",
            post(rogue, &policy_path, body.clone()).await,
            "invalid_signature",
            &[a, b],
        );
        assert_refused(
            "signing authorizations as change approvals",
            post(a, &policy_path, body).await,
            "invalid_signature",
        );
        for node in [a, b] {
            let k = node.get(&format!("/v1/keys/{key_id}")).await.unwrap();
            assert_eq!(k["policy"]["clients"], json!(clients), "on {}", node.name);
        }
    }

    // A client key of small order (for which anyone forges signatures) is refused in a new
    // key's policy and in a change.
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    let weak = hex::encode(identity_point);
    let (status, body) = post(
        a,
        "/v1/keys",
        json!({"threshold": 2, "policy": {"clients": [weak]}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("small order"),
        "{body}"
    );
    let (status, body) = post(
        a,
        &policy_path,
        json!({"policy": {"clients": [weak]}, "authorizations": []}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("small order"),
        "{body}"
    );

    // The compromised holder forwards a change with a single approval, and nobody takes it.
    let one = vec![approval(&c1, &current)];
    let (status, body) = post(
        rogue,
        &policy_path,
        json!({"policy": new_policy, "authorizations": one}),
    )
    .await;
    assert_ne!(status, 200, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("too_few_approvals"),
        "{body}"
    );
    assert_refused(
        "policy change with one of two approvals",
        post(
            a,
            &policy_path,
            json!({"policy": new_policy, "authorizations": [approval(&c1, &current)]}),
        )
        .await,
        "too_few_approvals",
    );
    for node in [a, b] {
        let k = node.get(&format!("/v1/keys/{key_id}")).await.unwrap();
        assert_eq!(
            k["policy"]["clients"],
            json!(clients),
            "unchanged on {}: {k}",
            node.name
        );
    }
    // With both approvals it takes effect on every holder.
    let both = vec![approval(&c1, &current), approval(&c2, &current)];
    let (status, body) = post(
        a,
        &policy_path,
        json!({"policy": new_policy, "authorizations": both}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for node in [a, b, rogue] {
        let k = node.get(&format!("/v1/keys/{key_id}")).await.unwrap();
        assert_eq!(
            k["policy"]["clients"],
            json!([public(&c3)]),
            "on {}: {k}",
            node.name
        );
    }
    assert_refused(
        "the old clients after the change",
        sign_with(
            b,
            &key_id,
            msg,
            vec![
                auth(&c1, b, &key_id, msg, 60),
                auth(&c2, b, &key_id, msg, 60),
            ],
        )
        .await,
        "unlisted_client",
    );
    let (status, body) = sign_with(b, &key_id, msg, vec![auth(&c3, b, &key_id, msg, 60)]).await;
    assert_eq!(status, 200, "{body}");
    // An approval made against the policy that was replaced is void, even by a listed client.
    assert_refused(
        "an approval against the replaced policy",
        post(
            b,
            &policy_path,
            json!({"policy": current, "authorizations": [approval(&c3, &current)]}),
        )
        .await,
        "invalid_signature",
    );

    // The rate rule: two signatures a minute, on every holder.
    let rated = create_key_with(
        scheme,
        a,
        2,
        &[a, b, rogue],
        json!({"clients": [public(&c1)], "max_signatures_per_minute": 2}),
    )
    .await;
    let rated_id = rated["key_id"].as_str().unwrap();
    for _ in 0..2 {
        let (status, body) =
            sign_with(a, rated_id, msg, vec![auth(&c1, a, rated_id, msg, 60)]).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_refused(
        "third signature in a minute",
        sign_with(a, rated_id, msg, vec![auth(&c1, a, rated_id, msg, 60)]).await,
        "max_signatures_per_minute",
    );
}

/// Waits up to 30 s until `node` keeps no pending key share (`what` says why it should).
async fn wait_no_pending(dir: &Path, node: &NodeProcess, what: &str) {
    wait_for(
        &format!("{} to {what}", node.name),
        Duration::from_secs(30),
        || async {
            let pending = pending_files(dir, &node.name);
            if pending.is_empty() {
                Ok(())
            } else {
                Err(format!("{pending:?}"))
            }
        },
    )
    .await;
}

/// The `.pending.json` files under a node's key directory.
fn pending_files(dir: &Path, name: &str) -> Vec<String> {
    common::files_ending(&dir.join(format!("data-{name}/keys")), ".pending.json")
}

async fn key_count(node: &NodeProcess) -> usize {
    node.get("/v1/keys").await.unwrap()["keys"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creator_caps_hold_on_every_participant_and_unconfirmed_keys_are_discarded() {
    let dir = tempdir();
    // `capped` takes at most one key and one task from each creator; `mute` stores its DKG
    // share but never confirms it.
    let nodes = start_cluster(
        dir.path(),
        &["p0", "p1", "capped", "mute"],
        |name| match name {
            "capped" => vec![
                ("P2P_MPC_MPC_MAX_KEYS_PER_CREATOR", "1"),
                ("P2P_MPC_MPC_MAX_TASKS_PER_CREATOR", "1"),
            ],
            "mute" => vec![("P2P_MPC_TEST_FAULT", "withhold-dkg-stored")],
            _ => vec![],
        },
    )
    .await;
    let (p0, p1, capped, mute) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    let ids =
        |ns: &[&NodeProcess]| -> Vec<String> { ns.iter().map(|n| n.peer_id.clone()).collect() };

    // One key from p0 is taken by `capped`; the second is refused by `capped` itself.
    create_key("ed25519", p0, 2, &[p0, p1, capped]).await;
    let (status, body) = post(
        p0,
        "/v1/keys",
        json!({"threshold": 2, "participants": ids(&[p0, p1, capped]), "policy": {"open": true}}),
    )
    .await;
    assert_ne!(status, 201, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&capped.peer_id) && error.contains("mpc_max_keys_per_creator"),
        "the refusal names the participant and the setting: {body}"
    );
    assert_eq!(key_count(p0).await, 1, "the refused DKG left no key on p0");
    assert_eq!(key_count(capped).await, 1);
    // A key `capped` makes itself counts against its own cap: the second is a 429.
    create_key("ed25519", capped, 2, &[capped, p0]).await;
    let (status, body) = post(
        capped,
        "/v1/keys",
        json!({"threshold": 2, "participants": ids(&[capped, p0]), "policy": {"open": true}}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "limit_reached", "{body}");
    // Other creators are not affected by p0's count.
    let key = create_key("ed25519", p1, 2, &[p1, capped]).await;
    let (status, body) = sign(capped, key["key_id"].as_str().unwrap(), b"capped signs").await;
    assert_eq!(status, 200, "{body}");

    // Aggregation tasks: the same rule, checked by `capped` for a task p0 creates.
    let task = json!({"participants": ids(&[p0, p1, capped]), "threshold": 1, "length": 4, "min_reports": 1});
    let (status, body) = post(p0, "/v1/aggregations", &task).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(p0, "/v1/aggregations", &task).await;
    assert_ne!(status, 201, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&capped.peer_id) && error.contains("mpc_max_tasks_per_creator"),
        "{body}"
    );
    let task_files = std::fs::read_dir(dir.path().join("data-p0/aggregation"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(
        task_files, 2,
        "p0 keeps one task (file and state), not the refused one"
    );

    // A DKG that one participant never confirms: no node keeps the key, pending or not.
    let mut counts = Vec::new();
    for n in [p0, p1, mute] {
        counts.push(key_count(n).await);
    }
    let (status, body) = post(
        p0,
        "/v1/keys",
        json!({"threshold": 2, "participants": ids(&[p0, p1, mute]), "policy": {"open": true}}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("confirmed storing") && error.contains("discarded"),
        "{body}"
    );
    for (n, count) in [p0, p1, mute].into_iter().zip(counts) {
        wait_no_pending(dir.path(), n, "drop the unconfirmed share").await;
        assert_eq!(key_count(n).await, count, "{} lists no new key", n.name);
    }
    // The share is removed before the session's end is logged.
    wait_for(
        "the mute participant to say why it dropped its share",
        Duration::from_secs(10),
        || async {
            let said = mute
                .stderr_lines()
                .iter()
                .any(|l| l.contains("did not confirm that every participant stored key"));
            if said {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
}

/// t − 1 = 2 compromised holders of a 3-of-5 key, which sign for anyone, cannot get a
/// signature without the clients' approvals: every set of three signers holds an honest
/// holder, and each honest holder refuses before it makes a nonce.
async fn t_minus_one_compromised_holders_cannot_sign_alone(scheme: &str) {
    let dir = tempdir();
    let names = ["h0", "h1", "h2", "r0", "r1"];
    let nodes = start_cluster(dir.path(), &names, |name| {
        if name.starts_with('r') {
            vec![("P2P_MPC_TEST_FAULT", "skip-sign-authorization")]
        } else {
            vec![]
        }
    })
    .await;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let client = client_key();
    let key = create_key_with(
        scheme,
        &nodes[0],
        3,
        &all,
        json!({"clients": [public(&client)], "approvals": 1}),
    )
    .await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let (honest, rogues) = nodes.split_at(3);
    let msg = b"pay mallory";
    let stranger = client_key();
    for coordinator in rogues {
        for auths in [vec![], vec![auth(&stranger, coordinator, &key_id, msg, 60)]] {
            let (status, body) = sign_with(coordinator, &key_id, msg, auths).await;
            assert_ne!(status, 200, "{}: {body}", coordinator.name);
            assert!(body["signature"].is_null(), "{body}");
        }
    }
    for node in honest {
        assert_eq!(
            metric_sum(
                node,
                "p2p_mpc_mpc_sessions_started_total",
                &[("protocol", "frost_sign")]
            )
            .await,
            0.0,
            "{} opened no signing session, so made no nonce and no share",
            node.name
        );
        assert!(
            metric_sum(
                node,
                "p2p_mpc_sign_authorizations_total",
                &[("outcome", "authorized")]
            )
            .await
                == 0.0,
            "{} authorized nothing",
            node.name
        );
    }
    // The other compromised holder did join as a signer (it signs for anyone), and that
    // was not enough.
    for node in rogues {
        let joined = metric_sum(
            node,
            "p2p_mpc_mpc_sessions_started_total",
            &[("protocol", "frost_sign"), ("role", "participant")],
        )
        .await;
        assert!(
            joined >= 1.0,
            "{} joined a signing session: {joined}",
            node.name
        );
    }

    // With the client's approval, a compromised coordinator gets a valid signature (it may
    // use a key as its policy allows, nothing more).
    let (status, body) = sign_with(
        &rogues[0],
        &key_id,
        msg,
        vec![auth(&client, &rogues[0], &key_id, msg, 60)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    verify_everywhere(&key, msg, body["signature"].as_str().unwrap());
}

/// Writes `change` as the new policy of `key_id` through `node`, approved by `approvals`.
async fn change_policy(
    node: &NodeProcess,
    key_id: &str,
    change: &Value,
    approvals: Vec<Value>,
) -> (u16, Value) {
    post(
        node,
        &format!("/v1/keys/{key_id}/policy"),
        json!({"policy": change, "authorizations": approvals}),
    )
    .await
}

/// The approval by `client` of replacing `current` with `new` on `key_id`.
fn change_approval(
    client: &ed25519_dalek::SigningKey,
    key_id: &str,
    current: &Value,
    version: u64,
    new: &Value,
) -> Value {
    use p2p_mpc_node::mpc::policy::{SigningPolicy, approve_change, now};
    let parse = |v: &Value| {
        serde_json::from_value::<SigningPolicy>(v.clone())
            .unwrap()
            .normalized()
            .unwrap()
    };
    let current: SigningPolicy = serde_json::from_value(current.clone()).unwrap();
    serde_json::to_value(approve_change(
        client,
        key_id,
        current.stamp(version),
        &parse(new),
        now() + 60,
    ))
    .unwrap()
}

async fn policy_on(node: &NodeProcess, key_id: &str) -> Value {
    node.get(&format!("/v1/keys/{key_id}")).await.unwrap()["policy"].clone()
}

/// A 409 refusal of `rule` by exactly `holders`.
fn assert_conflict_by(
    what: &str,
    (status, body): (u16, Value),
    rule: &str,
    holders: &[&NodeProcess],
) {
    assert_eq!(status, 409, "{what}: {body}");
    assert_eq!(body["code"], "conflict", "{what}: {body}");
    assert_eq!(body["rule"], rule, "{what}: {body}");
    let mut refused_by: Vec<&str> = body["refused_by"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no refused_by in {body}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    refused_by.sort();
    let mut expected: Vec<&str> = holders.iter().map(|n| n.peer_id.as_str()).collect();
    expected.sort();
    assert_eq!(refused_by, expected, "{what}: {body}");
}

/// Waits until `node` has version `version` of `key_id`'s policy in force; returns the key.
async fn wait_policy_version(node: &NodeProcess, key_id: &str, version: u64) -> Value {
    wait_for(
        &format!("{} to have policy version {version}", node.name),
        Duration::from_secs(30),
        || async {
            let k = node.get(&format!("/v1/keys/{key_id}")).await?;
            if k["policy_version"] == version {
                Ok(k)
            } else {
                Err(format!("{k}"))
            }
        },
    )
    .await
}

/// A revocation commits while a holder is down, and the revoked client gets nothing from
/// that holder when it returns: the other holders refuse its invitations (policy version
/// mismatch) and it catches up from them; a holder that is behind when invited catches up
/// from the coordinator. No node catches up at start here, so each path is the one tested.
async fn a_revocation_holds_while_a_holder_is_down_and_stale_holders_catch_up(scheme: &str) {
    let dir = tempdir();
    let names = ["a", "b", "c"];
    let env_of = |_: &str| vec![("P2P_MPC_TEST_FAULT", "no-policy-catch-up-at-start")];
    let mut nodes = start_cluster(dir.path(), &names, env_of).await;
    let (c1, c2, c3) = (client_key(), client_key(), client_key());
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let key = create_key_with(
        scheme,
        &nodes[0],
        2,
        &all,
        json!({"clients": [public(&c1), public(&c2)], "approvals": 1}),
    )
    .await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    assert_eq!(key["policy_version"], 0, "{key}");
    let msg = b"pay 1";
    let (status, body) = sign_with(
        &nodes[2],
        &key_id,
        msg,
        vec![auth(&c1, &nodes[2], &key_id, msg, 60)],
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // c is down; c2 revokes c1. Two of three holders commit it (the quorum of a 2-of-3 key).
    nodes[2].kill();
    let current = key["policy"].clone();
    let revoked = json!({"clients": [public(&c2)], "approvals": 1});
    let (status, body) = change_policy(
        &nodes[0],
        &key_id,
        &revoked,
        vec![change_approval(&c2, &key_id, &current, 0, &revoked)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy_version"], 1, "{body}");
    let mut ab = vec![nodes[0].peer_id.clone(), nodes[1].peer_id.clone()];
    ab.sort();
    assert_eq!(body["committed_on"], json!(ab), "{body}");
    assert_eq!(body["lagging"], json!([nodes[2].peer_id]), "{body}");
    assert_eq!(policy_on(&nodes[1], &key_id).await, revoked);

    // c returns with the old policy; the revoked client asks it to sign. The others refuse
    // its invitations (it checked another version), so nothing is signed, and c catches up.
    nodes[2] = start_node(dir.path(), "c", &nodes[..2], &env_of("c")).await;
    let c = &nodes[2];
    for other in &nodes[..2] {
        c.wait_connected_to(&other.peer_id, Duration::from_secs(30))
            .await;
    }
    let stale = c.get(&format!("/v1/keys/{key_id}")).await.unwrap();
    assert_eq!(stale["policy_version"], 0, "no catch-up at start: {stale}");
    assert_conflict_by(
        "the revoked client through the stale holder",
        sign_with(c, &key_id, msg, vec![auth(&c1, c, &key_id, msg, 60)]).await,
        "policy_version_mismatch",
        &[&nodes[0], &nodes[1]],
    );
    let caught_up = wait_policy_version(c, &key_id, 1).await;
    assert_eq!(caught_up["policy"], revoked, "{caught_up}");
    assert_eq!(
        metric_sum(c, "p2p_mpc_policy_changes_total", &[("via", "catch_up")]).await,
        1.0
    );
    assert_refused(
        "the revoked client once the holder caught up",
        sign_with(c, &key_id, msg, vec![auth(&c1, c, &key_id, msg, 60)]).await,
        "unlisted_client",
    );
    let (status, body) = sign_with(c, &key_id, msg, vec![auth(&c2, c, &key_id, msg, 60)]).await;
    assert_eq!(status, 200, "{body}");

    // Now b misses a change (c2 adds c3), and a invites it while c is down: b refuses, sees
    // that it is behind and catches up from a; then it signs.
    nodes[1].kill();
    let mut both = vec![public(&c2), public(&c3)];
    both.sort();
    let added = json!({"clients": both, "approvals": 1});
    let (status, body) = change_policy(
        &nodes[0],
        &key_id,
        &added,
        vec![change_approval(&c2, &key_id, &revoked, 1, &added)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lagging"], json!([nodes[1].peer_id]), "{body}");
    // An approval of the replaced version is void, even for the same change.
    let (status, body) = change_policy(
        &nodes[0],
        &key_id,
        &revoked,
        vec![change_approval(&c2, &key_id, &revoked, 1, &revoked)],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    nodes[1] = start_node(dir.path(), "b", &nodes[..1], &env_of("b")).await;
    nodes[1]
        .wait_connected_to(&nodes[0].peer_id, Duration::from_secs(30))
        .await;
    nodes[2].kill();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert_conflict_by(
        "a signature with a holder one change behind",
        sign_with(a, &key_id, msg, vec![auth(&c3, a, &key_id, msg, 60)]).await,
        "policy_version_mismatch",
        &[b],
    );
    let caught_up = wait_policy_version(b, &key_id, 2).await;
    assert_eq!(caught_up["policy"], added, "{caught_up}");
    let (status, body) = sign_with(a, &key_id, msg, vec![auth(&c3, a, &key_id, msg, 60)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric_sum(a, "p2p_mpc_policy_changes_total", &[("via", "coordinator")]).await,
        2.0
    );
}

/// Two approved changes of one key started at once on two holders: exactly one commits,
/// on every holder, and the other is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_policy_changes_exactly_one_commits_everywhere() {
    let dir = tempdir();
    let nodes = start_cluster(dir.path(), &["a", "b", "c"], |_| vec![]).await;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let owner = client_key();
    let key = create_key_with(
        "ed25519",
        &nodes[0],
        2,
        &all,
        json!({"clients": [public(&owner)]}),
    )
    .await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let mut current = key["policy"].clone();
    for version in 0..3u64 {
        // Each change keeps the owner and adds a client of its own.
        let (x, y) = (client_key(), client_key());
        let to_x = json!({"clients": [public(&owner), public(&x)]});
        let to_y = json!({"clients": [public(&owner), public(&y)]});
        let (one, two) = tokio::join!(
            change_policy(
                &nodes[0],
                &key_id,
                &to_x,
                vec![change_approval(&owner, &key_id, &current, version, &to_x)],
            ),
            change_policy(
                &nodes[1],
                &key_id,
                &to_y,
                vec![change_approval(&owner, &key_id, &current, version, &to_y)],
            ),
        );
        let winners: Vec<&Value> = [&one, &two]
            .into_iter()
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(winners.len(), 1, "round {version}: {one:?} {two:?}");
        let loser = if one.0 == 200 { &two } else { &one };
        assert!(
            [403, 409].contains(&loser.0),
            "round {version}: the other change is refused: {loser:?}"
        );
        let won = winners[0]["policy"].clone();
        for node in &nodes {
            let k = wait_policy_version(node, &key_id, version + 1).await;
            assert_eq!(k["policy"], won, "round {version} on {}", node.name);
        }
        current = won;
    }
}

/// A compromised holder with the clients' approvals of a change (a change that lost a
/// conflict, or that the clients gave up on) sends it to the other holders as committed,
/// without a quorum's votes: every honest holder refuses it (`uncertified_change`), applies
/// nothing, and the key keeps signing under the policy in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_no_quorum_voted_for_is_applied_nowhere() {
    let dir = tempdir();
    let env_of = |name: &str| {
        if name == "rogue" {
            vec![("P2P_MPC_TEST_FAULT", "commit-without-quorum")]
        } else {
            vec![]
        }
    };
    let nodes = start_cluster(dir.path(), &["a", "b", "rogue"], env_of).await;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let (a, b, rogue) = (&nodes[0], &nodes[1], &nodes[2]);
    let (owner, intruder) = (client_key(), client_key());
    let key = create_key_with("ed25519", a, 2, &all, json!({"clients": [public(&owner)]})).await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let current = key["policy"].clone();
    let hijack = json!({"clients": [public(&intruder)]});
    let approvals = vec![change_approval(&owner, &key_id, &current, 0, &hijack)];
    assert_refused_by(
        "a commit without votes",
        change_policy(rogue, &key_id, &hijack, approvals).await,
        "uncertified_change",
        &[a, b],
    );
    for node in &nodes {
        let k = node.get(&format!("/v1/keys/{key_id}")).await.unwrap();
        assert_eq!(k["policy_version"], 0, "{}: {k}", node.name);
        assert_eq!(k["policy"], current, "{}: {k}", node.name);
        assert_eq!(
            metric_sum(node, "p2p_mpc_policy_changes_total", &[("via", "commit")]).await,
            0.0,
            "{}",
            node.name
        );
    }
    // The owner still signs, and the intruder does not.
    let msg = b"still mine";
    let (status, body) = sign_with(a, &key_id, msg, vec![auth(&owner, a, &key_id, msg, 60)]).await;
    assert_eq!(status, 200, "{body}");
    assert_refused(
        "the intruder",
        sign_with(a, &key_id, msg, vec![auth(&intruder, a, &key_id, msg, 60)]).await,
        "unlisted_client",
    );
}

/// A holder that receives a client's authorizations as a participant and at once
/// coordinates a signature of its own with them (front-running) gets nothing: the
/// authorizations name the coordinator the client chose, every honest holder refuses the
/// front-runner (`wrong_coordinator`, counted and logged with its peer id) without spending
/// the request ids, and the chosen coordinator still gets its signature.
async fn a_front_running_holder_gets_nothing_and_the_chosen_coordinator_signs(scheme: &str) {
    let dir = tempdir();
    let env_of = |name: &str| {
        if name == "rogue" {
            vec![(
                "P2P_MPC_TEST_FAULT",
                "skip-sign-authorization,front-run-signing",
            )]
        } else {
            vec![]
        }
    };
    let nodes = start_cluster(dir.path(), &["a", "b", "rogue"], env_of).await;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let (a, b, rogue) = (&nodes[0], &nodes[1], &nodes[2]);
    let client = client_key();
    // 3-of-3: the chosen coordinator must invite the front-runner.
    let key = create_key_with(scheme, a, 3, &all, json!({"clients": [public(&client)]})).await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    for i in 0..3u8 {
        let msg = [b'p', b'a', b'y', i];
        let (status, body) =
            sign_with(a, &key_id, &msg, vec![auth(&client, a, &key_id, &msg, 60)]).await;
        assert_eq!(status, 200, "round {i}: {body}");
        verify_everywhere(&key, &msg, body["signature"].as_str().unwrap());
        for honest in [a, b] {
            wait_for(
                &format!("{} to refuse front-run {i}", honest.name),
                Duration::from_secs(20),
                || async {
                    let n = metric_sum(
                        honest,
                        "p2p_mpc_sign_authorizations_total",
                        &[("outcome", "wrong_coordinator")],
                    )
                    .await;
                    if n > f64::from(i) {
                        Ok(())
                    } else {
                        Err(format!("{n}"))
                    }
                },
            )
            .await;
        }
    }
    for honest in [a, b] {
        assert!(
            honest
                .stderr_lines()
                .iter()
                .any(|l| l.contains("front-running") && l.contains(&rogue.peer_id)),
            "{} names the front-runner",
            honest.name
        );
    }
    wait_for(
        "the front-runner to log its refusals",
        Duration::from_secs(20),
        || async {
            let lines = rogue.stderr_lines();
            let refused = lines
                .iter()
                .filter(|l| l.contains("front-running signature refused"))
                .count();
            assert!(
                !lines
                    .iter()
                    .any(|l| l.contains("front-running signature SUCCEEDED"))
            );
            if refused >= 3 {
                Ok(())
            } else {
                Err(format!("{refused} refused"))
            }
        },
    )
    .await;
}

/// An open key's policy cannot be taken over by an API caller: without admins it is fixed,
/// with admins it takes K of their approvals; a key stored before policies existed loads as
/// legacy-open, is counted, refuses every change until it is converted offline on every
/// holder. Each refusal is made by the honest holders too, not only by the coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_keys_cannot_be_seized_and_legacy_keys_wait_for_conversion() {
    let dir = tempdir();
    let names = ["a", "b", "rogue"];
    let env_of = rogue_skips_its_checks;
    let nodes = start_cluster(dir.path(), &names, env_of).await;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let (a, b, rogue) = (&nodes[0], &nodes[1], &nodes[2]);
    let attacker = client_key();
    let seize = json!({"clients": [public(&attacker)]});

    // Open, without admins: fixed, on the coordinator and on every holder.
    let fixed = create_key("ed25519", a, 2, &all).await;
    let fixed_id = fixed["key_id"].as_str().unwrap().to_string();
    let open_policy = fixed["policy"].clone();
    assert_refused(
        "seizing an open key",
        change_policy(a, &fixed_id, &seize, vec![]).await,
        "policy_fixed",
    );
    let approval = change_approval(&attacker, &fixed_id, &open_policy, 0, &seize);
    assert_refused_by(
        "seizing an open key through a rogue coordinator",
        change_policy(rogue, &fixed_id, &seize, vec![approval]).await,
        "policy_fixed",
        &[a, b],
    );
    for node in [a, b] {
        assert_eq!(
            policy_on(node, &fixed_id).await,
            json!({"open": true}),
            "{}",
            node.name
        );
    }

    // Open with admins: two of them must approve; then the change holds everywhere.
    let (adm1, adm2, c) = (client_key(), client_key(), client_key());
    let admin_key = create_key_with(
        "ed25519",
        a,
        2,
        &all,
        json!({"open": true, "admins": [public(&adm1), public(&adm2)], "admin_approvals": 2}),
    )
    .await;
    let admin_id = admin_key["key_id"].as_str().unwrap().to_string();
    let current = admin_key["policy"].clone();
    let to_clients = json!({"clients": [public(&c)]});
    let by =
        |k: &ed25519_dalek::SigningKey| change_approval(k, &admin_id, &current, 0, &to_clients);
    assert_refused(
        "one of two admins",
        change_policy(a, &admin_id, &to_clients, vec![by(&adm1)]).await,
        "too_few_approvals",
    );
    assert_refused(
        "a stranger as admin",
        change_policy(a, &admin_id, &to_clients, vec![by(&adm1), by(&attacker)]).await,
        "unlisted_client",
    );
    assert_refused_by(
        "one of two admins through a rogue coordinator",
        change_policy(rogue, &admin_id, &to_clients, vec![by(&adm1)]).await,
        "too_few_approvals",
        &[a, b],
    );
    let (status, body) = change_policy(b, &admin_id, &to_clients, vec![by(&adm1), by(&adm2)]).await;
    assert_eq!(status, 200, "{body}");
    for node in [a, b, rogue] {
        assert_eq!(
            policy_on(node, &admin_id).await["clients"],
            json!([public(&c)]),
            "{}",
            node.name
        );
    }
    assert_refused(
        "an open request after the change",
        sign_with(a, &admin_id, b"m", vec![]).await,
        "too_few_approvals",
    );

    // A key file without a policy (written before policies existed) on every holder.
    let legacy = create_key("ed25519", a, 2, &all).await;
    let legacy_id = legacy["key_id"].as_str().unwrap().to_string();
    drop(nodes);
    let key_file = |name: &str| {
        dir.path()
            .join(format!("data-{name}/keys/{legacy_id}.key.json"))
    };
    for name in names {
        let path = key_file(name);
        let mut file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(file.as_object_mut().unwrap().remove("policy").is_some());
        std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    }
    let nodes = start_cluster(dir.path(), &names, env_of).await;
    let (a, rogue) = (&nodes[0], &nodes[2]);
    for node in &nodes {
        assert_eq!(
            policy_on(node, &legacy_id).await,
            json!({"open": true, "legacy": true})
        );
        assert_eq!(
            metric_sum(node, "p2p_mpc_legacy_open_keys", &[]).await,
            1.0,
            "{}",
            node.name
        );
        assert!(
            node.stderr_lines()
                .iter()
                .any(|l| l.contains("legacy-open") && l.contains(&legacy_id)),
            "{} warns at start",
            node.name
        );
    }
    assert_refused(
        "changing a legacy key",
        change_policy(a, &legacy_id, &seize, vec![]).await,
        "legacy_open",
    );
    assert_refused_by(
        "changing a legacy key through a rogue coordinator",
        change_policy(rogue, &legacy_id, &seize, vec![]).await,
        "legacy_open",
        &[&nodes[0], &nodes[1]],
    );
    let (status, body) = sign(a, &legacy_id, b"still signs for any caller").await;
    assert_eq!(status, 200, "{body}");

    // Converted offline on every holder: open, changeable by one admin.
    drop(nodes);
    let admin = client_key();
    for name in names {
        let out = std::process::Command::new(common::bin())
            .args([
                "keys",
                "convert-legacy",
                &legacy_id,
                "--admin",
                &public(&admin),
            ])
            .arg("--data-dir")
            .arg(dir.path().join(format!("data-{name}")))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("changeable by 1 of 1 admins"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A second conversion is refused: the key has a policy now.
    let out = std::process::Command::new(common::bin())
        .args(["keys", "convert-legacy", &legacy_id, "--data-dir"])
        .arg(dir.path().join("data-a"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has a signing policy already"),
        "{out:?}"
    );
    let nodes = start_cluster(dir.path(), &names, env_of).await;
    let a = &nodes[0];
    assert_eq!(metric_sum(a, "p2p_mpc_legacy_open_keys", &[]).await, 0.0);
    let converted = policy_on(a, &legacy_id).await;
    let approval = change_approval(&admin, &legacy_id, &converted, 0, &seize);
    let (status, body) = change_policy(a, &legacy_id, &seize, vec![approval]).await;
    assert_eq!(status, 200, "the admin may change it now: {body}");
}

/// The lines of a nonce log (`P2P_MPC_TEST_NONCE_LOG`): one per nonce a node signed with.
fn nonce_log(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Signatures `range` of `key_id` through `node` (messages `presigned {i}`), each one a 200,
/// added to `signed`.
async fn sign_many(
    node: &NodeProcess,
    key_id: &str,
    range: std::ops::Range<usize>,
    signed: &mut Vec<(Vec<u8>, String)>,
) {
    for i in range {
        let message = format!("presigned {i}").into_bytes();
        let (status, body) = sign(node, key_id, &message).await;
        assert_eq!(status, 200, "signature {i}: {body}");
        signed.push((message, body["signature"].as_str().unwrap().to_string()));
    }
}

/// How many signatures `node` coordinated in one round trip.
async fn presigned_count(node: &NodeProcess) -> f64 {
    node.metric("p2p_mpc_signatures_total", &[("path", "presigned")])
        .await
}

/// Waits until `node` has no connection to `peer` any more.
async fn wait_disconnected(node: &NodeProcess, peer: &str) {
    wait_for(
        &format!("{} to notice {peer} is gone", node.name),
        Duration::from_secs(30),
        || async {
            let peers = node.connected_peer_ids().await?;
            if peers.iter().any(|p| p == peer) {
                Err(format!("{peers:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await
}

/// Presigned signing: 1,000 signatures of a 2-of-3 key, one holder killed (-9) and
/// restarted in the middle. Every signature verifies (ed25519-dalek and Python
/// `cryptography`), most take one round trip, and no nonce ever signs twice: every node
/// records the commitments of each nonce it signs with, and no line repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_presigned_signatures_across_a_restart_never_reuse_a_nonce() {
    let dir = tempdir();
    let log = dir.path().join("nonces.log");
    let log_env: &'static str = Box::leak(log.to_str().unwrap().to_string().into_boxed_str());
    let env = move |_: &str| vec![("P2P_MPC_TEST_NONCE_LOG", log_env)];
    let mut nodes = start_cluster(dir.path(), &["p0", "p1", "p2"], env).await;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let key = create_key("ed25519", &nodes[0], 2, &all).await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let mut signed: Vec<(Vec<u8>, String)> = Vec::new();
    sign_many(&nodes[0], &key_id, 0..400, &mut signed).await;
    let before = presigned_count(&nodes[0]).await;
    assert!(before >= 300.0, "{before} of 400 presigned");
    assert!(
        metric_sum(&nodes[0], "p2p_mpc_presignatures", &[("key_id", &key_id)]).await > 0.0,
        "the pool is refilled"
    );

    // p2 dies: its nonces die with it, and p0 drops its commitments once it notices.
    let dead = nodes[2].peer_id.clone();
    nodes[2].kill();
    wait_disconnected(&nodes[0], &dead).await;
    sign_many(&nodes[0], &key_id, 400..500, &mut signed).await;
    let restarted = start_node(dir.path(), "p2", &nodes[..2], &env("p2")).await;
    assert_eq!(restarted.peer_id, dead);
    for n in &nodes[..2] {
        restarted
            .wait_connected_to(&n.peer_id, Duration::from_secs(30))
            .await;
    }
    nodes[2] = restarted;
    sign_many(&nodes[0], &key_id, 500..900, &mut signed).await;
    // The restarted holder coordinates too: its pools start empty.
    sign_many(&nodes[2], &key_id, 900..1000, &mut signed).await;
    let after = presigned_count(&nodes[0]).await + presigned_count(&nodes[2]).await;
    println!(
        "{after} of 1000 signatures presigned; two rounds: {}",
        1000.0 - after
    );
    assert!(after >= 800.0, "{after} of 1000 presigned");

    common::verify_ed25519_many(key["public_key"].as_str().unwrap(), &signed);
    // Every signature is two nonces (the coordinator's and one holder's), each recorded
    // once; a line seen twice would be a nonce that signed twice.
    let lines = nonce_log(&log);
    assert_eq!(lines.len(), 2000, "two nonces per signature");
    let distinct: std::collections::HashSet<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(distinct.len(), lines.len(), "a nonce signed twice");
}

/// A presigned request is still checked by every holder before its nonce signs: a
/// compromised holder that skips its own checks holds presignatures (made for it after an
/// authorized signature), and asks the honest holders to sign with them without an
/// authorization, and with one they already used: refused. (3-of-3, so that every holder
/// saw every request id: each holder keeps its own record of used ids.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_requests_pass_every_holders_checks() {
    let dir = tempdir();
    let names = ["a", "b", "rogue"];
    let nodes = start_cluster(dir.path(), &names, rogue_skips_its_checks).await;
    let (a, b, rogue) = (&nodes[0], &nodes[1], &nodes[2]);
    let client = client_key();
    let policy = json!({"clients": [public(&client)], "approvals": 1});
    let key = create_key_with("ed25519", a, 3, &[a, b, rogue], policy).await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    // Authorized signatures through the rogue: the first takes two rounds and fills its
    // pools; the next ones are presigned.
    let mut used = Vec::new();
    for i in 0..4 {
        let msg = format!("authorized {i}").into_bytes();
        let a1 = auth(&client, rogue, &key_id, &msg, 60);
        let (status, body) = sign_with(rogue, &key_id, &msg, vec![a1.clone()]).await;
        assert_eq!(status, 200, "{body}");
        verify_everywhere(&key, &msg, body["signature"].as_str().unwrap());
        used.push((msg, a1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let presigned_before = presigned_count(rogue).await;
    assert!(presigned_before >= 1.0, "the rogue signed presigned");

    let msg = b"pay mallory".to_vec();
    let (old_msg, old_auth) = used.pop().unwrap();
    let pool = async || metric_sum(rogue, "p2p_mpc_presignatures", &[("key_id", &key_id)]).await;
    for (what, message, auths, rule) in [
        ("no authorization", msg.clone(), vec![], "too_few_approvals"),
        ("a used authorization", old_msg, vec![old_auth], "replayed"),
    ] {
        // An authorized signature first: its refill gives the rogue presignatures of both
        // honest holders (more than one holder's pool of 16).
        let fill = format!("fill before {what}").into_bytes();
        let fill_auth = auth(&client, rogue, &key_id, &fill, 60);
        let (status, body) = sign_with(rogue, &key_id, &fill, vec![fill_auth]).await;
        assert_eq!(status, 200, "{body}");
        wait_for(
            "the rogue's pools to refill",
            Duration::from_secs(20),
            || async {
                let held = pool().await;
                if held > 16.0 {
                    Ok(())
                } else {
                    Err(held.to_string())
                }
            },
        )
        .await;
        let presigned_before = presigned_count(rogue).await;
        let answer = sign_with(rogue, &key_id, &message, auths).await;
        assert!(answer.1["signature"].is_null(), "{what}: {}", answer.1);
        assert_refused_by(what, answer, rule, &[a, b]);
        // Both refused the presigned request itself: the rogue forgot both pools (and
        // invites neither again in two rounds).
        assert_eq!(
            pool().await,
            0.0,
            "{what}: presigned request refused by both"
        );
        assert_eq!(
            presigned_count(rogue).await,
            presigned_before,
            "{what}: no presigned signature"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for honest in [a, b] {
        assert!(
            metric_sum(
                honest,
                "p2p_mpc_sign_authorizations_total",
                &[("outcome", "too_few_approvals")]
            )
            .await
                + metric_sum(
                    honest,
                    "p2p_mpc_sign_authorizations_total",
                    &[("outcome", "replayed")]
                )
                .await
                >= 1.0,
            "{} refused",
            honest.name
        );
    }
    // An authorized request still signs afterwards.
    let a1 = auth(&client, rogue, &key_id, &msg, 60);
    let (status, body) = sign_with(rogue, &key_id, &msg, vec![a1]).await;
    assert_eq!(status, 200, "{body}");
    verify_everywhere(&key, &msg, body["signature"].as_str().unwrap());
}

/// A holder that no longer has the presignature a request names (here: one that drops its
/// nonces as soon as it made them) refuses it before reserving anything, so the
/// coordinator goes on in two rounds with that same holder: a 2-of-2 key still signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_without_the_presignature_still_signs_in_two_rounds() {
    let dir = tempdir();
    let nodes = start_cluster(dir.path(), &["a", "forgetful"], |name| {
        if name == "forgetful" {
            vec![("P2P_MPC_TEST_FAULT", "forget-presignatures")]
        } else {
            vec![]
        }
    })
    .await;
    let (a, forgetful) = (&nodes[0], &nodes[1]);
    let key = create_key("ed25519", a, 2, &[a, forgetful]).await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let two_round = async || {
        a.metric("p2p_mpc_signatures_total", &[("path", "two_round")])
            .await
    };
    for i in 0..3 {
        let msg = format!("message {i}").into_bytes();
        let (status, body) = sign(a, &key_id, &msg).await;
        assert_eq!(status, 200, "{body}");
        assert!(signers(&body).contains(&forgetful.peer_id), "{body}");
        verify_everywhere(&key, &msg, body["signature"].as_str().unwrap());
        // The refill after it gives the coordinator presignatures the holder dropped.
        wait_for("a's pool to refill", Duration::from_secs(20), || async {
            let held = metric_sum(a, "p2p_mpc_presignatures", &[("key_id", key_id.as_str())]).await;
            if held > 0.0 {
                Ok(())
            } else {
                Err(held.to_string())
            }
        })
        .await;
    }
    assert_eq!(
        two_round().await,
        3.0,
        "every signature fell back to two rounds"
    );
    assert_eq!(presigned_count(a).await, 0.0);
}

// ---- Membership change: refresh and reshare ----

/// An approval by `client` of moving `key_id` to `holders` as generation `generation`.
fn reshare_approval(
    client: &ed25519_dalek::SigningKey,
    key_id: &str,
    generation: u64,
    holders: &[&NodeProcess],
) -> Value {
    use p2p_mpc_node::mpc::policy;
    let peers: Vec<libp2p::PeerId> = holders.iter().map(|n| n.peer_id.parse().unwrap()).collect();
    let what = policy::Approves::Reshare {
        generation,
        holders: policy::holders_digest(&peers),
    };
    serde_json::to_value(policy::approve(client, key_id, what, policy::now() + 60)).unwrap()
}

async fn reshare(
    node: &NodeProcess,
    key_id: &str,
    holders: &[&NodeProcess],
    authorizations: Vec<Value>,
) -> (u16, Value) {
    let ids: Vec<&str> = holders.iter().map(|n| n.peer_id.as_str()).collect();
    post(
        node,
        &format!("/v1/keys/{key_id}/reshare"),
        json!({ "holders": ids, "authorizations": authorizations }),
    )
    .await
}

/// Waits until `node` shows `key_id` at `generation` held by exactly `holders`.
async fn wait_generation(
    node: &NodeProcess,
    key_id: &str,
    generation: u64,
    holders: &[&NodeProcess],
) -> Value {
    let mut expected: Vec<String> = holders.iter().map(|n| n.peer_id.clone()).collect();
    expected.sort();
    wait_for(
        &format!("{} to hold generation {generation} of {key_id}", node.name),
        Duration::from_secs(60),
        || async {
            let key = node.get(&format!("/v1/keys/{key_id}")).await?;
            let participants: Vec<String> = key["participants"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(String::from))
                .collect();
            if key["generation"] == generation && participants == expected {
                Ok(key)
            } else {
                Err(key.to_string())
            }
        },
    )
    .await
}

/// Signs `message` through `node` with `client`'s authorization and checks the signature
/// under `key` (its public key, unchanged by every reshare) with code that shares nothing
/// with ours; returns the signers.
async fn sign_and_verify(
    node: &NodeProcess,
    key: &Value,
    client: &ed25519_dalek::SigningKey,
    message: &[u8],
) -> Vec<String> {
    let key_id = key["key_id"].as_str().unwrap();
    let (status, body) = sign_with(
        node,
        key_id,
        message,
        vec![auth(client, node, key_id, message, 60)],
    )
    .await;
    assert_eq!(status, 200, "signing through {}: {body}", node.name);
    verify_everywhere(key, message, body["signature"].as_str().unwrap());
    signers(&body)
}

/// [`sign_and_verify`], retried while the holders settle on one generation (409).
async fn sign_eventually(
    node: &NodeProcess,
    key: &Value,
    client: &ed25519_dalek::SigningKey,
    message: &[u8],
) {
    let key_id = key["key_id"].as_str().unwrap();
    let body = wait_for(
        &format!("a signature through {}", node.name),
        Duration::from_secs(60),
        || async {
            let (status, body) = sign_with(
                node,
                key_id,
                message,
                vec![auth(client, node, key_id, message, 60)],
            )
            .await;
            match status {
                200 => Ok(body),
                409 => Err(body.to_string()),
                _ => panic!("signing through {}: {status} {body}", node.name),
            }
        },
    )
    .await;
    verify_everywhere(key, message, body["signature"].as_str().unwrap());
}

fn key_files(dir: &Path, name: &str) -> Vec<String> {
    common::files_ending(&dir.join(format!("data-{name}/keys")), ".key.json")
}

/// A 2-of-3 key grows to 5 holders (3 old, 2 new) and then moves to 3 holders that drop two
/// old ones; the group key never changes, signers mixing old and new holders sign, the
/// dropped holders delete their shares, and a dropped holder that kept its old share cannot
/// sign with the new holders. Each step needs the clients' approval, checked by every holder.
async fn a_key_grows_to_new_holders_and_moves_away_from_dropped_ones(scheme: &str) {
    let dir = tempdir();
    let names = ["a", "b", "c", "d", "e"];
    let mut nodes = start_cluster(dir.path(), &names, |_| vec![]).await;
    let client = client_key();
    let policy = json!({ "clients": [public(&client)] });
    let key = {
        let first: Vec<&NodeProcess> = nodes[..3].iter().collect();
        create_key_with(scheme, &nodes[0], 2, &first, policy).await
    };
    let key_id = key["key_id"].as_str().unwrap().to_string();
    assert_eq!(key["generation"], 0, "{key}");
    let all: Vec<&NodeProcess> = nodes.iter().collect();

    // Without the clients' approval, with a signing authorization in its place, or with an
    // approval of another holder set: refused, and nothing changes.
    assert_refused(
        "no approval",
        reshare(all[0], &key_id, &all, vec![]).await,
        "too_few_approvals",
    );
    let signing = auth(&client, all[0], &key_id, b"move", 60);
    assert_refused(
        "a signing authorization",
        reshare(all[0], &key_id, &all, vec![signing]).await,
        "malformed",
    );
    let other_set = reshare_approval(&client, &key_id, 1, &all[..4]);
    assert_refused(
        "an approval of another holder set",
        reshare(all[0], &key_id, &all, vec![other_set]).await,
        "invalid_signature",
    );
    let stale = reshare_approval(&client, &key_id, 2, &all);
    assert_refused(
        "an approval of another generation",
        reshare(all[0], &key_id, &all, vec![stale]).await,
        "invalid_signature",
    );
    for n in &nodes[3..] {
        assert_eq!(key_count(n).await, 0, "{} got nothing", n.name);
    }

    // 2-of-3 → 2-of-5.
    let approval = reshare_approval(&client, &key_id, 1, &all);
    let (status, grown) = reshare(all[0], &key_id, &all, vec![approval.clone()]).await;
    assert_eq!(status, 200, "{grown}");
    assert_eq!(grown["generation"], 1, "{grown}");
    assert_eq!(grown["public_key"], key["public_key"], "same group key");
    for n in &all {
        let shown = wait_generation(n, &key_id, 1, &all).await;
        assert_eq!(shown["public_key"], key["public_key"], "{}", n.name);
        assert_eq!(shown["policy"], key["policy"], "{}", n.name);
    }
    // The same approval again: it approves generation 1, which exists now.
    assert_refused(
        "a replayed approval",
        reshare(all[0], &key_id, &all, vec![approval]).await,
        "invalid_signature",
    );
    let signed = sign_and_verify(&nodes[3], &key, &client, b"by the new holder d").await;
    assert!(signed.contains(&nodes[3].peer_id), "{signed:?}");

    // Only a (old) and d (new) alive: they sign together.
    for i in [1, 2, 4] {
        nodes[i].kill();
    }
    let mut pair = sign_and_verify(&nodes[0], &key, &client, b"old a with new d").await;
    pair.sort();
    let mut expected = vec![nodes[0].peer_id.clone(), nodes[3].peer_id.clone()];
    expected.sort();
    assert_eq!(pair, expected);
    for (i, name) in [(1, "b"), (2, "c"), (4, "e")] {
        let node = start_node(dir.path(), name, &nodes[..1], &[]).await;
        nodes[i] = node;
    }
    for n in &nodes {
        for other in &nodes {
            if other.peer_id != n.peer_id {
                n.wait_connected_to(&other.peer_id, Duration::from_secs(30))
                    .await;
                wait_identified(n, &other.peer_id).await;
            }
        }
    }

    // 2-of-5 → 2-of-3 on c, d, e: a and b are dropped. Keep a's generation-1 file, as a
    // dropped holder that does not delete its share would.
    let kept_file = dir.path().join("a-generation-1.key.json");
    std::fs::copy(
        dir.path().join(format!("data-a/keys/{key_id}.key.json")),
        &kept_file,
    )
    .unwrap();
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let remaining: Vec<&NodeProcess> = nodes[2..].iter().collect();
    let approval = reshare_approval(&client, &key_id, 2, &remaining);
    let (status, moved) = reshare(all[2], &key_id, &remaining, vec![approval]).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["generation"], 2, "{moved}");
    for n in &remaining {
        wait_generation(n, &key_id, 2, &remaining).await;
    }
    for n in &nodes[..2] {
        wait_for(
            &format!("{} to drop its share", n.name),
            Duration::from_secs(30),
            || async {
                let files = key_files(dir.path(), &n.name);
                if key_count(n).await == 0 && files.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{files:?}"))
                }
            },
        )
        .await;
    }
    let signed = sign_and_verify(&nodes[4], &key, &client, b"after the move").await;
    assert!(!signed.contains(&nodes[0].peer_id) && !signed.contains(&nodes[1].peer_id));

    // a with its old share back: the new holders do not count it a holder any more and
    // refuse to sign with it.
    nodes[0].kill();
    std::fs::copy(
        &kept_file,
        dir.path().join(format!("data-a/keys/{key_id}.key.json")),
    )
    .unwrap();
    let a = start_node(dir.path(), "a", &nodes[2..3], &[]).await;
    for n in &nodes[2..] {
        a.wait_connected_to(&n.peer_id, Duration::from_secs(30))
            .await;
        wait_identified(&a, &n.peer_id).await;
    }
    assert_eq!(
        a.get(&format!("/v1/keys/{key_id}")).await.unwrap()["generation"],
        1
    );
    let message = b"a's old share";
    let (status, body) = sign_with(
        &a,
        &key_id,
        message,
        vec![auth(&client, &a, &key_id, message, 60)],
    )
    .await;
    assert_ne!(
        status, 200,
        "a dropped holder signed with the new holders: {body}"
    );
    assert!(body["signature"].is_null(), "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    for n in &nodes[2..] {
        let refusal = format!(
            "peer {} refused the message: peer {} does not hold a share",
            n.peer_id, a.peer_id
        );
        assert!(error.contains(&refusal), "{} refuses a: {error}", n.name);
    }
}

/// Reads a node's generation of `key_id` (none when it holds no share).
async fn generation_on(node: &NodeProcess, key_id: &str) -> Option<u64> {
    node.get(&format!("/v1/keys/{key_id}")).await.ok()?["generation"].as_u64()
}

/// Waits until every node holds `key_id` at one generation; returns it.
async fn one_generation(nodes: &[NodeProcess], key_id: &str) -> u64 {
    wait_for(
        "every holder at one generation",
        Duration::from_secs(60),
        || async {
            let mut seen = Vec::new();
            for n in nodes {
                seen.push(generation_on(n, key_id).await);
            }
            match seen[..] {
                [Some(g), ..] if seen.iter().all(|s| *s == Some(g)) => Ok(g),
                _ => Err(format!("{seen:?}")),
            }
        },
    )
    .await
}

/// A holder killed at several points of a refresh (by timed kill -9, and by exiting just
/// before and just after it staged its new share): afterwards every holder has one
/// generation active, each signs, and a new refresh succeeds.
async fn kill_9_during_a_reshare_leaves_one_generation_and_a_new_one_succeeds(scheme: &str) {
    let dir = tempdir();
    let mut nodes = start_cluster(dir.path(), &["p0", "p1", "victim"], |_| vec![]).await;
    let client = client_key();
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let key = create_key_with(
        scheme,
        &nodes[0],
        2,
        &all,
        json!({ "clients": [public(&client)] }),
    )
    .await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let points: [(&str, u64); 6] = [
        ("crash-before-reshare-stage", 0),
        ("crash-after-reshare-stage", 0),
        ("", 0),
        ("", 5),
        ("", 20),
        ("", 60),
    ];
    for (round, (fault, delay_ms)) in points.into_iter().enumerate() {
        let generation = one_generation(&nodes, &key_id).await;
        if !fault.is_empty() {
            nodes[2].kill();
            let env = [("P2P_MPC_TEST_FAULT", fault)];
            nodes[2] = start_node(dir.path(), "victim", &nodes[..1], &env).await;
            for n in &nodes[..2] {
                nodes[2]
                    .wait_connected_to(&n.peer_id, Duration::from_secs(30))
                    .await;
                wait_identified(n, &nodes[2].peer_id).await;
            }
        }
        let holders: Vec<&NodeProcess> = nodes.iter().collect();
        let approval = reshare_approval(&client, &key_id, generation + 1, &holders);
        let path = format!("/v1/keys/{key_id}/refresh");
        let request = post(&nodes[0], &path, json!({ "authorizations": [approval] }));
        let kill = async {
            if fault.is_empty() {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let pid = nodes[2].pid();
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        };
        let ((status, body), ()) = tokio::join!(request, kill);
        eprintln!(
            "round {round} ({fault} {delay_ms} ms): {status} {}",
            body["error"].as_str().unwrap_or("(refreshed)")
        );
        assert!(
            matches!(status, 200 | 400 | 502),
            "round {round}: {status} {body}"
        );
        nodes[2].kill();
        let restarted = start_node(dir.path(), "victim", &nodes[..2], &[]).await;
        for n in &nodes[..2] {
            restarted
                .wait_connected_to(&n.peer_id, Duration::from_secs(30))
                .await;
            wait_identified(n, &restarted.peer_id).await;
        }
        nodes[2] = restarted;
        let after = one_generation(&nodes, &key_id).await;
        assert!(
            after == generation || after == generation + 1,
            "round {round}: generation {after} after {generation}"
        );
        // Each holder signs (a holder that finishes activating a staged generation may
        // refuse for a moment with generation_mismatch).
        for n in &nodes {
            let message = format!("round {round} through {}", n.name).into_bytes();
            sign_eventually(n, &key, &client, &message).await;
        }
    }
    // A new refresh succeeds and every holder moves to it.
    let generation = one_generation(&nodes, &key_id).await;
    let holders: Vec<&NodeProcess> = nodes.iter().collect();
    // (A participant may still be in a session the last kill cut short: 409 until it ends.)
    wait_for(
        "a refresh after the storm",
        Duration::from_secs(60),
        || async {
            let approval = reshare_approval(&client, &key_id, generation + 1, &holders);
            let (status, body) = post(
                &nodes[1],
                &format!("/v1/keys/{key_id}/refresh"),
                json!({ "authorizations": [approval] }),
            )
            .await;
            match status {
                200 => Ok(()),
                409 | 502 => Err(body.to_string()),
                _ => panic!("refresh after the storm: {status} {body}"),
            }
        },
    )
    .await;
    assert_eq!(one_generation(&nodes, &key_id).await, generation + 1);
    sign_and_verify(&nodes[2], &key, &client, b"after the storm").await;
    // A staged generation that no crash round could settle (the victim never staged it, one
    // signed abort is not enough to discard it) was replaced: nothing is left staged.
    for n in &nodes {
        wait_for(
            &format!("{} to have nothing staged", n.name),
            Duration::from_secs(30),
            || async {
                let staged = common::files_ending(
                    &dir.path().join(format!("data-{}/keys", n.name)),
                    ".next.json",
                );
                if staged.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{staged:?}"))
                }
            },
        )
        .await;
    }
}
