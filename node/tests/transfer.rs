//! Transfer test (`POST /v1/peers/{peer_id}/transfer`) between two real node processes.

mod common;

use common::{start_pair, tempdir};
use serde_json::{Value, json};

async fn transfer(api: &str, peer: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{api}/v1/peers/{peer}/transfer"))
        .json(&body)
        .send()
        .await
        .expect("the API answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_test_moves_every_byte_and_refuses_bad_requests() {
    let dir = tempdir();
    let (a, b) = start_pair(dir.path(), &[]).await;

    // An odd size: five full chunks and a short one.
    let bytes = 5 * 192 * 1024 + 1001;
    let (status, body) = transfer(&a.api, &b.peer_id, json!({ "bytes": bytes })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bytes"], bytes, "{body}");
    assert_eq!(body["chunks"], 6, "{body}");
    assert_eq!(body["peer_id"], b.peer_id.as_str());
    assert!(body["seconds"].as_f64().unwrap() > 0.0, "{body}");
    assert!(body["mib_per_second"].as_f64().unwrap() > 0.0, "{body}");
    // Both ends ran a session of the transfer protocol to completion.
    for (node, role) in [(&a, "sender"), (&b, "receiver")] {
        let page = node.metrics_page().await;
        let line = page
            .lines()
            .find(|l| l.contains("sessions_started") && l.contains("transfer") && l.contains(role))
            .unwrap_or_else(|| panic!("{} counts a {role} transfer session:\n{page}", node.name));
        assert!(line.ends_with(" 1"), "{line}");
    }

    // And the other way, a single byte.
    let (status, body) = transfer(&b.api, &a.peer_id, json!({ "bytes": 1 })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["chunks"], 1);

    // Wrong requests: each with a message that says what is wrong.
    let cases = [
        (b.peer_id.as_str(), json!({ "bytes": 0 }), 400, "from 1 to"),
        (
            b.peer_id.as_str(),
            json!({ "bytes": 2u64 << 30 }),
            400,
            "from 1 to",
        ),
        (
            b.peer_id.as_str(),
            json!({ "size": 10 }),
            400,
            "unknown field",
        ),
        (
            "not-a-peer",
            json!({ "bytes": 10 }),
            400,
            "is not a peer id",
        ),
        (
            a.peer_id.as_str(),
            json!({ "bytes": 10 }),
            400,
            "own peer id",
        ),
        // A valid peer id nobody runs: the session fails, naming it.
        (
            "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp",
            json!({ "bytes": 10 }),
            502,
            "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp",
        ),
    ];
    for (peer, body, want, text) in cases {
        let (status, answer) = transfer(&a.api, peer, body.clone()).await;
        assert_eq!(status, want, "{peer} {body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap_or("").contains(text),
            "{peer} {body}: {answer}"
        );
    }
    // The node still serves.
    let (status, body) = transfer(&a.api, &b.peer_id, json!({ "bytes": 4096 })).await;
    assert_eq!(status, 200, "{body}");
}
