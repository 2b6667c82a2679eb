//! Secure aggregation over real node processes on loopback: the sum of many clients' vectors,
//! refusals (too few reports, bad reports), dead and restarted nodes, no plaintext anywhere,
//! and long vectors.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{NodeProcess, args, bin, post, tempdir, wait_for};
use p2p_mpc_node::mpc::aggregation::client::{
    new_report_id, prepare_report, seal_shares, sign_report, verify_task,
};
use p2p_mpc_node::mpc::aggregation::shares::{self, MODULUS};
use p2p_mpc_node::mpc::aggregation::store::TaskInfo;
use serde_json::{Value, json};

const ROUND_TIMEOUT_MS: &str = "5000";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn start_node(dir: &Path, name: &str, bootnodes: &[String]) -> NodeProcess {
    start_node_with_faults(dir, name, bootnodes, "").await
}

async fn start_node_with_faults(
    dir: &Path,
    name: &str,
    bootnodes: &[String],
    faults: &str,
) -> NodeProcess {
    let key = dir.join(format!("{name}.key"));
    let partition = partition_file(dir);
    let mut extra = args(&["--identity-key-path", key.to_str().unwrap()]);
    for b in bootnodes {
        extra.push("--bootnode".into());
        extra.push(b.clone());
    }
    NodeProcess::start_with_env(
        name,
        dir,
        &extra,
        &[
            ("P2P_MPC_TEST_ROUND_TIMEOUT_MS", ROUND_TIMEOUT_MS),
            ("P2P_MPC_TEST_FAULT", faults),
            ("P2P_MPC_TEST_PARTITION_FILE", partition.to_str().unwrap()),
        ],
    )
    .await
}

/// The file that partitions the nodes started under `dir` (none while it is missing): each
/// line a group of peer ids that can exchange MPC messages.
fn partition_file(dir: &Path) -> std::path::PathBuf {
    dir.join("partition")
}

fn partition(dir: &Path, groups: &[&[&NodeProcess]]) {
    let lines: Vec<String> = groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|n| n.peer_id.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    std::fs::write(partition_file(dir), lines.join("\n")).unwrap();
}

fn heal(dir: &Path) {
    std::fs::write(partition_file(dir), "").unwrap();
}

async fn start_cluster(dir: &Path, n: usize) -> Vec<NodeProcess> {
    start_cluster_with_faults(dir, n, "").await
}

