use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::process::Command;

use crate::Error;
use crate::process::ready_timeout;
use crate::tools::{bin_dir, install_script};

/// A Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
/// on loopback, and with [`ControlPlane::start_with_node`] one node where pods run. One
/// started here is stopped, and its data removed, when the handle drops.
pub struct ControlPlane {
    kubeconfig: PathBuf,
    /// Set when this handle started the control plane (and so stops it).
    state_dir: Option<PathBuf>,
    with_node: bool,
}

/// The name of the test node's Node object.
pub const NODE_NAME: &str = "testenv-node";

/// The test node's address (its bridge's): where pods reach this machine, the API server
/// listens and the cluster DNS answers.
pub const NODE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 244, 0, 1);

impl ControlPlane {
    /// Starts a fresh control plane with `up.sh` (building the binaries first if needed).
    pub async fn start() -> Result<Self, Error> {
        Self::launch(false).await
    }

    /// Starts a fresh control plane with a node (`up.sh --with-node`): containerd, the CNI
    /// bridge, kubelet, kube-scheduler, kube-proxy and CoreDNS, so pods really run. Needs
    /// root, and only one runs per machine; without root it is [`Error::Unavailable`].
    pub async fn start_with_node() -> Result<Self, Error> {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self")
            .map_err(|e| Error::io("reading /proc/self", e))?
            .uid();
        if uid != 0 {
            return Err(Error::Unavailable {
                tool: "the test node (up.sh --with-node)".into(),
                reason: format!(
                    "it needs root (containers, network, iptables); this process runs as uid {uid}"
                ),
            });
        }
        Self::launch(true).await
    }

    async fn launch(with_node: bool) -> Result<Self, Error> {
        let bin = bin_dir().await?;
        let state_dir = tempfile::Builder::new()
            .prefix("p2p-mpc-testenv-")
            .tempdir()
            .map_err(|e| Error::io("creating a state directory for the control plane", e))?
            .keep();
        // From here on the directory belongs to the handle, which runs down.sh on drop.
        let mut plane = ControlPlane {
            kubeconfig: state_dir.join("kubeconfig"),
            state_dir: Some(state_dir.clone()),
            with_node,
        };
        let script = script("up.sh");
        let mut command = Command::new("bash");
        command.arg(&script);
        if with_node {
            command.arg("--with-node");
        }
        let child = command
            .arg(&state_dir)
            .env("P2P_MPC_TESTENV_BIN", &bin)
            // Stops the control plane should this process die without running drop.
            .env("P2P_MPC_TESTENV_OWNER_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
        // up.sh has a deadline per component; this one only guards against a hung script.
        let components = if with_node { 10 } else { 4 };
        let overall = ready_timeout() * components + Duration::from_secs(30);
        let output = match tokio::time::timeout(overall, child.wait_with_output()).await {
            Ok(result) => {
                result.map_err(|e| Error::io(format!("running {}", script.display()), e))?
            }
            Err(_) => {
                return Err(Error::ControlPlaneStart {
                    script,
                    status: format!("still running after {overall:?}, killed"),
                    output: String::new(),
                });
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(Error::ControlPlaneStart {
                script,
                status: output.status.to_string(),
                output: stderr.into_owned(),
            });
        }
        match stdout
            .lines()
            .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        {
            Some(path) => plane.kubeconfig = PathBuf::from(path.trim()),
            None => {
                return Err(Error::ControlPlaneStart {
                    script,
                    status: "printed no `export KUBECONFIG=` line".into(),
                    output: format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
                });
            }
        }
        Ok(plane)
    }

    /// Connects to the control plane whose kubeconfig `P2P_MPC_TESTENV_KUBECONFIG` names
    /// (e.g. one started by `up.sh` in a shell, to save the start-up in each test), else
    /// starts a fresh one. A plain `KUBECONFIG` is deliberately not used: it may point at
    /// a real cluster.
    pub async fn start_or_connect() -> Result<Self, Error> {
        match std::env::var_os("P2P_MPC_TESTENV_KUBECONFIG") {
            Some(path) => Ok(ControlPlane {
                kubeconfig: PathBuf::from(path),
                state_dir: None,
                with_node: false,
            }),
            None => Self::start().await,
        }
    }

    /// A client authenticated as cluster admin.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let fail = |reason: String| Error::Kube {
            kubeconfig: self.kubeconfig.clone(),
            reason,
        };
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| fail(e.to_string()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| fail(e.to_string()))?;
        crate::tls_provider();
        kube::Client::try_from(config).map_err(|e| fail(e.to_string()))
    }

    /// The admin kubeconfig (for `kubectl`, `helm` or a child process under test).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// True when this handle started the control plane and will stop it on drop.
    pub fn is_owned(&self) -> bool {
        self.state_dir.is_some()
    }

    /// Where the control plane keeps its data, certificates and logs (owned ones only).
    pub fn state_dir(&self) -> Option<&Path> {
        self.state_dir.as_deref()
    }

    /// True when this control plane has a node where pods run.
    pub fn has_node(&self) -> bool {
        self.with_node
    }

    /// Loads an image into the node's containerd (`load-image.sh`): `image` is an archive
    /// file (docker-archive or OCI) or a reference in podman's local storage. Returns the
    /// image reference loaded, for a pod's `image` with `imagePullPolicy: Never`.
    pub async fn load_image(&self, image: &str) -> Result<String, Error> {
        let Some(dir) = self.state_dir.as_ref().filter(|_| self.with_node) else {
            return Err(Error::Unavailable {
                tool: "load-image.sh".into(),
                reason: "this control plane has no node (start it with start_with_node)".into(),
            });
        };
        let script = script("load-image.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg(image)
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        match stdout.lines().last().map(str::trim) {
            Some(reference) if output.status.success() && !reference.is_empty() => {
                Ok(reference.to_string())
            }
            _ => Err(Error::Script {
                script,
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            }),
        }
    }

    /// Process ids of etcd, kube-apiserver and kube-controller-manager, and with a node of
    /// containerd, kube-scheduler, the kubelet, kube-proxy and CoreDNS (owned ones only).
    pub fn process_ids(&self) -> Vec<u32> {
        let Some(dir) = &self.state_dir else {
            return Vec::new();
        };
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "containerd",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
            "coredns",
        ]
        .iter()
        .filter_map(|name| std::fs::read_to_string(dir.join(format!("{name}.pid"))).ok())
        .filter_map(|pid| pid.trim().parse().ok())
        .collect()
    }

    /// Every port the components listen on (owned ones only).
    pub fn ports(&self) -> Vec<u16> {
        let Some(dir) = &self.state_dir else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("endpoints.env"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once('=')?.1.trim().parse().ok())
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let Some(dir) = self.state_dir.take() else {
            return;
        };
        // Blocking on purpose: when drop returns, no process or port of it is left.
        // A short grace: the data is thrown away, and an API server with watches still
        // open (a controller under test) would otherwise take its full shutdown time.
        let script = script("down.sh");
        match std::process::Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .env("P2P_MPC_TESTENV_STOP_GRACE", "2")
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "testenv: {} {} failed ({}):\n{}",
                script.display(),
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("testenv: cannot run {}: {e}", script.display()),
        }
    }
}

fn script(name: &str) -> PathBuf {
    install_script().with_file_name(name)
}
