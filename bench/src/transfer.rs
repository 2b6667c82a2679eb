//! Point-to-point transfer: throughput of the transfer test (`POST /v1/peers/{id}/transfer`,
//! request-response in acknowledged chunks) between two node processes, over TCP (noise and
//! yamux) and over QUIC, against the bound of any encrypted stream: the same chunks sealed
//! with ChaCha20-Poly1305 and sent over loopback TCP in one process, no framing, streams or
//! acknowledgements. Raw TCP moving the same bytes is reported too.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use p2p_mpc_node::mpc::chunks::CHUNK_BYTES;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::aggregation::transfer;
use crate::nodes::{cluster_with_args, quic_pair, with_scratch};
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

/// The nonce of chunk `i` of one stream (each key seals one stream).
fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// A fresh ChaCha20-Poly1305 key, twice (one for each end).
fn stream_keys() -> anyhow::Result<(LessSafeKey, LessSafeKey)> {
    let mut key = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
    let make = || {
        UnboundKey::new(&CHACHA20_POLY1305, &key)
            .map(LessSafeKey::new)
            .map_err(|_| anyhow::anyhow!("a ChaCha20-Poly1305 key"))
    };
    Ok((make()?, make()?))
}

/// Seconds to move `bytes` over loopback TCP in the transfer test's chunks, each sealed with
/// ChaCha20-Poly1305 by the sender and opened by the receiver (a 4-byte length before each,
/// written with it), and get a one-byte answer: an upper bound for any encrypted stream,
/// with no frames smaller than a chunk, no multiplexing and no acknowledgements.
async fn sealed_tcp(bytes: u64) -> anyhow::Result<f64> {
    let (sealer, opener) = stream_keys()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 16);
        let (mut got, mut i) = (0u64, 0u64);
        while got < bytes {
            let len = s.read_u32().await? as usize;
            anyhow::ensure!(len <= CHUNK_BYTES + 16, "a sealed chunk of {len} bytes");
            buf.resize(len, 0);
            s.read_exact(&mut buf).await?;
            let plain = opener
                .open_in_place(nonce(i), Aad::empty(), &mut buf)
                .map_err(|_| anyhow::anyhow!("chunk {i} does not open"))?;
            got += plain.len() as u64;
            i += 1;
        }
        s.write_all(&[1]).await?;
        anyhow::Ok(())
    });
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let piece = vec![0xa5u8; CHUNK_BYTES];
    let mut body = Vec::with_capacity(CHUNK_BYTES + 16);
    let mut frame = Vec::with_capacity(4 + CHUNK_BYTES + 16);
    let t0 = Instant::now();
    let (mut left, mut i) = (bytes, 0u64);
    while left > 0 {
        let n = left.min(CHUNK_BYTES as u64) as usize;
        body.clear();
        body.extend_from_slice(&piece[..n]);
        sealer
            .seal_in_place_append_tag(nonce(i), Aad::empty(), &mut body)
            .map_err(|_| anyhow::anyhow!("sealing chunk {i}"))?;
        frame.clear();
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        s.write_all(&frame).await?;
        left -= n as u64;
        i += 1;
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

/// Runs the transfer benchmarks between two fresh nodes over TCP, and two over QUIC.
pub async fn run(bin: &Path, dir: &Path, quick: bool) -> anyhow::Result<Vec<Figure>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    // No QUIC listener: the pair's one connection is TCP.
    let tcp_pair = cluster_with_args(bin, &dir.join("tcp"), 2, &[]).await?;
    let quic = quic_pair(bin, &dir.join("quic")).await?;
    let mut figures = Vec::new();
    let sizes: &[(u64, usize)] = if quick {
        &[(MIB, 5), (16 * MIB, 1)]
    } else {
        &[(MIB, 30), (64 * MIB, 5)]
    };
    for &(bytes, rounds) in sizes {
        let mib = bytes / MIB;
        let sealed = median_rate(bytes, rounds, || sealed_tcp(bytes)).await?;
        let bound = "ChaCha20-Poly1305 sealed chunks on loopback TCP";
        for (over, pair) in [("TCP", &tcp_pair), ("QUIC", &quic)] {
            let rate =
                median_rate(bytes, rounds, || transfer(&http, &pair[0], &pair[1], bytes)).await?;
            figures.push(Figure::against(
                format!("point-to-point transfer over {over}, {mib} MiB (median of {rounds})"),
                rate,
                "MiB/s",
                bound,
                sealed,
            ));
        }
        let tcp = median_rate(bytes, rounds, || raw_tcp(bytes)).await?;
        figures.push(Figure::against(
            format!("the encrypted-stream bound, {mib} MiB (median of {rounds})"),
            sealed,
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