async fn start_cluster_with_faults(dir: &Path, n: usize, faults: &str) -> Vec<NodeProcess> {
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for i in 0..n {
        let boots: Vec<String> = nodes.iter().map(|n| n.tcp_addr.clone()).collect();
        nodes.push(start_node_with_faults(dir, &format!("N{i}"), &boots, faults).await);
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

/// `honest` nodes and one more, named `name`, running test fault `fault` (last), all
/// connected.
async fn cluster_with_one_fault(
    dir: &Path,
    honest: usize,
    name: &str,
    fault: &str,
) -> Vec<NodeProcess> {
    let mut nodes = start_cluster(dir, honest).await;
    let boots: Vec<String> = nodes.iter().map(|n| n.tcp_addr.clone()).collect();
    let faulty = start_node_with_faults(dir, name, &boots, fault).await;
    for n in &nodes {
        n.wait_connected_to(&faulty.peer_id, Duration::from_secs(30))
            .await;
    }
    nodes.push(faulty);
    nodes
}

/// Creates a task, retrying while peers are still being identified as MPC peers.
async fn create_task(
    node: &NodeProcess,
    nodes: &[NodeProcess],
    t: u16,
    len: u32,
    min: u64,
) -> TaskInfo {
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let body = wait_for(
        "the task to be created",
        Duration::from_secs(60),
        || async {
            let (status, body) = post(
                node,
                "/v1/aggregations",
                &json!({"participants": ids, "threshold": t, "length": len, "min_reports": min}),
            )
            .await;
            match status {
                201 => Ok(body),
                400 if body["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("not connected") =>
                {
                    Err(body.to_string())
                }
                _ => panic!("task creation failed: {status} {body}"),
            }
        },
    )
    .await;
    serde_json::from_value(body).unwrap()
}

async fn get_task(node: &NodeProcess, task_id: &str) -> Value {
    node.get(&format!("/v1/aggregations/{task_id}"))
        .await
        .unwrap()
}

async fn submit(node: &NodeProcess, task_id: &str, report: &impl serde::Serialize) -> (u16, Value) {
    post(
        node,
        &format!("/v1/aggregations/{task_id}/reports"),
        &serde_json::to_value(report).unwrap(),
    )
    .await
}

async fn collect(node: &NodeProcess, task_id: &str) -> (u16, Value) {
    post(
        node,
        &format!("/v1/aggregations/{task_id}/collect"),
        &json!({}),
    )
    .await
}

async fn collect_batch(node: &NodeProcess, task_id: &str, batch: u64) -> (u16, Value) {
    post(
        node,
        &format!("/v1/aggregations/{task_id}/collect"),
        &json!({ "batch": batch }),
    )
    .await
}

fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    p2p_mpc_testenv::metric_sum(page, name, labels) as u64
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_sum_twenty_clients_refuse_bad_reports_and_survive_dead_nodes() {
    let dir = tempdir();
    let mut nodes = start_cluster(dir.path(), 5).await;
    let (t, len, clients) = (2u16, 1000u32, 20usize);
    let task = create_task(&nodes[0], &nodes, t, len, clients as u64).await;
    let task_id = task.params.task_id.clone();

    // Bad task requests are refused with what is wrong.
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    for (body, needle) in [
        (
            json!({"participants": ids, "threshold": 5, "length": 3, "min_reports": 1}),
            "threshold 5 is out of range",
        ),
        (
            json!({"participants": ids, "threshold": 2, "length": 0, "min_reports": 1}),
            "length 0 is out of range",
        ),
        (
            json!({"participants": ids, "threshold": 2, "length": 3, "min_reports": 1, "modulus": 65537}),
            "modulus 65537 is not supported",
        ),
        (
            json!({"participants": [ids[0], "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"], "threshold": 1, "length": 3, "min_reports": 1}),
            "not connected",
        ),
    ] {
        let (status, answer) = post(&nodes[0], "/v1/aggregations", &body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }

    // Every participant stored the same task, with keys signed by their identities.
    for node in &nodes {
        let view = get_task(node, &task_id).await;
        let info: TaskInfo = serde_json::from_value(view.clone()).unwrap();
        assert_eq!(info, task, "{} holds the same task", node.name);
        verify_task(&info).unwrap();
        assert_eq!(view["reports_here"], 0);
    }

    // Collect before any report: refused, with the count.
    let (status, body) = collect(&nodes[1], &task_id).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "not_enough_reports");
    assert!(
        body["error"].as_str().unwrap().contains("0 reports are in"),
        "{body}"
    );

    // Distinctive private values: 41-bit numbers no log or file would hold by chance.
    let mut rng_state = 0x9e3779b97f4a7c15u64 ^ std::process::id() as u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        (1u64 << 40) + (rng_state % (1u64 << 40))
    };
    let inputs: Vec<Vec<u64>> = (0..clients)
        .map(|_| (0..len).map(|_| next()).collect())
        .collect();
    let expected: Vec<u64> = (0..len as usize)
        .map(|j| inputs.iter().map(|v| v[j]).sum::<u64>() % MODULUS)
        .collect();

    // Half the clients through the library, to different nodes; two through the CLI.
    let mut accepted = Vec::new();
    for (i, values) in inputs.iter().enumerate().take(clients - 2) {
        let report = prepare_report(&task, values).unwrap();
        let (status, body) = submit(&nodes[i % 5], &task_id, &report).await;
        assert_eq!(status, 201, "client {i}: {body}");
        assert_eq!(body["accepted_by"].as_array().unwrap().len(), 5);
        accepted.push(report);
        if i == 9 {
            let (status, body) = collect(&nodes[2], &task_id).await;
            assert_eq!(status, 409, "{body}");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("10 reports are in"),
                "{body}"
            );
        }
    }
    for values in &inputs[clients - 2..] {
        let text: Vec<String> = values.iter().map(u64::to_string).collect();
        let out = Command::new(bin())
            .args([
                "aggregate",
                "submit",
                "--api",
                &nodes[3].api,
                "--task",
                &task_id,
            ])
            .args(["--values", &text.join(","), "--output", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "CLI submit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["accepted_by"].as_array().unwrap().len(), 5);
    }

    // Bad input, each with its own error; none changes the sum.
    let mut wrong_len = vec![1u64; len as usize + 1];
    wrong_len[0] = 2;
    let bad_len = {
        let f = shares::to_field(&wrong_len).unwrap();
        let split = shares::split(&f, 2, 5, &mut rand10::rng()).unwrap();
        let plain: Vec<Vec<u8>> = split.iter().map(|s| shares::encode(s)).collect();
        seal_shares(&task, &new_report_id(), &plain).unwrap()
    };
    let (status, body) = submit(&nodes[0], &task_id, &bad_len).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("wrong_length")),
        "{body}"
    );

    let out_of_field = {
        let mut plain = vec![shares::encode(&shares::to_field(&vec![0; len as usize]).unwrap()); 5];
        for p in plain.iter_mut() {
            p[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        }
        seal_shares(&task, &new_report_id(), &plain).unwrap()
    };
    let (status, body) = submit(&nodes[1], &task_id, &out_of_field).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("value_out_of_field")),
        "{body}"
    );

    let mut bad_ct = prepare_report(&task, &vec![5; len as usize]).unwrap();
    {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut ct = b64.decode(&bad_ct.shares[2].ciphertext).unwrap();
        ct[100] ^= 0x55;
        bad_ct.shares[2].ciphertext = b64.encode(ct);
    }
    let (status, body) = submit(&nodes[2], &task_id, &bad_ct).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_ciphertext")),
        "{body}"
    );
    // An encapsulated key of the wrong size is refused by the node asked, before relay.
    let mut long_enc = prepare_report(&task, &vec![5; len as usize]).unwrap();
    {
        use base64::Engine as _;
        long_enc.shares[1].enc = base64::engine::general_purpose::STANDARD.encode([7u8; 33]);
    }
    let (status, body) = submit(&nodes[2], &task_id, &long_enc).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_ciphertext")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("is 33 bytes"),
        "{body}"
    );

    let (status, body) = submit(&nodes[4], &task_id, &accepted[3]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("duplicate_report")),
        "{body}"
    );

    let (status, body) = submit(&nodes[0], "0123456789abcdef0123456789abcdef", &accepted[0]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_task")),
        "{body}"
    );

    // A report body over the task's largest legal report (here: legal JSON padded with
    // whitespace) is refused with 413 and counted; it is not read past the limit.
    let limit = p2p_mpc_node::api::body::report(5, len);
    let mut padded = serde_json::to_vec(&accepted[0]).unwrap();
    padded.splice(1..1, std::iter::repeat_n(b' ', limit));
    let r = http()
        .post(format!(
            "{}/v1/aggregations/{task_id}/reports",
            nodes[1].api
        ))
        .header("content-type", "application/json")
        .body(padded)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "body_too_large", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("at most {limit} bytes")),
        "{body}"
    );

    let out = Command::new(bin())
        .args([
            "aggregate",
            "submit",
            "--api",
            &nodes[0].api,
            "--task",
            &task_id,
        ])
        .args(["--values", &format!("{MODULUS}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("outside the field") || stderr.contains("takes vectors"),
        "{stderr}"
    );

    // The refusals are counted.
    let mut counted = std::collections::BTreeMap::new();
    for node in &nodes {
        let page = node.metrics_page().await;
        for outcome in [
            "accepted",
            "wrong_length",
            "value_out_of_field",
            "bad_ciphertext",
            "duplicate_report",
            "unknown_task",
        ] {
            *counted.entry(outcome).or_insert(0) += metric(
                &page,
                "p2p_mpc_aggregation_reports_total",
                &[("outcome", outcome)],
            );
        }
    }
    assert_eq!(counted["accepted"], clients as u64, "{counted:?}");
    for (outcome, count) in [
        ("wrong_length", 1),
        ("value_out_of_field", 1),
        ("bad_ciphertext", 2),
        ("duplicate_report", 1),
        ("unknown_task", 1),
    ] {
        assert_eq!(counted[outcome], count, "{outcome}: {counted:?}");
    }
    for node in &nodes {
        assert_eq!(
            get_task(node, &task_id).await["reports_here"],
            clients as u64,
            "{}",
            node.name
        );
    }

    // Two nodes die after accepting every report: t + 1 = 3 remain, but a set is opened
    // only once ⌈(n + t + 1) / 2⌉ = 4 participants voted for it, so nothing is opened and
    // no vote is spent.
    nodes[3].kill();
    nodes[4].kill();
    let (status, body) = collect(&nodes[1], &task_id).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("not_enough_participants")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("only 3 of 5 participants answered; opening batch 0 needs 4"),
        "{body}"
    );
    // One comes back (its reports and state kept): four vote and the batch opens.
    let boots: Vec<String> = nodes[..3].iter().map(|n| n.tcp_addr.clone()).collect();
    nodes[3] = start_node(dir.path(), "N3", &boots).await;
    for node in &nodes[..3] {
        node.wait_connected_to(&nodes[3].peer_id, Duration::from_secs(30))
            .await;
    }
    let start = Instant::now();
    let (status, body) = collect(&nodes[1], &task_id).await;
    assert_eq!(status, 200, "{body}");
    let sum: Vec<u64> = serde_json::from_value(body["sum"].clone()).unwrap();
    assert_eq!(body["reports"], clients as u64);
    assert_eq!(body["batch"], 0);
    assert_eq!(sum, expected, "the collected sum equals the plaintext sum");
    eprintln!("collect with 1 dead node took {:?}", start.elapsed());

    // Collect through the CLI too (same report set: allowed again).
    let out = Command::new(bin())
        .args([
            "aggregate",
            "collect",
            "--api",
            &nodes[0].api,
            "--task",
            &task_id,
            "--batch",
            "0",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["sum"], body["sum"]);

    // Once a batch is opened, reports go to the next one, which opens on its own at
    // min_reports.
    let late = prepare_report(&task, &inputs[0]).unwrap();
    let (status, body) = submit(&nodes[0], &task_id, &late).await;
    assert_eq!(status, 201, "{body}");
    for node in &nodes[..4] {
        let view = get_task(node, &task_id).await;
        assert_eq!(view["current_batch"], 1, "{}: {view}", node.name);
        assert_eq!(view["reports_in_current_batch"], 1, "{}: {view}", node.name);
    }
    let (status, body) = collect(&nodes[2], &task_id).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("not_enough_reports")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("1 reports are in batch 1"),
        "{body}"
    );

    // Every aggregation protocol ran as sessions of the session layer.
    let page = nodes[0].metrics_page().await;
    for protocol in ["agg_create", "agg_report", "agg_collect"] {
        assert!(
            metric(
                &page,
                "p2p_mpc_mpc_sessions_completed_total",
                &[("protocol", protocol)]
            ) > 0,
            "{protocol} sessions completed"
        );
    }

    // The restarted node still holds its accepted reports.
    let boots = vec![nodes[0].tcp_addr.clone()];
    let restarted = start_node(dir.path(), "N4", &boots).await;
    assert_eq!(
        get_task(&restarted, &task_id).await["current_batch"],
        0,
        "N4 missed the collect"
    );
    assert_eq!(
        get_task(&restarted, &task_id).await["reports_here"],
        clients as u64
    );

    // No plaintext input anywhere: not in any data dir, log line or API answer.
    let needles: Vec<u64> = inputs
        .iter()
        .map(|v| v[7])
        .chain(inputs.iter().map(|v| v[len as usize - 1]))
        .collect();
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for f in files_under(dir.path()) {
        haystacks.push((
            f.display().to_string(),
            std::fs::read(&f).unwrap_or_default(),
        ));
    }
    for node in nodes.iter().chain(std::iter::once(&restarted)) {
        haystacks.push((
            format!("{} stderr", node.name),
            node.stderr_lines().join("\n").into_bytes(),
        ));
        haystacks.push((
            format!("{} stdout", node.name),
            node.stdout_lines().join("\n").into_bytes(),
        ));
    }
    for node in &nodes[..3] {
        haystacks.push((
            format!("{} GET task", node.name),
            get_task(node, &task_id).await.to_string().into_bytes(),
        ));
        haystacks.push((
            format!("{} metrics", node.name),
            node.metrics_page().await.into_bytes(),
        ));
    }
    for needle in &needles {
        let text = needle.to_string();
        let le = needle.to_le_bytes();
        for (name, hay) in &haystacks {
            assert!(
                !hay.windows(text.len()).any(|w| w == text.as_bytes()),
                "{name} holds a plaintext input value {text}"
            );
            assert!(
                !hay.windows(8).any(|w| w == le),
                "{name} holds a plaintext input value {text} as bytes"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_values_from_three_clients() {
    let dir = tempdir();
    let nodes = start_cluster(dir.path(), 3).await;
    let len = 1_000_000u32;
    let task = create_task(&nodes[0], &nodes, 1, len, 3).await;
    let task_id = task.params.task_id.clone();
    let start = Instant::now();
    let mut expected = vec![0u64; len as usize];
    for c in 0..3u64 {
        for (i, e) in expected.iter_mut().enumerate() {
            *e += i as u64 * 3 + c;
        }
    }
    // The three clients prepare and submit at once, each to a different node.
    let mut clients = Vec::new();
    for c in 0..3u64 {
        let task = task.clone();
        let task_id = task_id.clone();
        let (api, name) = (
            nodes[c as usize].api.clone(),
            nodes[c as usize].name.clone(),
        );
        clients.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let report = tokio::task::spawn_blocking(move || {
                let values: Vec<u64> = (0..len as u64).map(|i| i * 3 + c).collect();
                prepare_report(&task, &values).unwrap()
            })
            .await
            .unwrap();
            let prepared = t0.elapsed();
            let resp = http()
                .post(format!("{api}/v1/aggregations/{task_id}/reports"))
                .json(&report)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{name} answers: {e}"));
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 201, "client {c}: {body}");
            eprintln!(
                "client {c}: prepared in {prepared:?}, accepted after {:?}",
                t0.elapsed()
            );
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let t0 = Instant::now();
    let (status, body) = collect(&nodes[2], &task_id).await;
    assert_eq!(
        status,
        200,
        "{}",
        body.to_string().chars().take(500).collect::<String>()
    );
    eprintln!(
        "collect took {:?}; total {:?}",
        t0.elapsed(),
        start.elapsed()
    );
    let sum: Vec<u64> = serde_json::from_value(body["sum"].clone()).unwrap();
    assert_eq!(body["reports"], 3);
    assert!(sum == expected, "the sum of a million values matches");
}

/// Unsealed shares (the benchmarks' plaintext baseline) are refused by normal nodes, and
/// summed correctly only by nodes started with the test-only `plaintext-shares` fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsealed_shares_only_with_the_test_fault() {
    use p2p_mpc_node::mpc::aggregation::client::unsealed_report_for_tests;
    let dir = tempdir();
    let (normal_dir, faulty_dir) = (dir.path().join("normal"), dir.path().join("faulty"));
    std::fs::create_dir_all(&normal_dir).unwrap();
    std::fs::create_dir_all(&faulty_dir).unwrap();
    let normal = start_cluster(&normal_dir, 3).await;
    let task = create_task(&normal[0], &normal, 1, 4, 1).await;
    let report = unsealed_report_for_tests(&task, &[1, 2, 3, 4]).unwrap();
    let (status, body) = submit(&normal[1], &task.params.task_id, &report).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "bad_ciphertext", "{body}");
    drop(normal);

    let faulty = start_cluster_with_faults(&faulty_dir, 3, "plaintext-shares").await;
    assert!(
        faulty[0]
            .stderr_lines()
            .iter()
            .any(|l| l.contains("TEST FAULTS ARE ON")),
        "the node warns that it runs with a test fault"
    );
    let task = create_task(&faulty[0], &faulty, 1, 4, 2).await;
    let task_id = &task.params.task_id;
    for (i, values) in [[1u64, 2, 3, 4], [10, 20, 30, MODULUS - 1]]
        .iter()
        .enumerate()
    {
        let report = unsealed_report_for_tests(&task, values).unwrap();
        let (status, body) = submit(&faulty[i + 1], task_id, &report).await;
        assert_eq!(status, 201, "{body}");
    }
    // A sealed report still works beside them.
    let sealed = prepare_report(&task, &[100, 100, 100, 100]).unwrap();
    let (status, body) = submit(&faulty[0], task_id, &sealed).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = collect(&faulty[2], task_id).await;
    assert_eq!(status, 200, "{body}");
    let sum: Vec<u64> = serde_json::from_value(body["sum"].clone()).unwrap();
    assert_eq!(sum, vec![111, 122, 133, 103]);
}

/// Reports posted at once to one node go out in batches; each is judged on its own (a bad
/// one in a batch is refused with its reason, the others are taken) and the sum is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reports_are_batched_and_judged_one_by_one() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = tempdir();
    let nodes = start_cluster(dir.path(), 3).await;
    let task = create_task(&nodes[0], &nodes, 1, 3, 1).await;
    let task_id = task.params.task_id.clone();
    let good: Vec<_> = (0..40u64)
        .map(|i| prepare_report(&task, &[i, 1, 7]).unwrap())
        .collect();
    let mut corrupt = prepare_report(&task, &[1000, 1000, 1000]).unwrap();
    let mut ct = b64.decode(&corrupt.shares[1].ciphertext).unwrap();
    ct[3] ^= 0x55;
    corrupt.shares[1].ciphertext = b64.encode(ct);
    let mut reports = good.clone();
    reports.insert(17, corrupt);
    // The same report id twice in the same burst: only one is taken.
    reports.insert(30, good[5].clone());

    let answers =
        futures::future::join_all(reports.iter().map(|r| submit(&nodes[0], &task_id, r))).await;
    let mut taken = 0;
    for (i, (status, body)) in answers.iter().enumerate() {
        match (i, *status) {
            (17, _) => assert_eq!(
                (*status, body["code"].as_str()),
                (400, Some("bad_ciphertext")),
                "{body}"
            ),
            (_, 201) => taken += 1,
            (_, 409) => assert_eq!(body["code"], "duplicate_report", "{body}"),
            _ => panic!("report {i}: {status} {body}"),
        }
    }
    assert_eq!(taken, 40, "every good report is taken once");

    // Fewer relay sessions than reports: they were batched.
    let page = nodes[0].metrics_page().await;
    let relays = metric(
        &page,
        "p2p_mpc_mpc_sessions_started_total",
        &[("protocol", "agg_report"), ("role", "relay")],
    );
    assert!(
        (1..42).contains(&relays),
        "42 reports in {relays} relay sessions"
    );

    let (status, body) = collect(&nodes[1], &task_id).await;
    assert_eq!(status, 200, "{body}");
    let sum: Vec<u64> = serde_json::from_value(body["sum"].clone()).unwrap();
    assert_eq!(sum, vec![(0..40).sum::<u64>(), 40, 280]);
    assert_eq!(body["reports"], 40);
}

/// A compromised collector that skips the minimum batch size (test fault
/// `collect-ignores-min-reports`) asks for the sum after one report: each honest
/// participant refuses to hand over its share sum, so nothing of the report is revealed and
/// neither marks the task opened; the task keeps taking reports and opens once
/// `min_reports` are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_participant_enforces_min_reports() {
    let dir = tempdir();
    let nodes = cluster_with_one_fault(dir.path(), 2, "R", "collect-ignores-min-reports").await;
    // t = 2 of 3: opening needs every participant's share sum, so both honest ones are asked.
    let task = create_task(&nodes[0], &nodes, 2, 3, 3).await;
    let task_id = task.params.task_id.clone();
    let report = |values: &[u64]| prepare_report(&task, values).unwrap();
    let (status, body) = submit(&nodes[0], &task_id, &report(&[5, 6, 7])).await;
    assert_eq!(status, 201, "{body}");

    let (status, body) = collect(&nodes[2], &task_id).await;
    assert_ne!(status, 200, "the rogue collector opened one report: {body}");
    assert!(body.get("sum").is_none(), "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("min_reports"), "{body}");
    for honest in &nodes[..2] {
        let info = get_task(honest, &task_id).await;
        assert_eq!(
            info["opened_batches"],
            json!([]),
            "{} opened: {info}",
            honest.name
        );
        assert_eq!(
            info["current_batch"], 0,
            "{} froze batch 0: {info}",
            honest.name
        );
        assert!(
            honest
                .stderr_lines()
                .iter()
                .any(|l| l.contains("needs min_reports = 3; refused")),
            "{} says why it refused",
            honest.name
        );
    }

    // The task goes on: two more reports, then an honest collect opens all three.
    for values in [[1, 1, 1], [10, 20, 30]] {
        let (status, body) = submit(&nodes[1], &task_id, &report(&values)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = collect(&nodes[0], &task_id).await;
    assert_eq!(status, 200, "{body}");
    let sum: Vec<u64> = serde_json::from_value(body["sum"].clone()).unwrap();
    assert_eq!(sum, vec![16, 27, 38]);
    assert_eq!(body["reports"], 3);
}

/// The `.pending.json` task files under a node's aggregation directory.
fn pending_tasks(dir: &Path, node: &NodeProcess) -> Vec<String> {
    common::files_ending(
        &dir.join(format!("data-{}/aggregation", node.name)),
        ".pending.json",
    )
}

/// A task whose creation one participant never confirms (test fault `withhold-task-stored`)
/// is kept by no node: each drops its pending task when the creation session ends. A
/// pending task file found at start (a node stopped mid-creation) is removed, never loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_creation_is_not_confirmed_is_kept_nowhere() {
    let dir = tempdir();
    let mut nodes = cluster_with_one_fault(dir.path(), 2, "M", "withhold-task-stored").await;
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let (status, body) = wait_for(
        "the creation to be tried",
        Duration::from_secs(60),
        || async {
            let (status, body) = post(
                &nodes[0],
                "/v1/aggregations",
                &json!({"participants": ids, "threshold": 1, "length": 3, "min_reports": 1}),
            )
            .await;
            if status == 400
                && body["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("not connected")
            {
                Err(body.to_string())
            } else {
                Ok((status, body))
            }
        },
    )
    .await;
    assert_ne!(
        status, 201,
        "a task was created without every confirmation: {body}"
    );
    for n in &nodes {
        wait_for(
            &format!("{} to drop the pending task", n.name),
            Duration::from_secs(30),
            || async {
                let pending = pending_tasks(dir.path(), n);
                if pending.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{pending:?}"))
                }
            },
        )
        .await;
        let tasks: Vec<String> =
            std::fs::read_dir(dir.path().join(format!("data-{}/aggregation", n.name)))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.ends_with(".task.json"))
                .collect();
        assert!(tasks.is_empty(), "{} keeps {tasks:?}", n.name);
    }

    // A node stopped while a task was pending finds the file at start and removes it.
    let task = create_task(&nodes[0], &nodes[..2], 1, 3, 1).await;
    let mut n1 = nodes.remove(1);
    n1.kill();
    let aggregation = dir.path().join("data-N1/aggregation");
    let task_file = aggregation.join(format!("{}.task.json", task.params.task_id));
    let pending = aggregation.join("0123456789abcdef0123456789abcdef.pending.json");
    std::fs::copy(&task_file, &pending).unwrap();
    let restarted = start_node(dir.path(), "N1", &[nodes[0].tcp_addr.clone()]).await;
    assert!(!pending.exists(), "the pending task file is still there");
    assert!(
        restarted
            .stderr_lines()
            .iter()
            .any(|l| l.contains("removed an aggregation task whose creation never completed")),
        "the node says what it removed"
    );
    assert!(
        restarted
            .get("/v1/aggregations/0123456789abcdef0123456789abcdef")
            .await
            .is_err(),
        "the pending task was loaded"
    );
    let kept = get_task(&restarted, &task.params.task_id).await;
    assert_eq!(kept["task_id"], task.params.task_id.as_str(), "{kept}");
}

/// An HTTP API that serves `task` for every GET and answers every other request 503; it
/// records each request line ("METHOD /path").
async fn lying_api(task: TaskInfo) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let body = serde_json::to_vec(&task).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The head is enough: the answer does not depend on the body.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&request).to_string();
            let line = head.lines().next().unwrap_or("").to_string();
            let mut words = line.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            log.lock().unwrap().push(format!("{method} {path}"));
            let (status, payload) = if method == "GET" {
                ("200 OK", body.clone())
            } else {
                (
                    "503 Service Unavailable",
                    br#"{"code":"busy","error":"not today"}"#.to_vec(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                payload.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&payload).await;
            let _ = stream.shutdown().await;
        }
    });
    (url, seen)
}

