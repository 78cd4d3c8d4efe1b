//! `NativeNode`: the embedded single-node cluster an `App` runs on. Its data directory holds
//! the node's data (`node/`) and its address (`endpoints`, the file `keel dev` writes too, so
//! `keel status --data-dir DIR` finds it); the address is kept across launches, since the
//! cluster's membership records it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keel_raft::client::KeelClient;
use keel_raft::node::NodeConfig;
use keel_scheduler::Node;
use keel_scheduler::engine::EngineSettings;
use keel_scheduler::engine::registry::Registry;
use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;

use crate::blocking::wait;
use crate::bridge;
use crate::errors::keel_error;

/// The file in an app's data directory naming its node's address.
const ENDPOINTS_FILE: &str = "endpoints";
/// How long a launch waits for a data directory that is locked: a node of this process
/// that just stopped releases it within moments; another process's node would not.
const LOCKED_WAIT_MAX: Duration = Duration::from_secs(5);
/// How often a launch looks whether the node runs its kinds yet.
const READY_POLL: Duration = Duration::from_millis(10);

/// A running embedded node.
#[pyclass(module = "keel._native", frozen)]
pub(crate) struct NativeNode {
    node: Mutex<Option<Node>>,
    addr: SocketAddr,
}

/// Why a launch failed, before it becomes a Python exception.
enum LaunchError {
    Invalid(String),
    Failed(String),
    Timeout(String),
}

impl LaunchError {
    fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            Self::Invalid(message) => keel_error(py, "InvalidRequest", message, None),
            Self::Failed(message) => keel_error(py, "KeelError", message, None),
            Self::Timeout(message) => keel_error(py, "Timeout", message, None),
        }
    }
}

/// The address to listen on: `listen` when given, else the one recorded by an earlier
/// launch, else a free port on 127.0.0.1.
fn listen_address(data_dir: &Path, listen: Option<&str>) -> Result<SocketAddr, LaunchError> {
    let recorded = std::fs::read_to_string(data_dir.join(ENDPOINTS_FILE)).ok();
    let text = listen.or_else(|| recorded.as_deref().and_then(|t| t.lines().next()));
    match text {
        Some(text) => text.trim().parse().map_err(|error| {
            LaunchError::Invalid(format!("listen address {text:?} is not host:port: {error}"))
        }),
        None => Ok(SocketAddr::from(([127, 0, 0, 1], 0))),
    }
}

async fn launch(
    data_dir: PathBuf,
    listen: Option<String>,
    registry: Registry,
    timeout: Duration,
) -> Result<Node, LaunchError> {
    let deadline = Instant::now() + timeout;
    std::fs::create_dir_all(&data_dir).map_err(|error| {
        LaunchError::Failed(format!("creating {}: {error}", data_dir.display()))
    })?;
    let listen = listen_address(&data_dir, listen.as_deref())?;
    let config = NodeConfig::new(1, listen, data_dir.join("node"));
    let locked_until = deadline.min(Instant::now() + LOCKED_WAIT_MAX);
    let node = loop {
        match Node::start(config.clone(), registry.clone(), EngineSettings::default()).await {
            Ok(node) => break node,
            // A node of this process that just stopped may hold the directory a moment
            // longer (its aborted runs drop their handles on the runtime's threads).
            Err(keel_scheduler::Error::Raft(keel_raft::Error::Log(keel_log::Error::Locked {
                ..
            }))) if Instant::now() < locked_until => {
                tokio::time::sleep(READY_POLL).await;
            }
            Err(error) => {
                return Err(LaunchError::Failed(format!(
                    "starting the node in {} on {listen}: {error}",
                    data_dir.display()
                )));
            }
        }
    };
    let addr = node.addr().to_string();
    std::fs::write(data_dir.join(ENDPOINTS_FILE), format!("{addr}\n"))
        .map_err(|error| LaunchError::Failed(format!("recording the node's address: {error}")))?;
    if node.initialized() {
        node.campaign()
            .await
            .map_err(|error| LaunchError::Failed(error.to_string()))?;
    } else {
        let mut client = KeelClient::new(std::slice::from_ref(&addr))
            .map_err(|error| LaunchError::Failed(error.to_string()))?;
        client
            .init(&BTreeMap::from([(1, addr)]))
            .await
            .map_err(|error| LaunchError::Failed(format!("forming the cluster: {error}")))?;
    }
    while !node.runs_workflows() {
        if Instant::now() >= deadline {
            node.shutdown().await;
            return Err(LaunchError::Timeout(format!(
                "the node did not lead and declare its workflow kinds within {timeout:?}"
            )));
        }
        tokio::time::sleep(READY_POLL).await;
    }
    Ok(node)
}

#[pymethods]
impl NativeNode {
    /// Starts the node in `data_dir`, running workflow `kinds` (`(name, version, is_async)`)
    /// through `runner` (async kinds on `event_loop`), and waits up to `timeout_s` until it
    /// leads with its kinds declared.
    #[staticmethod]
    #[pyo3(signature = (data_dir, listen, kinds, runner, event_loop, timeout_s))]
    fn launch(
        py: Python<'_>,
        data_dir: PathBuf,
        listen: Option<String>,
        kinds: Vec<(String, String, bool)>,
        runner: Py<PyAny>,
        event_loop: Option<Bound<'_, PyAny>>,
        timeout_s: f64,
    ) -> PyResult<Self> {
        let kinds = kinds
            .into_iter()
            .map(|(name, version, is_async)| bridge::PythonKind {
                name,
                version,
                is_async,
            })
            .collect();
        let locals = event_loop.map(TaskLocals::new);
        let registry =
            bridge::register(Registry::new(), kinds, &Arc::new(runner), locals.as_ref())?;
        let timeout = Duration::try_from_secs_f64(timeout_s.max(0.0)).unwrap_or(Duration::MAX);
        let node = wait(py, launch(data_dir, listen, registry, timeout))?
            .map_err(|error| error.into_py(py))?;
        Ok(Self {
            addr: node.addr(),
            node: Mutex::new(Some(node)),
        })
    }

    /// The node's gRPC address.
    #[getter]
    fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Stops the node (its runs first); a second call does nothing.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let node = self
            .node
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(node) = node {
            wait(py, node.shutdown())?;
        }
        Ok(())
    }
}
