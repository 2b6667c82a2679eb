//! Gossip: a 5-node mesh, 256-byte messages published by one node (typed on its stdin, so
//! no HTTP in the path) and received by the four others (read from their stdout). Baseline:
//! raw TCP fan-out of the same messages to four receivers on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::ChildStdin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::nodes::{Node, metrics_page, node_binary, peers};
use crate::results::{Figure, quantile};
use p2p_mpc_testenv::metric_sum;

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
    /// Copies of each message a receiver's gossipsub read (and verified the signature of,
    /// before it could tell a copy from the first), per message delivered (libp2p run only).
    copies_per_message: f64,
}

/// Delivery of the messages with sequence numbers `first..first + sent`.
fn summarize(
    received: &[Arc<Mutex<Received>>],
    first: u64,
    sent: u64,
    first_send: Instant,
) -> Delivery {
    let mut latencies = Vec::new();
    let mut last = first_send;
    let mut everywhere = vec![0usize; sent as usize];
    for r in received {
        let r = r.lock().unwrap();
        for (seq, lat, at) in &r.messages {
            let Some(c) = seq
                .checked_sub(first)
                .and_then(|i| everywhere.get_mut(i as usize))
            else {
                continue;
            };
            *c += 1;
            latencies.push(*lat);
            last = last.max(*at);
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
        copies_per_message: 0.0,
    }
}

/// Messages of the benchmark's topic the receivers' gossipsub read, all copies and first
/// copies, summed over the receivers (from their `libp2p_gossipsub_*` metrics).
async fn copies_read(http: &reqwest::Client, receivers: &[Node]) -> anyhow::Result<(f64, f64)> {
    let (mut all, mut first) = (0.0, 0.0);
    for r in receivers {
        let page = metrics_page(http, r).await?;
        let hash = [("hash", TOPIC)];
        all += metric_sum(
            &page,
            "libp2p_gossipsub_topic_msg_recv_counts_unfiltered_total",
            &hash,
        );
        first += metric_sum(&page, "libp2p_gossipsub_topic_msg_recv_counts_total", &hash);
    }
    Ok((all, first))
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

/// A 5-node mesh; for each of `runs` (message count, publish rate or as fast as possible),
/// the delivery of its messages.
async fn libp2p_mesh(bin: &Path, runs: Vec<(u64, Option<f64>)>) -> anyhow::Result<Vec<Delivery>> {
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
    let mut publisher = Node::start(bin, &dir.join("n0"), &args(None), Box::new(|_, _| {})).await?;
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
        )
        .await?;
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
    let mut stdin = publisher.take_stdin().context("publisher stdin")?;
    let mut phases = Vec::new();
    let mut next_seq = 0u64;
    let mut read_before = copies_read(&http, &receivers).await?;
    for (count, rate) in runs {
        let first = next_seq;
        next_seq += count;
        let first_send = Instant::now();
        // Lines go to the publisher's stdin from a thread, paced at `rate` per second, or as
        // fast as the pipe takes them.
        let writer = std::thread::spawn(move || -> std::io::Result<ChildStdin> {
            let mut buf = Vec::with_capacity(64 * 1024);
            for seq in first..first + count {
                if let Some(rate) = rate {
                    let due = first_send + Duration::from_secs_f64((seq - first) as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                buf.clear();
                buf.extend_from_slice(message(seq, epoch.elapsed().as_nanos()).as_bytes());
                buf.push(b'\n');
                stdin.write_all(&buf)?;
                if rate.is_some() {
                    stdin.flush()?;
                }
            }
            stdin.flush()?;
            Ok(stdin)
        });
        // Until everything arrived, or nothing more arrives for 3 s once the writer is done
        // (lost messages are reported as the delivered fraction, not waited for).
        let total = |r: &[Arc<Mutex<Received>>]| {
            r.iter()
                .map(|x| x.lock().unwrap().messages.len())
                .sum::<usize>()
        };
        let want = next_seq as usize;
        let (mut last_total, mut last_change) = (0, Instant::now());
        let deadline = Instant::now() + Duration::from_secs(120);
        while !wait_all(&received, want, Duration::from_millis(200), false).await {
            let now_total = total(&received);
            if now_total != last_total {
                (last_total, last_change) = (now_total, Instant::now());
            }
            let quiet = writer.is_finished() && last_change.elapsed() > Duration::from_secs(3);
            if quiet || Instant::now() > deadline {
                break;
            }
        }
        stdin = writer.join().expect("writer thread")?;
        let mut delivery = summarize(&received, first, count, first_send);
        let failures: Vec<String> = publisher
            .log()
            .lines()
            .filter(|l| l.starts_with("chat: not sent"))
            .map(String::from)
            .collect();
        delivery.publish_failures = failures.len()
            - phases
                .iter()
                .map(|d: &Delivery| d.publish_failures)
                .sum::<usize>();
        delivery.receiver_event_drops = receivers
            .iter()
            .any(|r| r.log().contains("network event queue full"));
        if delivery.publish_failures > 0 {
            eprintln!(
                "gossip: {} publishes failed, e.g. {}",
                delivery.publish_failures,
                failures.last().map(String::as_str).unwrap_or_default()
            );
        }
        if delivery.receiver_event_drops {
            eprintln!("gossip: a receiver dropped network events (its event queue was full)");
        }
        let read = copies_read(&http, &receivers).await?;
        delivery.copies_per_message = (read.0 - read_before.0) / (read.1 - read_before.1).max(1.0);
        read_before = read;
        phases.push(delivery);
    }
    drop(stdin);
    drop(receivers);
    Ok(phases)
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
    Ok(summarize(&received, 0, count, first_send))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("p2p-mpc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Publish rate of the latency run (messages per second, paced).
const PACED_RATE: f64 = 1000.0;

/// Runs the gossip benchmark: a paced run for latency, then an open-loop run for throughput.
pub async fn run(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let bin = node_binary()?;
    let (paced, flood) = if quick { (500, 2_000) } else { (5_000, 20_000) };
    let phases = libp2p_mesh(&bin, vec![(paced, Some(PACED_RATE)), (flood, None)]).await?;
    let (latency, mesh) = (&phases[0], &phases[1]);
    let tcp = tcp_fanout(flood)?;
    let _ = std::fs::remove_dir_all(tempfile_dir()?);
    Ok(vec![
        Figure::against(
            "gossip 5 nodes 256 B, open loop: delivered to all",
            mesh.per_second,
            "msg/s",
            "raw TCP fan-out",
            tcp.per_second,
        ),
        Figure::plain(
            "gossip open loop: delivered fraction",
            mesh.delivered_fraction,
            "fraction",
        ),
        Figure::plain(
            "gossip open loop: copies of a message each receiver read and verified",
            mesh.copies_per_message,
            "copies",
        ),
        Figure::plain(
            "gossip open loop: publishes refused by the publisher",
            mesh.publish_failures as f64,
            "count",
        ),
        Figure::against(
            format!("gossip paced at {PACED_RATE} msg/s: p50 latency"),
            latency.p50_ms,
            "ms",
            "raw TCP fan-out (open loop)",
            tcp.p50_ms,
        ),
        Figure::against(
            format!("gossip paced at {PACED_RATE} msg/s: p99 latency"),
            latency.p99_ms,
            "ms",
            "raw TCP fan-out (open loop)",
            tcp.p99_ms,
        ),
        Figure::plain(
            format!("gossip paced at {PACED_RATE} msg/s: delivered fraction"),
            latency.delivered_fraction,
            "fraction",
        ),
    ])
}
