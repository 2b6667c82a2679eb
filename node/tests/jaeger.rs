//! OTLP export to a real Jaeger (v2, built by deploy/testenv): the node's spans arrive with
//! service name `p2p-mpc` and its peer id as a resource attribute, and are flushed on SIGTERM.

mod common;

use std::time::Duration;

use common::{start_pair, tempdir};
use p2p_mpc_testenv::{Jaeger, or_skip, wait_for};
use serde_json::Value;

/// Operation names of the spans of `traces` whose process carries `peer_id`.
fn operations_of(traces: &[Value], peer_id: &str) -> Vec<String> {
    let mut ops = Vec::new();
    for trace in traces {
        let processes = &trace["processes"];
        for span in trace["spans"].as_array().into_iter().flatten() {
            let process = &processes[span["processID"].as_str().unwrap_or("")];
            let ours = process["serviceName"] == "p2p-mpc"
                && process["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["key"] == "p2p_mpc.peer_id" && t["value"] == peer_id);
            if ours {
                ops.push(span["operationName"].as_str().unwrap_or("").to_string());
            }
        }
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_real_jaeger_over_otlp() {
    let Some(jaeger) = or_skip(Jaeger::start().await) else {
        return;
    };
    let port = jaeger
        .otlp_grpc_endpoint()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let dir = tempdir();
    let (mut a, _b) = start_pair(
        dir.path(),
        &[
            "--enable-jaeger",
            "--jaeger-host",
            "127.0.0.1",
            "--jaeger-port",
            &port,
        ],
    )
    .await;
    a.get("/v1/status").await.unwrap();
    a.publish_when_ready("chat", "to jaeger").await;
    // The batch exporter has not sent these yet; SIGTERM must flush them.
    let status = a
        .terminate(Duration::from_secs(15))
        .expect("stops on SIGTERM");
    assert!(status.success(), "{status}");

    let peer = a.peer_id.clone();
    let ops = wait_for("A's spans in Jaeger", Duration::from_secs(30), || async {
        let traces = jaeger.traces("p2p-mpc").await.map_err(|e| e.to_string())?;
        let ops = operations_of(&traces, &peer);
        let wanted = ["http_request", "gossip_publish", "connection_established"];
        if wanted.iter().all(|w| ops.iter().any(|o| o == w)) {
            Ok(ops)
        } else {
            Err(format!("operations so far: {ops:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!ops.is_empty());
}
