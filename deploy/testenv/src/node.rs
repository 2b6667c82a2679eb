//! `p2p-mpc` processes for tests and benchmarks: started with their output kept, ready once
//! their log shows their listeners, killed and reaped when dropped. The node tests, the
//! operator's tests and the benchmark suite all start nodes through [`RunningNode`].

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Called with each stdout line of a node and the time it was read.
pub type LineSink = Box<dyn FnMut(&str, Instant) + Send>;

/// Flags that put a node on loopback with free ports (the API, metrics and libp2p ports are
/// read back from its log): pairs of flag and value.
pub fn loopback_args() -> Vec<String> {
    [
        "--listen-address",
        "127.0.0.1",
        "--network-port",
        "0",
        "--api-port",
        "0",
        "--metrics-port",
        "0",
        "--metrics-address",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Where a started node listens, as its log says.
#[derive(Debug, Clone)]
pub struct Listening {
    /// `http://<ip>:<port>` of the HTTP API.
    pub api: String,
    /// `http://<ip>:<port>` of the metrics server, when its line was in the log.
    pub metrics: Option<String>,
    /// The TCP listen address, ending in `/p2p/<peer id>`.
    pub tcp_addr: String,
    /// The WebSocket listen address, when there is one.
    pub ws_addr: Option<String>,
    /// The QUIC listen address, when there is one.
    pub quic_addr: Option<String>,
    pub peer_id: String,
    /// When the first libp2p listen address was logged.
    pub at: Instant,
}

/// What [`RunningNode::wait_listening`] waits for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect {
    /// The metrics server's line too.
    pub metrics: bool,
    /// A WebSocket listen address too.
    pub ws: bool,
    /// A QUIC listen address too.
    pub quic: bool,
}

type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// A running `p2p-mpc` process with its stdout and stderr kept line by line (stdout may go
/// to a [`LineSink`] instead); killed and reaped when dropped.
pub struct RunningNode {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
    stderr: Lines,
    spawned_at: Instant,
}

fn keep(reader: impl std::io::Read + Send + 'static, lines: Lines, mut sink: Option<LineSink>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            let at = Instant::now();
            let text = line.trim_end().to_string();
            match &mut sink {
                Some(sink) => sink(&text, at),
                None => lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((at, text)),
            }
            line.clear();
        }
    });
}

/// The first value of `field` (e.g. `addr=`) on a line that contains `key`.
fn field_of(lines: &[(Instant, String)], key: &str, field: &str) -> Option<(Instant, String)> {
    lines
        .iter()
        .filter(|(_, l)| l.contains(key))
        .find_map(|(at, l)| {
            let start = l.find(field)? + field.len();
            Some((*at, l[start..].split_whitespace().next()?.to_string()))
        })
}

