//! Gossip: a 5-node mesh, 256-byte messages published by one node (typed on its stdin, so
//! no HTTP in the path) and received by the four others (read from their stdout). Baseline:
//! raw TCP fan-out of the same messages to four receivers on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::nodes::{Node, node_binary, peers};
use crate::results::{Figure, quantile};

const MESSAGE: usize = 256;
const TOPIC: &str = "bench";

/// What one receiver saw: (sequence number, latency in seconds, arrival).
#[derive(Default)]
struct Received {
    probes: usize,
    messages: Vec<(u64, f64, Instant)>,
}

fn message(seq: u64, sent_ns: u128) -> String {
    let mut m = format!("{seq:010} {sent_ns:020} ");
    while m.len() < MESSAGE {
        m.push('x');
    }
    m
}

fn parse(text: &str) -> Option<(u64, u128)> {
    let mut parts = text.split(' ');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

struct Delivery {
    /// Why messages went missing, from the nodes' logs (libp2p run only).
    publish_failures: usize,
    receiver_event_drops: bool,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    delivered_fraction: f64,
}

fn summarize(received: &[Arc<Mutex<Received>>], sent: u64, first_send: Instant) -> Delivery {
    let mut latencies = Vec::new();
    let mut last = first_send;
    let mut everywhere = vec![0usize; sent as usize];
    for r in received {
        let r = r.lock().unwrap();
        for (seq, lat, at) in &r.messages {
            latencies.push(*lat);
            last = last.max(*at);
            if let Some(c) = everywhere.get_mut(*seq as usize) {
                *c += 1;
            }
        }
    }
    let complete = everywhere.iter().filter(|c| **c == received.len()).count();
    let secs = (last - first_send).as_secs_f64().max(1e-9);
    Delivery {
        publish_failures: 0,
        receiver_event_drops: false,
        per_second: complete as f64 / secs,
        p50_ms: quantile(&mut latencies.clone(), 0.5) * 1e3,
        p99_ms: quantile(&mut latencies, 0.99) * 1e3,
        delivered_fraction: complete as f64 / sent as f64,
    }
}

async fn wait_all(
    received: &[Arc<Mutex<Received>>],
    want: usize,
    timeout: Duration,
    probes: bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let done = received.iter().all(|r| {
            let r = r.lock().unwrap();
            if probes {
                r.probes > 0
            } else {
                r.messages.len() >= want
            }
        });
        if done {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn libp2p_mesh(bin: &Path, count: u64) -> anyhow::Result<Delivery> {
    let dir = tempfile_dir()?;
    let epoch = Instant::now();
    let args = |boot: Option<&str>| {
        let mut a = vec!["-t".to_string(), TOPIC.to_string()];
        if let Some(b) = boot {
            a.push("--bootnode".into());
            a.push(b.to_string());
        }
        a
    };
    let mut publisher = Node::start(bin, &dir.join("n0"), &args(None), Box::new(|_, _| {}))?;
    let mut receivers = Vec::new();
    let mut received = Vec::new();
    for i in 1..5 {
        let r = Arc::new(Mutex::new(Received::default()));
        let sink = r.clone();
        let prefix = format!("[{TOPIC}] ");
        let node = Node::start(
            bin,
            &dir.join(format!("n{i}")),
            &args(Some(&publisher.tcp_addr)),
            Box::new(move |line, at| {
                let Some(rest) = line.strip_prefix(&prefix) else {
                    return;
                };
                let Some((_, text)) = rest.split_once(": ") else {
                    return;
                };
                let mut r = sink.lock().unwrap();
                if text == "probe" {
                    r.probes += 1;
                } else if let Some((seq, sent_ns)) = parse(text) {
                    let lat = (at - epoch).as_nanos().saturating_sub(sent_ns) as f64 / 1e9;
                    r.messages.push((seq, lat, at));
                }
            }),
        )?;
        receivers.push(node);
        received.push(r);
    }
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while peers(&http, &publisher).await?.len() < 4 {
        if Instant::now() > deadline {
            bail!(
                "the publisher did not connect to 4 peers:\n{}",
                publisher.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The gossip mesh forms over a few heartbeats: probe until everyone hears the publisher.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publisher.type_line("probe")?;
        if wait_all(&received, 0, Duration::from_millis(300), true).await {
            break;
        }
        if Instant::now() > deadline {
            bail!("the mesh did not form");
        }
    }
    let mut stdin = publisher.stdin.take().context("publisher stdin")?;
    let first_send = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(64 * 1024);
        for seq in 0..count {
            buf.clear();
            buf.extend_from_slice(message(seq, epoch.elapsed().as_nanos()).as_bytes());
            buf.push(b'\n');
            stdin.write_all(&buf)?;
        }
        stdin.flush()
    });
    // Until everything arrived, or nothing more arrives for 3 s once the writer is done
    // (lost messages are reported as the delivered fraction, not waited for).
    let total = |r: &[Arc<Mutex<Received>>]| {
        r.iter()
            .map(|x| x.lock().unwrap().messages.len())
            .sum::<usize>()
    };
    let (mut last_total, mut last_change) = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !wait_all(&received, count as usize, Duration::from_millis(200), false).await {
        let now_total = total(&received);
        if now_total != last_total {
            (last_total, last_change) = (now_total, Instant::now());
        }
        let quiet = writer.is_finished() && last_change.elapsed() > Duration::from_secs(3);
        if quiet || Instant::now() > deadline {
            break;
        }
    }
    writer.join().expect("writer thread")?;
    let mut delivery = summarize(&received, count, first_send);
    delivery.publish_failures = publisher
        .log()
        .lines()
        .filter(|l| l.starts_with("chat: not sent"))
        .count();
    delivery.receiver_event_drops = receivers
        .iter()
        .any(|r| r.log().contains("network event queue full"));
    if delivery.publish_failures > 0 {
        let first = publisher
            .log()
            .lines()
            .find(|l| l.starts_with("chat: not sent"))
            .unwrap_or_default()
            .to_string();
        eprintln!(
            "gossip: {} publishes failed, e.g. {first}",
            delivery.publish_failures
        );
    }
    if delivery.receiver_event_drops {
        eprintln!("gossip: a receiver dropped network events (its event queue was full)");
    }
    drop(receivers);
    Ok(delivery)
}

fn tcp_fanout(count: u64) -> anyhow::Result<Delivery> {
    let epoch = Instant::now();
    let mut received = Vec::new();
    let mut streams = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..4 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let out = TcpStream::connect(listener.local_addr()?)?;
        out.set_nodelay(true)?;
        let (mut input, _) = listener.accept()?;
        let r = Arc::new(Mutex::new(Received::default()));
        let sink = r.clone();
        readers.push(std::thread::spawn(move || {
            let mut frame = [0u8; MESSAGE];
            for _ in 0..count {
                if input.read_exact(&mut frame).is_err() {
                    break;
                }
                let at = Instant::now();
                if let Some((seq, sent_ns)) = std::str::from_utf8(&frame).ok().and_then(parse) {
                    let lat = (at - epoch).as_nanos().saturating_sub(sent_ns) as f64 / 1e9;
                    sink.lock().unwrap().messages.push((seq, lat, at));
                }
            }
        }));
        streams.push(out);
        received.push(r);
    }
    let first_send = Instant::now();
    for seq in 0..count {
        let m = message(seq, epoch.elapsed().as_nanos());
        for s in &mut streams {
            s.write_all(m.as_bytes())?;
        }
    }
    for r in readers {
        let _ = r.join();
    }
    Ok(summarize(&received, count, first_send))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("p2p-mpc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs the gossip benchmark.
pub async fn run(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let bin = node_binary()?;
    let count = if quick { 2_000 } else { 20_000 };
    let mesh = libp2p_mesh(&bin, count).await?;
    let tcp = tcp_fanout(count)?;
    let _ = std::fs::remove_dir_all(tempfile_dir()?);
    Ok(vec![
        Figure::against(
            "gossip 5 nodes 256 B: delivered to all",
            mesh.per_second,
            "msg/s",
            "raw TCP fan-out",
            tcp.per_second,
        ),
        Figure::against(
            "gossip 5 nodes 256 B: p50 latency",
            mesh.p50_ms,
            "ms",
            "raw TCP fan-out",
            tcp.p50_ms,
        ),
        Figure::against(
            "gossip 5 nodes 256 B: p99 latency",
            mesh.p99_ms,
            "ms",
            "raw TCP fan-out",
            tcp.p99_ms,
        ),
        Figure::plain(
            "gossip 5 nodes 256 B: delivered fraction",
            mesh.delivered_fraction,
            "fraction",
        ),
        Figure::plain(
            "gossip 5 nodes 256 B: publishes refused by the publisher",
            mesh.publish_failures as f64,
            "count",
        ),
    ])
}
