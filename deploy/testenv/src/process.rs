use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::Error;

/// How often readiness checks are repeated while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A component process whose output goes to a log file; killed and reaped on drop.
pub(crate) struct Component {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Outcome of one readiness probe: ready, or not yet with what was seen.
pub(crate) type Probe = Result<(), String>;

impl Component {
    /// Starts `program args` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Self, Error> {
        let out =
            File::create(log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating the handle of {}", log.display()), e))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(format!("starting {name} ({})", program.display()), e))?;
        Ok(Component {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The operating-system process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of the component's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// True when the log says a listen address was taken (the start may be retried).
    pub(crate) fn port_was_taken(&self) -> bool {
        std::fs::read_to_string(&self.log)
            .map(|log| log.contains("address already in use"))
            .unwrap_or(false)
    }

    /// Repeats `probe` until it succeeds; fails with the log tail when the process exits
    /// or `timeout` passes first.
    pub(crate) async fn wait_ready<F, Fut>(
        &mut self,
        timeout: Duration,
        mut probe: F,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Probe>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_seen = String::from("no probe finished yet");
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| Error::io(format!("checking whether {} runs", self.name), e))?
            {
                return Err(Error::Exited {
                    component: self.name.clone(),
                    status: status.to_string(),
                    log: self.log.clone(),
                    log_tail: self.log_tail(40),
                });
            }
            match tokio::time::timeout_at(deadline, probe()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(seen)) => last_seen = seen,
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    component: self.name.clone(),
                    timeout,
                    last_seen,
                    log: self.log.clone(),
                    log_tail: self.log_tail(40),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        // SIGKILL and reap at once, so neither the process nor its ports outlive the handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a log file (or why it could not be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// How long a component may take to become ready: `P2P_MPC_TESTENV_TIMEOUT` seconds, else 60.
pub(crate) fn ready_timeout() -> Duration {
    std::env::var("P2P_MPC_TESTENV_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(60))
}
