//! Footprint: node start to listening, node RSS when idle.

use std::time::Duration;

use crate::nodes::{Node, node_binary};
use crate::results::{Figure, quantile};

/// Runs the footprint benchmark.
pub async fn run(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let bin = node_binary()?;
    let dir = std::env::temp_dir().join(format!("p2p-mpc-bench-fp-{}", std::process::id()));
    let starts = if quick { 3 } else { 10 };
    let mut times = Vec::new();
    for i in 0..starts {
        let node = Node::start(
            &bin,
            &dir.join(format!("s{i}")),
            &["-t".into(), "bench".into()],
            Box::new(|_, _| {}),
        )
        .await?;
        times.push(node.start_to_listening.as_secs_f64() * 1e3);
    }
    let node = Node::start(
        &bin,
        &dir.join("idle"),
        &["-t".into(), "bench".into()],
        Box::new(|_, _| {}),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = node.rss_bytes().unwrap_or(0) as f64 / 1048576.0;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(vec![
        Figure::plain(
            "node start to listening (median)",
            quantile(&mut times, 0.5),
            "ms",
        ),
        Figure::plain("node RSS idle", rss, "MiB"),
    ])
}
