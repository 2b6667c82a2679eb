//! Point-to-point transfer: throughput of the transfer test (`POST /v1/peers/{id}/transfer`,
//! request-response over noise and yamux, in acknowledged chunks) between two node
//! processes, beside raw TCP on loopback moving the same bytes.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::aggregation::transfer;
use crate::nodes::{cluster, with_scratch};
use crate::results::{Figure, quantile};

const MIB: u64 = 1024 * 1024;

/// Seconds for raw TCP to move `bytes` from one socket to another and get a one-byte answer.
async fn raw_tcp(bytes: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "raw TCP sender closed early");
            got += n as u64;
        }
        s.write_all(&[1]).await?;
        anyhow::Ok(())
    });
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let piece = vec![0xa5u8; 192 * 1024];
    let t0 = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        s.write_all(&piece[..n]).await?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await?;
    let took = t0.elapsed().as_secs_f64();
    receiver.await??;
    Ok(took)
}

/// Median MiB/s over `rounds` runs of `f`, which returns seconds for `bytes`.
async fn median_rate<F, Fut>(bytes: u64, rounds: usize, mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let mut rates = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let secs = f().await?;
        rates.push(bytes as f64 / MIB as f64 / secs.max(1e-9));
    }
    Ok(quantile(&mut rates, 0.5))
}

/// Runs the transfer benchmarks between two fresh nodes.
pub async fn run(bin: &Path, dir: &Path, quick: bool) -> anyhow::Result<Vec<Figure>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let nodes = cluster(bin, dir, 2, &[]).await?;
    let mut figures = Vec::new();
    let sizes: &[(u64, usize)] = if quick {
        &[(MIB, 5), (16 * MIB, 1)]
    } else {
        &[(MIB, 30), (64 * MIB, 5)]
    };
    for &(bytes, rounds) in sizes {
        let libp2p = median_rate(bytes, rounds, || {
            transfer(&http, &nodes[0], &nodes[1], bytes)
        })
        .await?;
        let tcp = median_rate(bytes, rounds, || raw_tcp(bytes)).await?;
        figures.push(Figure::against(
            format!(
                "point-to-point transfer, {} MiB (median of {rounds})",
                bytes / MIB
            ),
            libp2p,
            "MiB/s",
            "raw TCP on loopback",
            tcp,
        ));
    }
    Ok(figures)
}

/// [`run`] with the `p2p-mpc` binary and a scratch directory.
pub async fn run_standalone(quick: bool) -> anyhow::Result<Vec<Figure>> {
    with_scratch("transfer", |bin, dir| async move {
        run(&bin, &dir, quick).await
    })
    .await
}
