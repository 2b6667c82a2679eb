use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong while getting or starting a piece of test infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool could not be found or built; on a developer machine tests may skip on this.
    #[error("{tool} is not available: {reason}")]
    Unavailable { tool: String, reason: String },

    /// A component did not become ready before its deadline.
    #[error(
        "{component} did not become ready within {timeout:?}: {last_seen}\n\
         --- last lines of {} ---\n{log_tail}",
        log.display()
    )]
    NotReady {
        component: String,
        timeout: Duration,
        last_seen: String,
        log: PathBuf,
        log_tail: String,
    },

    /// A component exited while it was starting.
    #[error(
        "{component} exited during start-up ({status})\n--- last lines of {} ---\n{log_tail}",
        log.display()
    )]
    Exited {
        component: String,
        status: String,
        log: PathBuf,
        log_tail: String,
    },

    /// `up.sh` could not bring a control plane up; its own output says why.
    #[error("starting the control plane with {script} failed ({status}):\n{output}")]
    ControlPlaneStart {
        script: PathBuf,
        status: String,
        output: String,
    },

    /// A helper script (`load-image.sh`, ...) failed; its own output says why.
    #[error("{} failed ({status}):\n{output}", script.display())]
    Script {
        script: PathBuf,
        status: String,
        output: String,
    },

    /// A file or process operation failed.
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },

    /// The kubeconfig of the control plane could not be turned into a client.
    #[error("kube client from {}: {reason}", kubeconfig.display())]
    Kube { kubeconfig: PathBuf, reason: String },

    /// An HTTP request to a component failed or answered something unexpected.
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
}

impl Error {
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            action: action.into(),
            source,
        }
    }
}
