//! A `p2p-mpc devnet` child process, started and stopped the way a user does.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A running devnet. Stopped with SIGINT (so that it stops its nodes) when dropped; SIGKILL
/// only when it does not exit in time.
pub struct Devnet {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Devnet {
    /// Starts `p2p-mpc devnet --nodes <nodes> --dir <dir>` and waits until it has run its
    /// demo and says it is running.
    pub fn start(dir: &Path, nodes: usize) -> Devnet {
        let mut child = Command::new(super::bin())
            .args(["devnet", "--nodes", &nodes.to_string(), "--dir"])
            .arg(dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn devnet");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut devnet = Devnet { child, lines };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = devnet.text();
            if text.contains("Press Ctrl-C") {
                return devnet;
            }
            if let Ok(Some(status)) = devnet.child.try_wait() {
                let mut err = String::new();
                let _ =
                    std::io::Read::read_to_string(devnet.child.stderr.as_mut().unwrap(), &mut err);
                panic!("devnet exited with {status}:\n{text}\n{err}");
            }
            assert!(
                Instant::now() < deadline,
                "devnet did not get ready:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What it printed so far.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The nodes it started: (peer id, API URL), from its `  node <i>: <peer>  API <url>`
    /// lines.
    pub fn nodes(&self) -> Vec<(String, String)> {
        self.text()
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("  node ")?;
                let (_, rest) = rest.split_once(": ")?;
                let (peer, api) = rest.split_once("  API ")?;
                Some((peer.to_string(), api.to_string()))
            })
            .collect()
    }

    /// The client key file it made and printed.
    pub fn client_key(&self) -> String {
        self.text()
            .lines()
            .find_map(|l| l.trim().strip_prefix("client key: "))
            .and_then(|l| l.split(" (public key").next())
            .expect("the devnet names its client key")
            .to_string()
    }

    /// Sends SIGINT and waits up to `timeout` for it to exit.
    pub fn interrupt_and_wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc_kill(self.child.id() as i32, 2);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if self.interrupt_and_wait(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
