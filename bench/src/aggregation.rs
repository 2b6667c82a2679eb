//! Secure aggregation through the HTTP API of five real node processes: report ingest at
//! L = 1 and L = 1,000 beside the same clients posting unsealed shares (the plaintext
//! baseline), ingest of reports signed by their clients (a task that names client keys)
//! beside the same reports to an open task, validated `sum` reports (Prio3, 8 bits) beside
//! raw reports of one value, and one vector of a million values from three
//! clients beside transfer tests of the same bytes over the same request-response protocol.
//!
//! The nodes run with the test-only `plaintext-shares` fault so that the same processes take
//! both sealed and unsealed reports (a node without it refuses unsealed shares).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::try_join_all;
use p2p_mpc_node::mpc::aggregation::Report;
use p2p_mpc_node::mpc::aggregation::client::{
    prepare_report, sign_report, unsealed_report_for_tests,
};
use p2p_mpc_node::mpc::aggregation::shares::ELEMENT_BYTES;
use p2p_mpc_node::mpc::aggregation::store::TaskInfo;
use serde_json::{Value, json};

use crate::nodes::{Node, cluster, post, with_scratch};
use crate::results::Figure;

/// Clients with a report in flight at once.
const CLIENTS: usize = 32;

/// Creates a task over every node, t = 2, taking reports of `clients` only (none: open);
/// `validated`: a Prio3 `sum` of 8 bits instead (n of n, length 1).
async fn create_task(
    http: &reqwest::Client,
    nodes: &[Node],
    length: u32,
    min_reports: u64,
    clients: &[String],
    validated: bool,
) -> anyhow::Result<TaskInfo> {
    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let body = if validated {
        json!({"participants": ids, "input": {"type": "sum", "bits": 8}, "min_reports": min_reports})
    } else {
        json!({"participants": ids, "threshold": 2, "length": length, "min_reports": min_reports, "clients": clients})
    };
    let v = post(http, format!("{}/v1/aggregations", nodes[0].api), body).await?;
    serde_json::from_value(v).context("task in the answer")
}

/// How the clients of [`ingest`] build their reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Unsealed shares (the plaintext baseline; needs the `plaintext-shares` fault).
    Plain,
    /// Sealed shares to an open task.
    Sealed,
    /// Sealed shares, each signed by the client's key, to a task that names the clients.
    Signed,
    /// One value of 8 bits with its Prio3 validity proof, to a validated `sum` task.
    Validated,
}

/// Submits `count` reports of `length` values, [`CLIENTS`] at a time, round robin over the
/// nodes; each client builds its report (sealed or not) just before posting it. Returns
/// accepted reports per second.
async fn ingest(
    http: &reqwest::Client,
    nodes: &[Node],
    length: u32,
    count: usize,
    kind: Kind,
) -> anyhow::Result<f64> {
    let keys: Vec<_> = match kind {
        Kind::Signed => (0..CLIENTS)
            .map(|_| p2p_mpc_node::mpc::policy::generate_client_key())
            .collect(),
        _ => Vec::new(),
    };
    let public: Vec<String> = keys
        .iter()
        .map(p2p_mpc_node::commands::client::public_key)
        .collect();
    let validated = kind == Kind::Validated;
    let task = Arc::new(create_task(http, nodes, length, 1, &public, validated).await?);
    let apis: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.api.clone()).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let keys = Arc::new(keys);
    let t0 = Instant::now();
    let clients = (0..CLIENTS).map(|c| {
        let (http, task, apis, next) = (http.clone(), task.clone(), apis.clone(), next.clone());
        let keys = keys.clone();
        async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                let (t, keys) = (task.clone(), keys.clone());
                let report: Report = tokio::task::spawn_blocking(move || {
                    let values = vec![i as u64 % 256; t.params.length as usize];
                    match kind {
                        Kind::Validated => prepare_report(&t, &values),
                        Kind::Plain => unsealed_report_for_tests(&t, &values),
                        Kind::Sealed => prepare_report(&t, &values),
                        Kind::Signed => {
                            let mut report = prepare_report(&t, &values)?;
                            sign_report(&t, &mut report, &keys[c])?;
                            Ok(report)
                        }
                    }
                })
                .await?
                .map_err(anyhow::Error::msg)?;
                let url = format!(
                    "{}/v1/aggregations/{}/reports",
                    apis[i % apis.len()],
                    task.params.task_id
                );
                post(&http, url, serde_json::to_value(&report)?).await?;
            }
        }
    });
    try_join_all(clients).await?;
    Ok(count as f64 / t0.elapsed().as_secs_f64())
}

