//! FROST: DKG and threshold signing through the HTTP API of real node processes, beside the
//! frost crates doing the same rounds in one process with no network, for both signature
//! schemes (`frost-ed25519`, `frost-secp256k1-tr`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use frost_core::{self as frost, Ciphersuite};
use frost_ed25519::Ed25519Sha512 as Ed;
use frost_secp256k1_tr::Secp256K1Sha256TR as Tr;
use serde_json::json;

use p2p_mpc_testenv::metric_sum;

use crate::nodes::{Node, cluster, cluster_with_args, metrics_page, node_binary, post};
use crate::results::{Figure, quantile};

/// Signatures the `nodes` coordinated, summed: (presigned, two rounds).
async fn signature_paths(http: &reqwest::Client, nodes: &[Node]) -> anyhow::Result<(f64, f64)> {
    let (mut presigned, mut two_round) = (0.0, 0.0);
    for n in nodes {
        let page = metrics_page(http, n).await?;
        let path = |p| [("path", p)];
        presigned += metric_sum(&page, "p2p_mpc_signatures_total", &path("presigned"));
        two_round += metric_sum(&page, "p2p_mpc_signatures_total", &path("two_round"));
    }
    Ok((presigned, two_round))
}

/// In process: one signature of `t` signers, all rounds (commit, sign, aggregate, verify).
fn inprocess_sign<C: Ciphersuite>(
    key_packages: &[frost::keys::KeyPackage<C>],
    pubkeys: &frost::keys::PublicKeyPackage<C>,
    msg: &[u8],
) {
    let mut rng = rand_core::OsRng;
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for kp in key_packages {
        let (n, c) = frost::round1::commit(kp.signing_share(), &mut rng);
        nonces.insert(*kp.identifier(), n);
        commitments.insert(*kp.identifier(), c);
    }
    let package = frost::SigningPackage::new(commitments, msg);
    let mut shares = BTreeMap::new();
    for kp in key_packages {
        let share = frost::round2::sign(&package, &nonces[kp.identifier()], kp).expect("sign");
        shares.insert(*kp.identifier(), share);
    }
    let sig = frost::aggregate(&package, &shares, pubkeys).expect("aggregate");
    pubkeys.verifying_key().verify(msg, &sig).expect("verify");
}

/// In-process signing latencies (seconds) of `t`-of-`n`.
fn inprocess_signing<C: Ciphersuite>(t: u16, n: u16, count: usize) -> Vec<f64> {
    let (shares, pubkeys) = frost::keys::generate_with_dealer::<C, _>(
        n,
        t,
        frost::keys::IdentifierList::Default,
        &mut rand_core::OsRng,
    )
    .expect("dealer");
    let kps: Vec<frost::keys::KeyPackage<C>> = shares
        .into_values()
        .take(t as usize)
        .map(|s| frost::keys::KeyPackage::try_from(s).expect("key package"))
        .collect();
    (0..count)
        .map(|i| {
            let t0 = Instant::now();
            inprocess_sign(&kps, &pubkeys, format!("message {i}").as_bytes());
            t0.elapsed().as_secs_f64()
        })
        .collect()
}

/// In-process DKG of `t`-of-`n`, all three parts for every participant (seconds).
fn inprocess_dkg<C: Ciphersuite>(t: u16, n: u16) -> f64 {
    let t0 = Instant::now();
    let ids: Vec<frost::Identifier<C>> = (1..=n)
        .map(|i| frost::Identifier::try_from(i).expect("id"))
        .collect();
    let mut secrets1 = BTreeMap::new();
    let mut round1 = BTreeMap::new();
    for id in &ids {
        let (s, p) = frost::keys::dkg::part1(*id, n, t, rand_core::OsRng).expect("part1");
        secrets1.insert(*id, s);
        round1.insert(*id, p);
    }
    let mut secrets2 = BTreeMap::new();
    let mut round2_for: BTreeMap<
        frost::Identifier<C>,
        BTreeMap<frost::Identifier<C>, frost::keys::dkg::round2::Package<C>>,
    > = BTreeMap::new();
    for id in &ids {
        let others: BTreeMap<_, _> = round1
            .iter()
            .filter(|(k, _)| *k != id)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let (s, packages) =
            frost::keys::dkg::part2(secrets1.remove(id).expect("secret"), &others).expect("part2");
        secrets2.insert(*id, s);
        for (to, p) in packages {
            round2_for.entry(to).or_default().insert(*id, p);
        }
    }
    for id in &ids {
        let others: BTreeMap<_, _> = round1
            .iter()
            .filter(|(k, _)| *k != id)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        frost::keys::dkg::part3(&secrets2[id], &others, &round2_for[id]).expect("part3");
    }
    t0.elapsed().as_secs_f64()
}

/// DKG through the API of node 0 with every node as participant and the signing policy
/// `policy`; returns (seconds, key id).
async fn api_dkg(
    http: &reqwest::Client,
    nodes: &[Node],
    t: usize,
    policy: serde_json::Value,
) -> anyhow::Result<(f64, String)> {
    api_dkg_of(http, nodes, "ed25519", t, policy).await
}

