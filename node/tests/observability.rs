//! Metrics (checked by promtool), the JSON trace file, and the HTTP API's auth and errors.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{NodeProcess, args, start_pair, tempdir, wait_for, write_file};
use p2p_mpc_testenv::or_skip;
use serde_json::Value;

/// The largest sample of metric `name` with these labels, if there is one.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    p2p_mpc_testenv::metric_samples(page, name, labels).reduce(f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_and_pass_promtool() {
    let dir = tempdir();
    let (a, b) = start_pair(dir.path(), &[]).await;

    let before = a.metrics_page().await;
    assert_eq!(
        sample(&before, "p2p_mpc_requests_total", &[]),
        None,
        "no API request yet"
    );

    for _ in 0..3 {
        a.get("/v1/status").await.unwrap();
    }
    a.publish_when_ready("chat", "metric me").await;
    b.wait_message("chat", "metric me").await;
    b.publish_when_ready("chat", "and back").await;
    a.wait_message("chat", "and back").await;

    let page = a.metrics_page().await;
    let status_requests = sample(
        &page,
        "p2p_mpc_requests_total",
        &[
            ("method", "GET"),
            ("route", "/v1/status"),
            ("status", "200"),
        ],
    );
    assert!(
        status_requests >= Some(3.0),
        "requests_total by route: {status_requests:?}\n{page}"
    );
    assert!(
        sample(
            &page,
            "p2p_mpc_request_duration_seconds_count",
            &[("method", "GET"), ("route", "/v1/status")]
        )
        .is_some_and(|v| v >= 3.0),
        "request duration histogram:\n{page}"
    );
    assert!(
        sample(&page, "p2p_mpc_active_connections", &[]).is_some_and(|v| v >= 1.0),
        "{page}"
    );
    assert!(
        sample(&page, "p2p_mpc_connected_peers", &[]).is_some_and(|v| v >= 1.0),
        "{page}"
    );
    assert!(
        sample(
            &page,
            "p2p_mpc_gossip_messages_published_total",
            &[("topic", "chat")]
        )
        .is_some_and(|v| v >= 1.0),
        "{page}"
    );
    assert!(
        sample(
            &page,
            "p2p_mpc_gossip_messages_received_total",
            &[("topic", "chat")]
        )
        .is_some_and(|v| v >= 1.0),
        "{page}"
    );
    // libp2p's own metrics, in the same page.
    assert!(
        page.contains("libp2p_swarm_connections_established"),
        "libp2p swarm metrics:\n{page}"
    );
    assert!(
        page.contains("libp2p_gossipsub"),
        "libp2p gossipsub metrics"
    );
    assert!(
        page.contains("libp2p_bandwidth"),
        "libp2p bandwidth metrics"
    );
    assert!(
        !page.contains("# EOF"),
        "no OpenMetrics trailer in a Prometheus text page"
    );

    // No metric family is declared twice.
    let mut seen = std::collections::HashSet::new();
    for line in page.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            seen.insert(name.to_string()),
            "duplicate metric family {name}"
        );
    }

    if let Some(promtool) = or_skip(p2p_mpc_testenv::promtool().await) {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_trace_file_holds_spans_of_connections_publishes_and_requests() {
    let dir = tempdir();
    let trace = dir.path().join("traces/a.json");
    let trace_s = trace.display().to_string();
    let (mut a, b) = start_pair(dir.path(), &["--json-trace", "--json-trace-file", &trace_s]).await;
    a.get("/v1/status").await.unwrap();
    a.publish_when_ready("chat", "traced").await;
    let status = a
        .terminate(Duration::from_secs(10))
        .expect("stops on SIGTERM");
    assert!(status.success());

    let text = std::fs::read_to_string(&trace).expect("trace file written");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let span = |name: &str| {
        lines
            .iter()
            .find(|v| v["type"] == "span" && v["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no span {name} in {text}"))
    };
    let http = span("http_request");
    assert_eq!(http["fields"]["method"], "GET");
    assert!(http["id"].as_u64().is_some());
    assert!(http["duration_us"].as_u64().is_some());
    let publish = span("gossip_publish");
    assert_eq!(publish["fields"]["topic"], "chat");
    let conn = span("connection_established");
    assert_eq!(conn["fields"]["peer"], b.peer_id.as_str());
    // Events carry the span they happened in.
    assert!(
        lines.iter().any(|v| v["type"] == "event"
            && v["fields"]["message"] == "published"
            && v["spans"][0]["name"] == "gossip_publish"),
        "the publish event is inside its span"
    );
}

/// Sends `head` (a request line and headers) to the API, then, if `chunked` is set, that many
/// bytes of whitespace as chunks from a second task; returns the answer once it holds a
/// JSON body.
async fn raw_request(api: &str, head: &str, chunked: Option<usize>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(
        head.replace("HTTP/1.1\r\n", &format!("HTTP/1.1\r\nhost: {addr}\r\n"))
            .as_bytes(),
    )
    .await
    .unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 16 * 1024];
        for _ in 0..chunked.unwrap_or(0) / chunk.len() {
            let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            if wr.write_all(&frame).await.is_err() {
                return wr;
            }
        }
        if chunked.is_some() {
            let _ = wr.write_all(b"0\r\n\r\n").await;
        }
        wr
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"}") {
        match tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!(
                "no full answer to {head:?}: {other:?}; got {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_auth_and_error_bodies() {
    let dir = tempdir();
    let token_file = write_file(dir.path(), "token", "s3cr3t-token\n");
    let a = NodeProcess::start(
        "A",
        dir.path(),
        &args(&[
            "-t",
            "chat",
            "--api-token-file",
            token_file.to_str().unwrap(),
        ]),
    )
    .await;
    let url = |p: &str| format!("{}{p}", a.api);

    let r = a.http.get(url("/v1/status")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");

    let r = a
        .http
        .get(url("/v1/status"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let r = a
        .http
        .get(url("/v1/status"))
        .bearer_auth("s3cr3t-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["peer_id"], a.peer_id.as_str());
    assert!(status["version"].is_string());

    // Malformed bodies are 400s that say what is wrong.
    for (body, expect) in [
        ("{not json", "invalid JSON body"),
        ("{\"text\": \"x\"}", "unknown field `text`"),
        ("{\"data\": 5}", "invalid type"),
        ("", "empty"),
        ("{\"data\": \"\"}", "must not be empty"),
    ] {
        let r = a
            .http
            .post(url("/v1/topics/chat/messages"))
            .bearer_auth("s3cr3t-token")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "invalid_body", "{body}");
        assert!(v["error"].as_str().unwrap().contains(expect), "{body}: {v}");
    }
    // No peer on the topic yet: a clear 503.
    let r = a
        .http
        .post(url("/v1/topics/chat/messages"))
        .bearer_auth("s3cr3t-token")
        .json(&serde_json::json!({"data": "anyone?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "no_peers");
    // Unknown routes and methods are JSON errors too.
    let r = a.http.get(url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");

    // Bodies are read only up to the largest legal request of their route, and only after
    // the token was checked.
    use p2p_mpc_node::api::body;
    let head = raw_request(
        &a.api,
        "POST /v1/keys/00/sign HTTP/1.1\r\ncontent-length: 8388608\r\n\r\n",
        None,
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 401"),
        "no token: refused before the body: {head}"
    );
    for (path, limit) in [
        ("/v1/keys", body::CREATE_KEY),
        ("/v1/keys/00/sign", body::SIGN),
        ("/v1/keys/00/policy", body::SET_POLICY),
        ("/v1/aggregations", body::CREATE_AGGREGATION),
        ("/v1/peers/x/transfer", body::TRANSFER),
        ("/v1/topics/chat/messages", body::publish(1024 * 1024)),
    ] {
        // A declared length over the limit is answered before any of the body is sent.
        let head = raw_request(
            &a.api,
            &format!("POST {path} HTTP/1.1\r\nauthorization: Bearer s3cr3t-token\r\ncontent-length: {}\r\n\r\n", limit + 1),
            None,
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 413"), "{path}: {head}");
        let v: Value = serde_json::from_str(head.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(v["code"], "body_too_large", "{path}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("at most {limit} bytes")),
            "{path}: {v}"
        );
        // At the limit the body is read and parsed (whitespace alone is not JSON).
        let r = a
            .http
            .post(url(path))
            .bearer_auth("s3cr3t-token")
            .body(vec![b' '; limit])
            .send()
            .await
            .unwrap();
        assert_ne!(r.status().as_u16(), 413, "{path} at its limit");
    }
    // A chunked body (no Content-Length) is cut off where it crosses the limit.
    let head = raw_request(
        &a.api,
        "POST /v1/keys/00/sign HTTP/1.1\r\nauthorization: Bearer s3cr3t-token\r\ntransfer-encoding: chunked\r\n\r\n",
        Some(4 * body::SIGN),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "chunked over the limit: {head}"
    );
    assert!(head.contains("body_too_large"), "{head}");

    // The token never shows up in the logs.
    let log = a.stderr_lines().join("\n");
    assert!(!log.contains("s3cr3t-token"), "token leaked into logs");

    // The CLI clients use the token file too.
    let out = Command::new(common::bin())
        .args(["status", "--json", "--api", &a.api, "--api-token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["peer_id"], a.peer_id.as_str());
    let out = Command::new(common::bin())
        .args(["status", "--api", &a.api])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subcommand_reaches_other_nodes() {
    let dir = tempdir();
    let (a, b) = start_pair(dir.path(), &[]).await;
    let id = wait_for(
        "publish subcommand to succeed",
        Duration::from_secs(20),
        || async {
            let out = Command::new(common::bin())
                .args(["publish", "chat", "from the CLI", "--api", &a.api])
                .output()
                .unwrap();
            if out.status.success() {
                Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        },
    )
    .await;
    let m = b.wait_message("chat", "from the CLI").await;
    assert_eq!(m["message_id"], id.as_str());

    let out = Command::new(common::bin())
        .args(["status", "--api", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the node"));
}

/// At most `api_max_concurrent_requests` requests are served at once: with a cap of one, a
/// request whose body is still on its way holds the slot, the next request is answered 503
/// `overloaded` (with Retry-After) at once instead of waiting, and when the first one ends
/// the node serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_cap_are_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempdir();
    let a = NodeProcess::start(
        "A",
        dir.path(),
        &args(&["-t", "chat", "--api-max-concurrent-requests", "1"]),
    )
    .await;
    let status = format!("{}/v1/status", a.api);
    assert_eq!(a.http.get(&status).send().await.unwrap().status(), 200);

    // A publish whose body never comes. Should it meet another request in flight, it is
    // itself refused at once (its connection gets the 503): then it is sent again.
    let addr = a.api.trim_start_matches("http://").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (refused, slow) = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "a request whose body never comes did not hold the node's one slot"
        );
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        slow.write_all(
            format!("POST /v1/topics/chat/messages HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n{{")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = [0u8; 256];
        if tokio::time::timeout(Duration::from_millis(300), slow.read(&mut answer))
            .await
            .is_ok()
        {
            continue;
        }
        let r = a.http.get(&status).send().await.unwrap();
        if r.status() == 503 {
            break (r, slow);
        }
    };
    assert_eq!(
        refused.headers()["retry-after"].to_str().unwrap(),
        "1",
        "{:?}",
        refused.headers()
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "overloaded", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("api_max_concurrent_requests"),
        "{body}"
    );

    // The slow caller goes away: the slot is free again.
    drop(slow);
    wait_status(&a, &status, 200).await;
}

/// Polls GET `url` until it answers `code`; returns that response.
async fn wait_status(node: &NodeProcess, url: &str, code: u16) -> reqwest::Response {
    wait_for(
        &format!("GET {url} to answer {code}"),
        Duration::from_secs(10),
        || async {
            let r = node.http.get(url).send().await.map_err(|e| e.to_string())?;
            if r.status() == code {
                Ok(r)
            } else {
                Err(format!("{}", r.status()))
            }
        },
    )
    .await
}