impl RunningNode {
    /// Spawns `command` with piped stdin, stdout and stderr; stdout lines go to `sink` when
    /// one is given, else they are kept.
    pub fn spawn(mut command: Command, sink: Option<LineSink>) -> std::io::Result<Self> {
        let spawned_at = Instant::now();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = Lines::default();
        let stderr = Lines::default();
        if let Some(out) = child.stdout.take() {
            keep(out, stdout.clone(), sink);
        }
        if let Some(err) = child.stderr.take() {
            keep(err, stderr.clone(), None);
        }
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            spawned_at,
        })
    }

    /// When the process was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// Waits until the log shows the HTTP API and a TCP listen address (and what `expect`
    /// adds). The error carries the whole log, or the exit status when the node exited.
    pub async fn wait_listening(
        &mut self,
        timeout: Duration,
        expect: Expect,
    ) -> Result<Listening, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self
                .stderr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let listen: Vec<(Instant, String)> = lines
                .iter()
                .filter(|(_, l)| l.contains(" listening address="))
                .filter_map(|(at, l)| {
                    let rest = l.split("address=").nth(1)?;
                    Some((*at, rest.split_whitespace().next()?.to_string()))
                })
                .collect();
            let tcp = listen
                .iter()
                .find(|(_, a)| a.contains("/tcp/") && !a.contains("/ws"))
                .cloned();
            let quic = listen
                .iter()
                .find(|(_, a)| a.contains("/quic-v1"))
                .map(|(_, a)| a.clone());
            let ws = listen
                .iter()
                .find(|(_, a)| a.contains("/ws"))
                .map(|(_, a)| a.clone());
            let api = field_of(&lines, "HTTP API listening", "addr=");
            let metrics = field_of(&lines, "metrics listening", "addr=");
            if let (Some((_, api)), Some((at, tcp))) = (&api, &tcp)
                && (!expect.metrics || metrics.is_some())
                && (!expect.ws || ws.is_some())
                && (!expect.quic || quic.is_some())
            {
                let first = listen.iter().map(|(t, _)| *t).min().unwrap_or(*at);
                return Ok(Listening {
                    api: format!("http://{api}"),
                    metrics: metrics.map(|(_, m)| format!("http://{m}")),
                    peer_id: tcp.rsplit('/').next().unwrap_or_default().to_string(),
                    tcp_addr: tcp.clone(),
                    ws_addr: ws,
                    quic_addr: quic,
                    at: first,
                });
            }
            let log = || {
                lines
                    .iter()
                    .map(|(_, l)| l.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the node exited early with {status}:\n{}", log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the node did not show its listeners within {timeout:?}:\n{}",
                    log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The stderr lines (the log) so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(|(_, l)| l.clone()).collect()
    }

    /// The stdout lines so far (none when they go to a sink).
    pub fn stdout_lines(&self) -> Vec<String> {
        let lines = self.stdout.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(|(_, l)| l.clone()).collect()
    }

    /// Writes `line` and a newline on the node's stdin.
    pub fn type_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin is closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Takes the node's stdin, to write to it from elsewhere (then [`type_line`] fails).
    ///
    /// [`type_line`]: Self::type_line
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid())
    }

    /// Sends SIGTERM and waits for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident memory of process `pid` in bytes (Linux `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The samples of metric `name` on a Prometheus text page whose labels include every pair of
/// `labels` (`name` is the whole metric name: `x_total` does not match `x_total_extra`).
pub fn metric_samples<'a>(
    page: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = f64> + 'a {
    page.lines().filter_map(move |line| {
        if line.starts_with('#') {
            return None;
        }
        let rest = line.strip_prefix(name)?;
        let (label_block, value) = match rest.strip_prefix('{') {
            Some(inner) => {
                let end = inner.find('}')?;
                (&inner[..end], &inner[end + 1..])
            }
            None if rest.starts_with(' ') => ("", rest),
            None => return None,
        };
        let wanted = labels
            .iter()
            .all(|(k, v)| label_block.contains(&format!("{k}=\"{v}\"")));
        if !wanted {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The sum of [`metric_samples`] (0 when there are none).
pub fn metric_sum(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_samples(page, name, labels).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_match_the_whole_name_and_every_label() {
        let page = "# HELP x_total things\n# TYPE x_total counter\n\
x_total{kind=\"a\",outcome=\"ok\"} 2\n\
x_total{kind=\"b\",outcome=\"ok\"} 3.5\n\
x_total_extra 100\n\
x_bytes 7\n";
        assert_eq!(metric_sum(page, "x_total", &[]), 5.5);
        assert_eq!(metric_sum(page, "x_total", &[("kind", "a")]), 2.0);
        assert_eq!(
            metric_sum(page, "x_total", &[("kind", "a"), ("outcome", "no")]),
            0.0
        );
        assert_eq!(metric_sum(page, "x_bytes", &[]), 7.0);
        assert_eq!(metric_sum(page, "x", &[]), 0.0);
        assert_eq!(
            metric_samples(page, "x_total_extra", &[]).collect::<Vec<_>>(),
            [100.0]
        );
    }

    #[test]
    fn the_resident_memory_of_this_process_is_read() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