/// `p2p-mpc aggregate submit` of `values` for `task_id` through `api`, with `extra` flags.
fn cli_submit(api: &str, task_id: &str, extra: &[&str]) -> std::process::Output {
    cli_submit_with(api, task_id, "1,2,3", extra, "")
}

/// `p2p-mpc aggregate submit --values VALUES` with `extra` flags, as a client running test
/// fault `fault` (none when empty).
fn cli_submit_with(
    api: &str,
    task_id: &str,
    values: &str,
    extra: &[&str],
    fault: &str,
) -> std::process::Output {
    let mut command = Command::new(bin());
    command
        .args(["aggregate", "submit", "--api", api, "--task", task_id])
        .args(["--values", values, "--output", "json"])
        .args(extra);
    if !fault.is_empty() {
        command.env("P2P_MPC_TEST_FAULT", fault);
    }
    command.output().unwrap()
}

/// A client pinned to the cluster's members (`--members FILE`, as `kubectl get mpc -o
/// jsonpath` prints them) submits to the real nodes, and refuses a task that a lying node
/// serves with a participant of its own (an unpinned client seals a share to that peer and
/// posts it) or with a participant's HPKE key replaced (every client refuses: the key is not
/// signed by that participant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_refuses_a_task_with_a_substituted_peer_or_key() {
    use p2p_mpc_node::mpc::aggregation::encryption::{EncryptionKey, sign_binding};
    use p2p_mpc_node::mpc::aggregation::store::ParticipantKey;
    let dir = tempdir();
    let nodes = start_cluster(dir.path(), 3).await;
    let task = create_task(&nodes[0], &nodes, 1, 3, 1).await;
    let task_id = task.params.task_id.clone();
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let members = dir.path().join("members");
    std::fs::write(&members, format!("{}\n", ids.join(" "))).unwrap();
    let members_flag = ["--members", members.to_str().unwrap()];

    let out = cli_submit(&nodes[1].api, &task_id, &members_flag);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pinned submit: {stderr}");
    assert!(!stderr.contains("not pinned"), "{stderr}");
    let out = cli_submit(&nodes[1].api, &task_id, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "unpinned submit: {stderr}");
    assert!(stderr.contains("are not pinned"), "{stderr}");

    // The attacker's own peer, with an HPKE key its identity really signed.
    let attacker = libp2p::identity::Keypair::generate_ed25519();
    let attacker_id = attacker.public().to_peer_id().to_string();
    let hpke = EncryptionKey::load_or_create(dir.path()).unwrap();
    let forged = ParticipantKey {
        peer_id: attacker_id.clone(),
        identity_public_key: hex::encode(attacker.public().encode_protobuf()),
        hpke_public_key: hex::encode(hpke.public_key()),
        signature: hex::encode(sign_binding(&attacker, hpke.public_key()).unwrap()),
    };
    let mut substituted = task.clone();
    substituted.params.participants[2] = attacker_id.clone();
    substituted.keys[2] = forged.clone();
    // In the order every node and client requires.
    let mut pairs: Vec<(libp2p::PeerId, ParticipantKey)> = substituted
        .keys
        .iter()
        .map(|k| (k.peer_id.parse().unwrap(), k.clone()))
        .collect();
    pairs.sort_by_key(|(p, _)| *p);
    substituted.params.participants = pairs.iter().map(|(p, _)| p.to_string()).collect();
    substituted.keys = pairs.into_iter().map(|(_, k)| k).collect();
    assert!(
        verify_task(&substituted).is_ok(),
        "the forgery is well signed"
    );
    let (url, seen) = lying_api(substituted).await;
    let out = cli_submit(&url, &task_id, &members_flag);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not among the 3 pinned members") && stderr.contains(&attacker_id),
        "{stderr}"
    );
    assert!(
        seen.lock().unwrap().iter().all(|r| r.starts_with("GET ")),
        "{seen:?}"
    );
    // Without pinning the client believes it and posts a share sealed to the attacker.
    let out = cli_submit(&url, &task_id, &[]);
    assert!(!out.status.success(), "the lying API answers 503");
    assert!(
        seen.lock().unwrap().iter().any(|r| r.starts_with("POST ")),
        "{seen:?}"
    );

    // A real participant with the attacker's HPKE key: its identity never signed it.
    let mut rekeyed = task.clone();
    rekeyed.keys[2].hpke_public_key = forged.hpke_public_key.clone();
    let (url, seen) = lying_api(rekeyed).await;
    for flags in [&members_flag[..], &[]] {
        let out = cli_submit(&url, &task_id, flags);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("refusing to submit"), "{stderr}");
    }
    assert!(
        seen.lock().unwrap().iter().all(|r| r.starts_with("GET ")),
        "{seen:?}"
    );
    // A pinned member named twice would get two shares: every client refuses. A lowered
    // threshold is refused by a client that asks for a minimum.
    let mut twice = task.clone();
    twice.params.participants[1] = twice.params.participants[0].clone();
    twice.keys[1] = twice.keys[0].clone();
    let mut lowered = task.clone();
    lowered.params.threshold = 0;
    let (url_twice, seen_twice) = lying_api(twice).await;
    for flags in [&members_flag[..], &[]] {
        let out = cli_submit(&url_twice, &task_id, flags);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("listed twice"), "{stderr}");
    }
    assert!(
        seen_twice
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.starts_with("GET "))
    );
    let out = cli_submit(&nodes[2].api, &task_id, &["--min-threshold", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("threshold 1, below the 2"), "{stderr}");
    let (url_low, _) = lying_api(lowered).await;
    let out = cli_submit(&url_low, &task_id, &members_flag);
    assert!(String::from_utf8_lossy(&out.stderr).contains("threshold 0 is out of range"));

    // A members file that lists no one, or something that is not a peer id, pins nothing.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nobody\n").unwrap();
    let out = cli_submit(
        &nodes[0].api,
        &task_id,
        &["--members", empty.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("lists no peer id"));
    let out = cli_submit(&nodes[0].api, &task_id, &["--member", "nobody"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--member: `nobody` is not a peer id"));
    assert_eq!(get_task(&nodes[0], &task_id).await["reports_here"], 2);
}

/// Six nodes, t = 2, partitioned 4 | 2 while reports come in and both sides try to open
/// batch 0: a report commits on the four (t + 1 = 3 of them took it), none on the two (too
/// few owners), and no side opens anything, because a set is opened only after
/// ⌈(6 + 2 + 1) / 2⌉ = 5 participants voted for it. The side of four freezes batch 0
/// meanwhile, so its next report goes to batch 1. Healed, batch 0 opens once, with the
/// report of the partition, and batch 1 opens normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_never_opens_two_report_sets_of_one_batch() {
    let dir = tempdir();
    let nodes = start_cluster(dir.path(), 6).await;
    let task = create_task(&nodes[0], &nodes, 2, 2, 2).await;
    let task_id = task.params.task_id.clone();
    let report = |values: &[u64]| prepare_report(&task, values).unwrap();
    for values in [[1, 10], [2, 20]] {
        let (status, body) = submit(&nodes[0], &task_id, &report(&values)).await;
        assert_eq!(status, 201, "{body}");
    }

    let (big, small) = nodes.split_at(4);
    let big: Vec<&NodeProcess> = big.iter().collect();
    let small: Vec<&NodeProcess> = small.iter().collect();
    partition(dir.path(), &[&big, &small]);
    let (status, body) = submit(&nodes[1], &task_id, &report(&[4, 40])).await;
    assert_eq!(status, 201, "the side of four takes a report: {body}");
    let (status, body) = submit(&nodes[5], &task_id, &report(&[1000, 1000])).await;
    assert_eq!(status, 503, "the side of two cannot: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("t + 1 = 3 must"),
        "{body}"
    );
    for (collector, answered) in [(&nodes[0], 4), (&nodes[4], 2)] {
        let (status, body) = collect(collector, &task_id).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("not_enough_participants")),
            "{}: {body}",
            collector.name
        );
        let needle = format!("only {answered} of 6 participants answered; opening batch 0 needs 5");
        assert!(body["error"].as_str().unwrap().contains(&needle), "{body}");
    }
    // The side of four froze batch 0 (it holds min_reports): its next report is batch 1's.
    let (status, body) = submit(&nodes[2], &task_id, &report(&[8, 80])).await;
    assert_eq!(status, 201, "{body}");
    for node in &nodes {
        let view = get_task(node, &task_id).await;
        assert_eq!(view["opened_batches"], json!([]), "{}: {view}", node.name);
    }

    heal(dir.path());
    let (status, body) = collect_batch(&nodes[5], &task_id, 0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reports"], 3);
    assert_eq!(body["sum"], json!([7, 70]));
    let digest = body["report_set_digest"].clone();
    // Opened again, by any node: the same set, the same sum.
    for collector in [&nodes[0], &nodes[4]] {
        let (status, again) = collect_batch(collector, &task_id, 0).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["report_set_digest"], digest);
        assert_eq!(again["sum"], body["sum"]);
    }
    // Batch 1: the report of the partition (held by the four) and one more.
    let (status, body) = submit(&nodes[4], &task_id, &report(&[16, 160])).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = collect(&nodes[3], &task_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["batch"].clone(), body["reports"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(body["sum"], json!([24, 240]));
    for node in &nodes {
        let view = get_task(node, &task_id).await;
        assert_eq!(view["current_batch"], 2, "{}: {view}", node.name);
    }
}

/// Certificate parameters with common name `name` for `hosts`.
fn cert_params(name: &str, hosts: &[&str]) -> rcgen::CertificateParams {
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(hosts).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params
}

/// A self-signed CA named `name`.
fn test_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = cert_params(name, &[]);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap(), key)
}