/// [`api_dkg`] of a key of `scheme`.
async fn api_dkg_of(
    http: &reqwest::Client,
    nodes: &[Node],
    scheme: &str,
    t: usize,
    policy: serde_json::Value,
) -> anyhow::Result<(f64, String)> {
    let participants: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    let t0 = Instant::now();
    let v = post(
        http,
        format!("{}/v1/keys", nodes[0].api),
        json!({"scheme": scheme, "threshold": t, "participants": participants, "policy": policy}),
    )
    .await?;
    let took = t0.elapsed().as_secs_f64();
    let key = v["key_id"]
        .as_str()
        .context("key_id in the answer")?
        .to_string();
    Ok((took, key))
}

/// Runs the FROST benchmarks.
pub async fn run(quick: bool) -> anyhow::Result<(Vec<Figure>, Option<u64>)> {
    let bin = node_binary()?;
    let dir = std::env::temp_dir().join(format!("p2p-mpc-bench-frost-{}", std::process::id()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut figures = Vec::new();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;

    // 3-of-5: DKG, sequential signing, 64 in flight.
    let nodes = cluster(&bin, &dir.join("c5"), 5, &[]).await?;
    let (dkg5, key) = api_dkg(&http, &nodes, 3, json!({"open": true})).await?;
    let base_dkg5 = inprocess_dkg::<Ed>(3, 5);
    figures.push(Figure::against(
        "DKG 3-of-5",
        dkg5 * 1e3,
        "ms",
        "frost-ed25519 in one process",
        base_dkg5 * 1e3,
    ));

    let sequential = if quick { 50 } else { 1000 };
    let mut lat = Vec::with_capacity(sequential);
    for i in 0..sequential {
        let url = format!("{}/v1/keys/{key}/sign", nodes[i % 5].api);
        let t0 = Instant::now();
        post(&http, url, json!({"message": format!("{i:08x}")})).await?;
        lat.push(t0.elapsed().as_secs_f64());
    }
    let mut base = inprocess_signing::<Ed>(3, 5, sequential);
    let (p50, p99) = (quantile(&mut lat.clone(), 0.5), quantile(&mut lat, 0.99));
    let (b50, b99) = (quantile(&mut base.clone(), 0.5), quantile(&mut base, 0.99));
    figures.push(Figure::against(
        "FROST sign 3-of-5 sequential: p50",
        p50 * 1e3,
        "ms",
        "frost-ed25519 in one process",
        b50 * 1e3,
    ));
    figures.push(Figure::against(
        "FROST sign 3-of-5 sequential: p99",
        p99 * 1e3,
        "ms",
        "frost-ed25519 in one process",
        b99 * 1e3,
    ));

    // How many of those were presigned (one round trip), from the coordinators' metrics.
    let (presigned, two_round) = signature_paths(&http, &nodes).await?;
    figures.push(Figure::plain(
        "FROST sign 3-of-5 sequential: presigned (one round trip), share of signatures",
        presigned / (presigned + two_round).max(1.0),
        "fraction",
    ));

    // The same signatures on a cluster with presigning off: every one takes two rounds.
    let two_round_nodes = cluster_with_args(
        &bin,
        &dir.join("c5-two-round"),
        5,
        &["--presign-pool-size".into(), "0".into()],
    )
    .await?;
    let (_, two_round_key) = api_dkg(&http, &two_round_nodes, 3, json!({"open": true})).await?;
    let mut two_round_lat = Vec::with_capacity(sequential);
    for i in 0..sequential {
        let url = format!(
            "{}/v1/keys/{two_round_key}/sign",
            two_round_nodes[i % 5].api
        );
        let t0 = Instant::now();
        post(&http, url, json!({"message": format!("{i:08x}")})).await?;
        two_round_lat.push(t0.elapsed().as_secs_f64());
    }
    drop(two_round_nodes);
    figures.push(Figure::against(
        "FROST sign 3-of-5 sequential: p50, presigned against two rounds",
        p50 * 1e3,
        "ms",
        "presigning off (--presign-pool-size 0), same machine",
        quantile(&mut two_round_lat, 0.5) * 1e3,
    ));

    // The same for a secp256k1-tr (BIP340/Taproot) key on the same cluster: DKG and
    // sequential signing, against frost-secp256k1-tr in one process, and against Ed25519.
    let (tr_dkg5, tr_key) =
        api_dkg_of(&http, &nodes, "secp256k1-tr", 3, json!({"open": true})).await?;
    figures.push(Figure::against(
        "DKG 3-of-5, secp256k1-tr",
        tr_dkg5 * 1e3,
        "ms",
        "frost-secp256k1-tr in one process",
        inprocess_dkg::<Tr>(3, 5) * 1e3,
    ));
    let mut tr_lat = Vec::with_capacity(sequential);
    for i in 0..sequential {
        let url = format!("{}/v1/keys/{tr_key}/sign", nodes[i % 5].api);
        let t0 = Instant::now();
        post(&http, url, json!({"message": format!("{i:08x}")})).await?;
        tr_lat.push(t0.elapsed().as_secs_f64());
    }
    let mut tr_base = inprocess_signing::<Tr>(3, 5, sequential);
    let tr50 = quantile(&mut tr_lat.clone(), 0.5);
    figures.push(Figure::against(
        "FROST sign 3-of-5 sequential, secp256k1-tr: p50",
        tr50 * 1e3,
        "ms",
        "frost-secp256k1-tr in one process",
        quantile(&mut tr_base.clone(), 0.5) * 1e3,
    ));
    figures.push(Figure::against(
        "FROST sign 3-of-5 sequential, secp256k1-tr: p99",
        quantile(&mut tr_lat, 0.99) * 1e3,
        "ms",
        "frost-secp256k1-tr in one process",
        quantile(&mut tr_base, 0.99) * 1e3,
    ));
    figures.push(Figure::against(
        "FROST sign 3-of-5 sequential, secp256k1-tr against ed25519: p50",
        tr50 * 1e3,
        "ms",
        "an ed25519 key, same cluster",
        p50 * 1e3,
    ));

    // The same with a key whose policy needs one client authorization: every holder checks
    // the Ed25519 signature and records the request id on disk before round 1.
    let client = p2p_mpc_node::mpc::policy::generate_client_key();
    let client_public = hex::encode(client.verifying_key().as_bytes());
    let (_, authorized_key) =
        api_dkg(&http, &nodes, 3, json!({"clients": [client_public]})).await?;
    let mut auth_lat = Vec::with_capacity(sequential);
    for i in 0..sequential {
        let url = format!("{}/v1/keys/{authorized_key}/sign", nodes[i % 5].api);
        let message = format!("{i:08x}");
        let bytes = hex::decode(&message)?;
        let t0 = Instant::now();
        let coordinator: libp2p::PeerId = nodes[i % 5].peer_id.parse()?;
        let authorization = p2p_mpc_node::mpc::policy::authorize(
            &client,
            &authorized_key,
            &coordinator,
            &bytes,
            p2p_mpc_node::mpc::policy::now() + 60,
        );
        post(
            &http,
            url,
            json!({"message": message, "authorizations": [authorization]}),
        )
        .await?;
        auth_lat.push(t0.elapsed().as_secs_f64());
    }
    figures.push(Figure::against(
        "FROST sign 3-of-5 sequential, client-authorized key: p50",
        quantile(&mut auth_lat, 0.5) * 1e3,
        "ms",
        "an open key, same cluster",
        p50 * 1e3,
    ));

    let in_flight = 64;
    let run_for = Duration::from_secs(if quick { 3 } else { 15 });
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let apis: Vec<String> = nodes.iter().map(|n| n.api.clone()).collect();
    let t0 = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|w| {
            let (http, apis, key) = (http.clone(), apis.clone(), key.clone());
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let url = format!("{}/v1/keys/{key}/sign", apis[(w + i as usize) % apis.len()]);
                    match post(&http, url, json!({"message": format!("{w:04x}{i:012x}")})).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            })
        })
        .collect();
    let mut rss_under_load = None;
    while t0.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_under_load = rss_under_load.max(nodes[0].rss_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rate = done.load(Ordering::Relaxed) as f64 / secs;
    let base_rate = cores / b50.max(1e-9);
    figures.push(Figure::against(
        "FROST sign 3-of-5, 64 in flight: whole cluster",
        rate,
        "sig/s",
        format!("in one process x {cores} cores"),
        base_rate,
    ));
    figures.push(Figure::plain(
        "FROST sign 64 in flight: failed requests",
        failed.load(Ordering::Relaxed) as f64,
        "count",
    ));
    drop(nodes);

    if !quick {
        // For 100 processes on this machine's cores (every participant verifies 99 shares
        // against 67 commitments at the same moment) the default 10 s round deadline can pass;
        // it is raised so that the figure is measured, not a timeout.
        // A DKG has five rounds: the client waits for all of them.
        let dkg_http = reqwest::Client::builder()
            .timeout(Duration::from_secs(900))
            .build()?;
        for (t, n, round_timeout) in [(20u16, 30u16, "10"), (67, 100, "120")] {
            let nodes = cluster_with_args(
                &bin,
                &dir.join(format!("c{n}")),
                n.into(),
                &["--mpc-round-timeout".into(), round_timeout.into()],
            )
            .await?;
            let (took, _) = api_dkg(&dkg_http, &nodes, t.into(), json!({"open": true})).await?;
            drop(nodes);
            figures.push(Figure::against(
                format!("DKG {t}-of-{n}"),
                took * 1e3,
                "ms",
                "frost-ed25519 in one process",
                inprocess_dkg::<Ed>(t, n) * 1e3,
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((figures, rss_under_load))
}
