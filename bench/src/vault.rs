//! The vault: a file put through the CLI on three holders (sealed in the CLI, coded 2-of-3,
//! stored with a two-phase commit) and got back through another node (shares released and
//! opened in the CLI, ciphertext rebuilt from two holders), each against the transfer test
//! moving the same number of bytes between the same two nodes in the same run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::aggregation::transfer;
use crate::nodes::{cluster, with_scratch};
use crate::results::Figure;

const MIB: u64 = 1024 * 1024;

fn cli(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .context("running the CLI")?;
    if !out.status.success() {
        bail!(
            "p2p-mpc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the vault benchmark on three fresh nodes.
pub async fn run(bin: &Path, dir: &Path, quick: bool) -> anyhow::Result<Vec<Figure>> {
    let nodes = cluster(bin, &dir.join("nodes"), 3, &[]).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let key = dir.join("client.key");
    let out = cli(bin, &["client", "keygen", "--out", key.to_str().unwrap()])?;
    let public = out
        .split_whitespace()
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .context("a public key from client keygen")?
        .to_string();
    let bytes = if quick { 4 * MIB } else { 64 * MIB };
    let file = dir.join("file.bin");
    let mut data = vec![0u8; bytes as usize];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut data);
    std::fs::write(&file, &data)?;
    let holders = nodes
        .iter()
        .map(|n| n.peer_id.clone())
        .collect::<Vec<_>>()
        .join(",");
    let rounds = if quick { 1 } else { 3 };
    let (mut put, mut get, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let name = format!("bench-{round}");
        let t0 = Instant::now();
        cli(
            bin,
            &[
                "vault",
                "put",
                &name,
                "--file",
                file.to_str().unwrap(),
                "--threshold",
                "2",
                "--client",
                &public,
                "--holders",
                &holders,
                "--api",
                &nodes[0].api,
            ],
        )?;
        put.push(t0.elapsed().as_secs_f64());
        let back = dir.join(format!("back-{round}.bin"));
        let t0 = Instant::now();
        cli(
            bin,
            &[
                "vault",
                "get",
                &name,
                "--client-key",
                key.to_str().unwrap(),
                "--out",
                back.to_str().unwrap(),
                "--member",
                &holders,
                "--api",
                &nodes[1].api,
            ],
        )?;
        get.push(t0.elapsed().as_secs_f64());
        ensure!(std::fs::read(&back)? == data, "the file came back changed");
        std::fs::remove_file(&back)?;
        base.push(transfer(&http, &nodes[0], &nodes[1], bytes).await?);
    }
    let rate = |secs: &mut Vec<f64>| {
        let median = crate::results::quantile(secs, 0.5);
        bytes as f64 / MIB as f64 / median.max(1e-9)
    };
    let (put, get, base) = (rate(&mut put), rate(&mut get), rate(&mut base));
    let mib = bytes / MIB;
    let baseline = "transfer test of the same bytes between two of the nodes";
    Ok(vec![
        Figure::against(
            format!("vault put {mib} MiB, 2-of-3, through the CLI (median of {rounds})"),
            put,
            "MiB/s",
            baseline,
            base,
        ),
        Figure::against(
            format!("vault get {mib} MiB through another node (median of {rounds})"),
            get,
            "MiB/s",
            baseline,
            base,
        ),
    ])
}

/// [`run`] with the `p2p-mpc` binary and a scratch directory.
pub async fn run_standalone(quick: bool) -> anyhow::Result<Vec<Figure>> {
    with_scratch(
        "vault",
        |bin, dir| async move { run(&bin, &dir, quick).await },
    )
    .await
}
