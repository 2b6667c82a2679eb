//! The `p2p-mpc-operator` binary against the real test API server: it serves health and
//! metrics, reconciles, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::CustomResourceExt;
use kube::api::{Api, PostParams};
use p2p_mpc_operator::crd::MpcCluster;
use p2p_mpc_testenv::{ControlPlane, or_skip, wait_for};
use serde_json::json;

mod common;
use common::{DEADLINE, cluster, install_crd, namespace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_binary_serves_reconciles_and_stops_on_sigterm() {
    let Some(plane) = or_skip(ControlPlane::start_or_connect().await) else {
        return;
    };
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    install_crd(&client, MpcCluster::crd()).await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_p2p-mpc-operator"))
        .args([
            "run",
            "--metrics-port",
            "0",
            "--health-port",
            "0",
            "--bind-address",
            "127.0.0.1",
        ])
        .args([
            "--log-format",
            "text",
            "--default-image",
            "example/p2p-mpc:1",
        ])
        .env("KUBECONFIG", plane.kubeconfig())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let field = |lines: &[String], name: &str| {
        lines.iter().find_map(|l| {
            let start = l.find(&format!("{name}="))? + name.len() + 1;
            Some(l[start..].split_whitespace().next()?.to_string())
        })
    };
    let (metrics, health) = wait_for("the operator to start", DEADLINE, || async {
        let lines = log.lock().unwrap().clone();
        match (field(&lines, "metrics_addr"), field(&lines, "health_addr")) {
            (Some(m), Some(h)) => Ok((m, h)),
            _ => Err(lines.join("\n")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let http = reqwest::Client::new();
    let status = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(status(format!("http://{health}/healthz")).await, 200);
    wait_for("/readyz to answer 200", DEADLINE, || async {
        match status(format!("http://{health}/readyz")).await {
            200 => Ok(()),
            s => Err(s.to_string()),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // It reconciles: the default image lands in the StatefulSet, the metrics count it.
    let ns = namespace(&client).await;
    Api::<MpcCluster>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &cluster("bin", json!({"replicas": 1})),
        )
        .await
        .unwrap();
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = wait_for("the StatefulSet", DEADLINE, || async {
        sets.get_opt("bin-0")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_string())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let image = sts.spec.template.spec.unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some("example/p2p-mpc:1"));
    // The StatefulSet is applied during the reconciliation, which is counted once it ends.
    let page = wait_for("a counted reconciliation on /metrics", DEADLINE, || async {
        let page = http
            .get(format!("http://{metrics}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let ok = p2p_mpc_testenv::metric_sum(
            &page,
            "p2p_mpc_operator_reconciliations_total",
            &[("result", "ok")],
        );
        if ok >= 1.0 {
            Ok(page)
        } else {
            Err(format!("no ok reconciliation counted yet:\n{page}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Every operator series the chart's Grafana dashboard reads is on the page.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/p2p-mpc-operator/dashboards/p2p-mpc.json"),
    )
    .unwrap();
    let read: std::collections::BTreeSet<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("p2p_mpc_operator_"))
        .collect();
    assert!(read.len() >= 3, "{read:?}");
    for name in read {
        assert!(
            p2p_mpc_testenv::metric_samples(&page, name, &[])
                .next()
                .is_some(),
            "the Grafana dashboard reads {name}, which the operator does not serve:\n{page}"
        );
    }

    // SIGTERM: a clean exit within a few seconds.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "no exit within 15 s of SIGTERM:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        exit.success(),
        "exit status {exit}:\n{}",
        log.lock().unwrap().join("\n")
    );
}
