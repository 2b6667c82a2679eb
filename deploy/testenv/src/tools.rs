use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::Error;

/// The bin directory, found once per process; concurrent first callers wait for one install.
static BIN_DIR: OnceCell<PathBuf> = OnceCell::const_new();

/// The directory holding the built tools: `$P2P_MPC_TESTENV_BIN` if set, else the one
/// `install.sh` prints (it builds what is missing; other processes running it wait on its lock).
pub async fn bin_dir() -> Result<PathBuf, Error> {
    BIN_DIR.get_or_try_init(find_or_install).await.cloned()
}

/// The path of one built tool (`kube-apiserver`, `etcd`, `helm`, `kubeconform`, `jaeger`,
/// `prometheus`, `promtool`, ...).
pub async fn tool(name: &str) -> Result<PathBuf, Error> {
    let path = bin_dir().await?.join(name);
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(Error::Unavailable {
            tool: name.to_string(),
            reason: format!("{} is missing or not executable", path.display()),
        })
    }
}

/// `promtool`, of the same release as the Prometheus the tests run.
pub async fn promtool() -> Result<PathBuf, Error> {
    tool("promtool").await
}

pub(crate) fn install_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh")
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

async fn find_or_install() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("P2P_MPC_TESTENV_BIN") {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            return Err(Error::Unavailable {
                tool: "test infrastructure".into(),
                reason: format!("P2P_MPC_TESTENV_BIN={} is not a directory", dir.display()),
            });
        }
        return Ok(dir);
    }
    let script = install_script();
    let unavailable = |reason: String| Error::Unavailable {
        tool: "test infrastructure".into(),
        reason,
    };
    let mut child = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| unavailable(format!("cannot run {}: {e}", script.display())))?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(unavailable("install.sh output pipes missing".into()));
    };

    // Progress is passed through to our stderr as it comes (a cold build takes many
    // minutes), bypassing the test harness's capture; the tail is kept for the error.
    let forward = async {
        let mut lines = BufReader::new(stderr).lines();
        let mut tail = VecDeque::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(std::io::stderr(), "{line}");
            if tail.len() == 60 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail
    };
    let collect = async {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out).await;
        out
    };
    let (tail, out) = tokio::join!(forward, collect);
    let status = child
        .wait()
        .await
        .map_err(|e| unavailable(format!("waiting for {}: {e}", script.display())))?;
    if !status.success() {
        return Err(unavailable(format!(
            "{} failed ({status}); its last output:\n{}",
            script.display(),
            Vec::from(tail).join("\n")
        )));
    }
    let dir = out.lines().last().map(str::trim).unwrap_or_default();
    if dir.is_empty() || !Path::new(dir).is_dir() {
        return Err(unavailable(format!(
            "{} printed no bin directory as its last line (stdout: {out:?})",
            script.display()
        )));
    }
    Ok(PathBuf::from(dir))
}