/// A CA, a certificate for 127.0.0.1 and localhost signed by it, and another CA: written as
/// PEM under `dir` as ca.pem, cert.pem, key.pem and other-ca.pem.
fn tls_files(dir: &Path) {
    let (ca, ca_key) = test_ca("p2p-mpc test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = cert_params("p2p-mpc test node", &["127.0.0.1", "localhost"])
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (other, _) = test_ca("another CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
}

/// The API served over HTTPS (`--api-tls-cert`, `--api-tls-key`): the CLI submits and
/// collects through it when it trusts the CA (`--api-ca`), and refuses with a clear error
/// a certificate of another CA, plain HTTP to the HTTPS port, and a CA for an http:// URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_and_collects_over_https_and_checks_the_ca() {
    let dir = tempdir();
    tls_files(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let mut nodes = start_cluster(dir.path(), 2).await;
    let boots: Vec<String> = nodes.iter().map(|n| n.tcp_addr.clone()).collect();
    let key = dir.path().join("T.key");
    let mut extra = args(&[
        "--identity-key-path",
        key.to_str().unwrap(),
        "--api-tls-cert",
        &file("cert.pem"),
        "--api-tls-key",
        &file("key.pem"),
    ]);
    for b in &boots {
        extra.push("--bootnode".into());
        extra.push(b.clone());
    }
    let tls_node = NodeProcess::start_with_env(
        "T",
        dir.path(),
        &extra,
        &[("P2P_MPC_TEST_ROUND_TIMEOUT_MS", ROUND_TIMEOUT_MS)],
    )
    .await;
    for n in &nodes {
        n.wait_connected_to(&tls_node.peer_id, Duration::from_secs(30))
            .await;
    }
    assert!(
        tls_node
            .stderr_lines()
            .iter()
            .any(|l| l.contains("HTTP API listening") && l.contains("scheme=\"https\"")),
        "the node says it serves HTTPS"
    );
    let https = tls_node.api.replace("http://", "https://");
    nodes.push(tls_node);
    let task = create_task(&nodes[0], &nodes, 1, 2, 2).await;
    let task_id = task.params.task_id.clone();
    let cli = |extra: &[&str]| {
        Command::new(bin())
            .args(["aggregate"])
            .args(extra)
            .args(["--task", &task_id])
            .output()
            .unwrap()
    };
    for values in ["1,10", "2,20"] {
        let out = cli(&[
            "submit",
            "--api",
            &https,
            "--api-ca",
            &file("ca.pem"),
            "--values",
            values,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cli(&[
        "collect",
        "--api",
        &https,
        "--api-ca",
        &file("ca.pem"),
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sum["sum"], json!([3, 30]));

    // Another CA's certificate, plain HTTP to the HTTPS port, a CA for plain HTTP: refused,
    // with what went wrong.
    let out = cli(&[
        "collect",
        "--api",
        &https,
        "--api-ca",
        &file("other-ca.pem"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("certificate") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    let plain = https.replace("https://", "http://");
    let out = cli(&["collect", "--api", &plain]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot reach the node"), "{stderr}");
    let out = cli(&["collect", "--api", &plain, "--api-ca", &file("ca.pem")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not an https:// URL"), "{stderr}");
    let out = cli(&["collect", "--api", &https, "--api-ca", &file("key.pem")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
    assert!(
        !stderr.contains("PRIVATE KEY"),
        "the key file is not echoed: {stderr}"
    );
}

/// A compromised opener (test fault `wrong-share-sum`) sends a share sum one off: with
/// three nodes at t = 1, all three open, the third share sum does not lie on the line
/// through the other two, and the collect fails instead of returning a shifted sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_share_sum_is_caught_by_one_more_opener() {
    let dir = tempdir();
    let nodes = cluster_with_one_fault(dir.path(), 2, "L", "wrong-share-sum").await;
    let task = create_task(&nodes[0], &nodes, 1, 2, 2).await;
    let task_id = task.params.task_id.clone();
    for values in [[1, 2], [3, 4]] {
        let report = prepare_report(&task, &values).unwrap();
        let (status, body) = submit(&nodes[0], &task_id, &report).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = collect(&nodes[0], &task_id).await;
    assert_ne!(status, 200, "a shifted sum was returned: {body}");
    assert!(body.get("sum").is_none(), "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("share sums disagree"),
        "{body}"
    );
}

/// A client key made by `p2p-mpc client keygen` under `dir`: its file and public key.
fn client_keygen(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new(bin())
        .args(["client", "keygen", "--out", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        path,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

/// The signing key in a client key file.
fn read_client_key(path: &Path) -> ed25519_dalek::SigningKey {
    p2p_mpc_node::commands::client::read(path).unwrap()
}

/// A task that names client keys takes only reports signed by one of them, checked by every
/// owner of a share, and counts each client once per batch towards `min_reports`: an
/// unsigned report, a report of an unlisted key and one whose share signatures were swapped
/// are refused; five reports of one client do not open a batch that needs two clients; one
/// more from the second client does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_with_client_keys_takes_signed_reports_and_counts_each_client_once() {
    let dir = tempdir();
    let nodes = start_cluster(dir.path(), 3).await;
    let keygen = |name: &str| client_keygen(dir.path(), name);
    let (a_file, a) = keygen("a.key");
    let (b_file, b) = keygen("b.key");
    let (c_file, c) = keygen("c.key");
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let (status, body) = post(
        &nodes[0],
        "/v1/aggregations",
        &json!({"participants": ids, "threshold": 1, "length": 2, "min_reports": 2, "clients": [a, b]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let task: TaskInfo = serde_json::from_value(body).unwrap();
    let task_id = task.params.task_id.clone();
    for node in &nodes {
        let view = get_task(node, &task_id).await;
        assert_eq!(view["access"], "clients", "{view}");
        assert_eq!(view["clients"], json!([a, b]), "{view}");
    }

    // Unsigned, by an unlisted client, or with its shares' signatures swapped: refused.
    let (status, body) = submit(
        &nodes[0],
        &task_id,
        &prepare_report(&task, &[1, 1]).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("unsigned_report")),
        "{body}"
    );
    let mut listed_c = task.clone();
    listed_c.params.clients.push(c.clone());
    let mut by_c = prepare_report(&task, &[1, 1]).unwrap();
    sign_report(&listed_c, &mut by_c, &read_client_key(&c_file)).unwrap();
    let (status, body) = submit(&nodes[0], &task_id, &by_c).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("unknown_client")),
        "{body}"
    );
    let mut swapped = prepare_report(&task, &[1, 1]).unwrap();
    sign_report(&task, &mut swapped, &read_client_key(&a_file)).unwrap();
    let first = swapped.shares[0].signature.clone();
    swapped.shares[0].signature = swapped.shares[1].signature.clone();
    swapped.shares[1].signature = first;
    for node in &nodes[..2] {
        let (status, body) = submit(node, &task_id, &swapped).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("bad_signature")),
            "{}: {body}",
            node.name
        );
    }
    // The CLI refuses to submit to such a task without a key, and signs with one.
    let cli_submit = |key: Option<&Path>, values: &str| {
        let mut cmd = Command::new(bin());
        cmd.args([
            "aggregate",
            "submit",
            "--api",
            &nodes[1].api,
            "--task",
            &task_id,
            "--values",
            values,
        ]);
        if let Some(key) = key {
            cmd.args(["--client-key", key.to_str().unwrap()]);
        }
        cmd.output().unwrap()
    };
    let out = cli_submit(None, "1,1");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --client-key FILE"));
    for _ in 0..5 {
        let out = cli_submit(Some(&a_file), "1,10");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for node in &nodes {
        assert_eq!(get_task(node, &task_id).await["reports_here"], 5);
    }
    // Five reports, one client: min_reports = 2 is not reached, on any node.
    let (status, body) = collect(&nodes[2], &task_id).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("not_enough_reports")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("1 reports are in batch 0"),
        "{body}"
    );
    let out = cli_submit(Some(&b_file), "100,1000");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = collect(&nodes[2], &task_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reports"], 6);
    assert_eq!(body["sum"], json!([105, 1050]));
}

/// A task that names collector keys opens a batch only for a collect signed by one of them,
/// checked by every participant: without an authorization the node refuses at once; a
/// rogue node that skips that check (test fault `collect-ignores-min-reports`) is refused by
/// every other participant, which freezes nothing; an unlisted key is refused; the listed
/// collector opens the batch, once per authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_listed_collector_opens_a_batch() {
    let dir = tempdir();
    let nodes = cluster_with_one_fault(dir.path(), 2, "R", "collect-ignores-min-reports").await;
    let keygen = |name: &str| client_keygen(dir.path(), name);
    let (k_file, k) = keygen("collector.key");
    let (x_file, _) = keygen("stranger.key");
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let (status, body) = post(
        &nodes[0],
        "/v1/aggregations",
        &json!({"participants": ids, "threshold": 1, "length": 2, "min_reports": 1, "collectors": [k]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let task: TaskInfo = serde_json::from_value(body).unwrap();
    let task_id = task.params.task_id.clone();
    for values in [[1, 2], [3, 4]] {
        let (status, body) = submit(
            &nodes[0],
            &task_id,
            &prepare_report(&task, &values).unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    let (status, body) = collect(&nodes[0], &task_id).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("collector_refused")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("signed by one of its 1 collectors"),
        "{body}"
    );
    let (status, body) = collect(&nodes[2], &task_id).await;
    assert_ne!(status, 200, "the rogue opened the batch: {body}");
    for honest in &nodes[..2] {
        let view = get_task(honest, &task_id).await;
        assert_eq!(
            view["current_batch"], 0,
            "{} froze the batch: {view}",
            honest.name
        );
        assert!(
            honest
                .stderr_lines()
                .iter()
                .any(|l| l.contains("collect refused")),
            "{} says why it refused",
            honest.name
        );
    }
    let cli_collect = |node: &NodeProcess, key: &Path| {
        Command::new(bin())
            .args([
                "aggregate",
                "collect",
                "--api",
                &node.api,
                "--task",
                &task_id,
                "--batch",
                "0",
            ])
            .args(["--client-key", key.to_str().unwrap(), "--output", "json"])
            .output()
            .unwrap()
    };
    let out = cli_collect(&nodes[1], &x_file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not by a collector"));

    let key = read_client_key(&k_file);
    let coordinator: libp2p::PeerId = nodes[1].peer_id.parse().unwrap();
    let auth = p2p_mpc_node::mpc::aggregation::collect::core::authorize_collect(
        &key,
        &task_id,
        0,
        &coordinator,
        p2p_mpc_node::mpc::policy::now() + 300,
    );
    let body = json!({"batch": 0, "authorization": auth});
    let path = format!("/v1/aggregations/{task_id}/collect");
    let (status, opened) = post(&nodes[1], &path, &body).await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["sum"], json!([4, 6]));
    let (status, again) = post(&nodes[1], &path, &body).await;
    assert_eq!(
        (status, again["code"].as_str()),
        (409, Some("replayed_collect")),
        "{again}"
    );
    // Through the CLI, with the listed key: the same batch, the same sum.
    let out = cli_collect(&nodes[0], &k_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sum"], json!([4, 6]));
}

/// `p2p-mpc aggregate create` through `api` with `extra` flags; the task it printed.
fn cli_create(api: &str, nodes: &[NodeProcess], extra: &[&str]) -> Value {
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let out = Command::new(bin())
        .args(["aggregate", "create", "--api", api, "--output", "json"])
        .args(["--participants", &ids.join(",")])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aggregate create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `p2p-mpc aggregate submit --values V` of a test-faults client running `fault`.
fn cli_submit_value(api: &str, task_id: &str, value: &str, fault: &str) -> std::process::Output {
    cli_submit_with(api, task_id, value, &[], fault)
}

/// A validated `sum` task (8 bits) and a `histogram` task among three nodes: honest reports
/// sum correctly; a report of 256 made with `forge-report` (proven for 0), a report whose
/// first share carries a proof made for another value, a histogram report with two ones, and
/// malformed proofs are refused by the participants and counted, and the sums of the honest
/// reports are unaffected. The verify key stays among the participants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_reports_are_proven_and_forged_ones_are_refused() {
    use p2p_mpc_node::mpc::aggregation::validity::{InputType, Validator};
    let dir = tempdir();
    let nodes = start_cluster(dir.path(), 3).await;
    let api = nodes[0].api.clone();

    // A raw threshold does not fit a validated task: refused with the reason.
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let (status, body) = post(
        &nodes[0],
        "/v1/aggregations",
        &json!({"participants": ids, "threshold": 1, "min_reports": 1, "input": {"type": "sum", "bits": 8}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("leave threshold out"),
        "{body}"
    );

    let task = cli_create(
        &api,
        &nodes,
        &["--type", "sum", "--bits", "8", "--min-reports", "3"],
    );
    let task_id = task["task_id"].as_str().unwrap().to_string();
    assert_eq!(task["input"], json!({"type": "sum", "bits": 8}), "{task}");
    assert_eq!(task["threshold"], 2, "n of n: {task}");
    assert_eq!(task["length"], 1, "{task}");
    for node in &nodes {
        let view = get_task(node, &task_id).await.to_string();
        assert!(
            !view.contains("verify_key"),
            "the API never shows the verify key: {view}"
        );
    }

    // Honest reports through the CLI.
    for value in ["3", "200", "7"] {
        let out = cli_submit_value(&api, &task_id, value, "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A client that refuses to prove an out-of-range value itself says so...
    let out = cli_submit_value(&api, &task_id, "256", "");
    assert!(!out.status.success());
    // ...and one that forges it (proven for 0, shares adding up to 256) is refused by the
    // participants.
    let out = cli_submit_value(&api, &task_id, "256", "forge-report");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("invalid_report"),
        "{stderr}"
    );

    // A report whose first share (and its proof share) was made for 6, the others for 5.
    let info: TaskInfo = serde_json::from_value(get_task(&nodes[0], &task_id).await).unwrap();
    let v = Validator::new(InputType::Sum { bits: 8 }, 3)
        .unwrap()
        .unwrap();
    let rid = new_report_id();
    let five = v.shard(&task_id, &rid, 5).unwrap();
    let six = v.shard(&task_id, &rid, 6).unwrap();
    let mixed = vec![six[0].clone(), five[1].clone(), five[2].clone()];
    let (status, body) = submit(
        &nodes[1],
        &task_id,
        &seal_shares(&info, &rid, &mixed).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_report")),
        "{body}"
    );
    // Its id (the Prio3 nonce) stays used: the same id with honest shares is a duplicate.
    for node in [&nodes[1], &nodes[2]] {
        let (status, body) =
            submit(node, &task_id, &seal_shares(&info, &rid, &five).unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("duplicate_report")),
            "{body}"
        );
    }
    // Malformed proofs: random bytes of the right size, and a share whose header lies.
    let rid = new_report_id();
    let random: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            (0..v.share_bytes())
                .map(|j| (j * 7 + i * 13 + 1) as u8)
                .collect()
        })
        .collect();
    let (status, body) = submit(
        &nodes[2],
        &task_id,
        &seal_shares(&info, &rid, &random).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("malformed_report")),
        "{body}"
    );
    let rid = new_report_id();
    let mut lying = v.shard(&task_id, &rid, 1).unwrap();
    lying[1][..4].copy_from_slice(&u32::MAX.to_be_bytes());
    let (status, body) = submit(
        &nodes[0],
        &task_id,
        &seal_shares(&info, &rid, &lying).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("malformed_report")),
        "{body}"
    );
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("public share"),
        "says what is wrong: {body}"
    );

    // The relay that decided each refusal counted it.
    let mut invalid = 0;
    for node in &nodes {
        let page = node.metrics_page().await;
        invalid += metric(
            &page,
            "p2p_mpc_aggregation_shares_total",
            &[("outcome", "invalid_report")],
        );
    }
    assert_eq!(invalid, 2, "the forged and the mixed report");
    // The node keeps serving: one more honest report, then the sum of the honest ones.
    let out = cli_submit_value(&nodes[2].api, &task_id, "40", "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = collect(&nodes[1], &task_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sum"], json!([250]), "{body}");
    assert_eq!(body["reports"], 4, "{body}");
    assert_eq!(
        body["opened_by"].as_array().unwrap().len(),
        3,
        "all n open: {body}"
    );

    // A histogram: bucket counts; a report with two ones refused.
    let hist = cli_create(
        &api,
        &nodes,
        &[
            "--type",
            "histogram",
            "--buckets",
            "4",
            "--min-reports",
            "3",
        ],
    );
    let hist_id = hist["task_id"].as_str().unwrap().to_string();
    assert_eq!(hist["length"], 4, "{hist}");
    for bucket in ["0", "3", "3"] {
        let out = cli_submit_value(&api, &hist_id, bucket, "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cli_submit_value(&api, &hist_id, "2", "forge-report");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("invalid_report"),
        "{stderr}"
    );
    let (status, body) = collect(&nodes[2], &hist_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sum"], json!([1, 0, 0, 2]), "{body}");

    // The verify key is on every participant's disk, in the task file only.
    for node in &nodes {
        let files = files_under(&dir.path().join(format!("data-{}", node.name)));
        let holding: Vec<_> = files
            .iter()
            .filter(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains("verify_key")))
            .collect();
        assert_eq!(holding.len(), 2, "{}: {holding:?}", node.name);
    }
}

/// A relay that skips the proof check (test fault `skip-proof-check`) commits a forged report:
/// every honest participant decides the proof itself and refuses to add it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_participant_checks_the_proof_a_rogue_relay_commits() {
    let dir = tempdir();
    let nodes = cluster_with_one_fault(dir.path(), 2, "Rogue", "skip-proof-check").await;
    let rogue = &nodes[2];
    let task = cli_create(
        &nodes[0].api,
        &nodes,
        &["--type", "count", "--min-reports", "1"],
    );
    let task_id = task["task_id"].as_str().unwrap().to_string();
    // An honest report through the rogue relay is taken everywhere.
    let out = cli_submit_value(&rogue.api, &task_id, "1", "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A forged count of 5 through the rogue relay: it commits it, the honest nodes refuse it.
    let out = cli_submit_value(&rogue.api, &task_id, "5", "forge-report");
    assert!(
        out.status.success(),
        "the rogue relay says it took it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in &nodes[..2] {
        wait_for(
            "the honest node to count the refusal",
            Duration::from_secs(20),
            || async {
                let page = node.metrics_page().await;
                match metric(
                    &page,
                    "p2p_mpc_aggregation_shares_total",
                    &[("outcome", "invalid_report")],
                ) {
                    1 => Ok(()),
                    n => Err(format!("{n}")),
                }
            },
        )
        .await;
        assert_eq!(
            get_task(node, &task_id).await["reports_here"],
            1,
            "{}",
            node.name
        );
        assert!(
            node.stderr_lines()
                .iter()
                .any(|l| l.contains("validity proof does not hold here")),
            "{} says so",
            node.name
        );
    }
    assert_eq!(get_task(rogue, &task_id).await["reports_here"], 2);
    // No set that every participant froze holds the forged report: it is never opened.
    let (status, body) = collect(&nodes[0], &task_id).await;
    assert_ne!(status, 200, "{body}");
}