/// Three clients submit vectors of `length` values at once (to nodes 0, 1 and 2), then node
/// 3 collects the sum. Returns seconds from the first submission to the sum (the clients'
/// reports are built beforehand).
async fn large_vector(http: &reqwest::Client, nodes: &[Node], length: u32) -> anyhow::Result<f64> {
    let task = create_task(http, nodes, length, 3, &[], false).await?;
    let reports: Vec<Value> = (0..3u64)
        .map(|c| {
            let values = vec![c + 1; length as usize];
            let report = prepare_report(&task, &values).map_err(anyhow::Error::msg)?;
            Ok(serde_json::to_value(report)?)
        })
        .collect::<anyhow::Result<_>>()?;
    let task_id = &task.params.task_id;
    let t0 = Instant::now();
    try_join_all(reports.into_iter().enumerate().map(|(c, report)| {
        post(
            http,
            format!("{}/v1/aggregations/{task_id}/reports", nodes[c].api),
            report,
        )
    }))
    .await?;
    let v = post(
        http,
        format!("{}/v1/aggregations/{task_id}/collect", nodes[3].api),
        json!({}),
    )
    .await?;
    let took = t0.elapsed().as_secs_f64();
    let sum = v["sum"].as_array().context("sum in the answer")?;
    anyhow::ensure!(
        sum.len() == length as usize && sum.iter().all(|x| x.as_u64() == Some(6)),
        "the collected sum is wrong"
    );
    Ok(took)
}

/// One transfer test through the API; returns seconds.
pub async fn transfer(
    http: &reqwest::Client,
    from: &Node,
    to: &Node,
    bytes: u64,
) -> anyhow::Result<f64> {
    let v = post(
        http,
        format!("{}/v1/peers/{}/transfer", from.api, to.peer_id),
        json!({ "bytes": bytes }),
    )
    .await?;
    v["seconds"].as_f64().context("seconds in the answer")
}

/// The network part of [`large_vector`] as bare transfers: each relay (nodes 0, 1, 2) sends a
/// sealed share to each of the four other nodes, all at once; then two of the other nodes
/// send a share sum to the collector (node 3). Returns seconds.
async fn large_vector_transfers(
    http: &reqwest::Client,
    nodes: &[Node],
    length: u32,
) -> anyhow::Result<f64> {
    let share = length as u64 * ELEMENT_BYTES as u64;
    let t0 = Instant::now();
    let mut relays = Vec::new();
    for relay in 0..3 {
        for owner in (0..nodes.len()).filter(|o| *o != relay) {
            relays.push(transfer(http, &nodes[relay], &nodes[owner], share + 16));
        }
    }
    try_join_all(relays).await?;
    try_join_all([
        transfer(http, &nodes[4], &nodes[3], share),
        transfer(http, &nodes[0], &nodes[3], share),
    ])
    .await?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Ingest of `count` reports of kind `a` against kind `b`, alternating (ABBA, half the
/// reports each time) so that drift of a shared machine falls on both alike; reports/s of
/// each.
async fn abba(
    http: &reqwest::Client,
    nodes: &[Node],
    length: u32,
    count: usize,
    a: Kind,
    b: Kind,
) -> anyhow::Result<(f64, f64)> {
    let half = count.div_ceil(2);
    let mut seconds = [0.0f64; 2];
    for first in [true, false, false, true] {
        let kind = if first { a } else { b };
        let rate = ingest(http, nodes, length, half, kind).await?;
        seconds[usize::from(first)] += half as f64 / rate;
    }
    Ok((
        2.0 * half as f64 / seconds[1],
        2.0 * half as f64 / seconds[0],
    ))
}

/// Runs the aggregation benchmarks on one 5-node cluster.
pub async fn run(bin: &Path, dir: &Path, quick: bool) -> anyhow::Result<Vec<Figure>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let nodes = cluster(bin, dir, 5, &[("P2P_MPC_TEST_FAULT", "plaintext-shares")]).await?;
    let mut figures = Vec::new();
    for (length, count) in [
        (1u32, if quick { 100usize } else { 3000 }),
        (1000, if quick { 50 } else { 1000 }),
    ] {
        let (sealed, plain) = abba(&http, &nodes, length, count, Kind::Sealed, Kind::Plain).await?;
        figures.push(Figure::against(
            format!("aggregation ingest, L = {length}, {CLIENTS} clients in flight"),
            sealed,
            "reports/s",
            "same clients, unsealed shares",
            plain,
        ));
    }
    let count = if quick { 100usize } else { 3000 };
    let (signed, open) = abba(&http, &nodes, 1, count, Kind::Signed, Kind::Sealed).await?;
    figures.push(Figure::against(
        format!("aggregation ingest, L = 1, {CLIENTS} clients in flight, reports signed by their clients"),
        signed,
        "reports/s",
        "same clients, open task (unsigned reports)",
        open,
    ));
    let (validated, raw) = abba(&http, &nodes, 1, count, Kind::Validated, Kind::Sealed).await?;
    figures.push(Figure::against(
        format!("aggregation ingest, {CLIENTS} clients in flight, validated sum of 8 bits (Prio3, 5 of 5)"),
        validated,
        "reports/s",
        "same clients, raw reports of one value (Shamir, t = 2)",
        raw,
    ));
    let length = if quick { 100_000 } else { 1_000_000 };
    let took = large_vector(&http, &nodes, length).await?;
    let base = large_vector_transfers(&http, &nodes, length).await?;
    figures.push(Figure::against(
        format!("aggregation L = {length}, 3 clients: submit to sum"),
        took,
        "s",
        "transfer tests of the same bytes",
        base,
    ));
    Ok(figures)
}

/// [`run`] with the `p2p-mpc` binary and a scratch directory.
pub async fn run_standalone(quick: bool) -> anyhow::Result<Vec<Figure>> {
    with_scratch(
        "agg",
        |bin, dir| async move { run(&bin, &dir, quick).await },
    )
    .await
}
