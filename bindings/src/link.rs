//! `NativeLink`: a TCP proxy on loopback standing for one directed link between two members
//! of a test cluster, so the test kit can partition them. A member reaches each peer through
//! the link for that pair (its `NodeConfig::peers` override); while the link is cut, its
//! open connections are dropped and every new one is closed as soon as it is accepted.

use std::net::SocketAddr;
use std::sync::Mutex;

use pyo3::prelude::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::blocking::{runtime, wait};
use crate::errors::keel_error;
use crate::slot;

/// Pause after a failed accept.
const ACCEPT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// What a link does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    Cut,
    Closed,
}

/// One directed link's proxy.
#[pyclass(module = "keel._native", frozen)]
pub(crate) struct NativeLink {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accepting: Mutex<Option<JoinHandle<()>>>,
}

/// Accepts connections and forwards each to `target` while the link is open.
async fn serve(listener: TcpListener, target: String, mode: watch::Receiver<Mode>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of file descriptors, say: try again in a moment rather than spin.
            tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            continue;
        };
        if *mode.borrow() != Mode::Open {
            continue; // dropped: closed at once
        }
        let mut mode = mode.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let mut inbound = inbound;
            let Ok(mut outbound) = TcpStream::connect(&target).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = mode.wait_for(|mode| *mode != Mode::Open) => {}
            }
        });
    }
}

#[pymethods]
impl NativeLink {
    /// A link to `target` (`host:port`), open, listening on a free loopback port.
    #[staticmethod]
    fn start(py: Python<'_>, target: String) -> PyResult<Self> {
        let handle = runtime()?.handle().clone();
        let listener = wait(py, TcpListener::bind(("127.0.0.1", 0)))?.map_err(|error| {
            keel_error(py, "KeelError", format!("a link's port: {error}"), None)
        })?;
        let addr = listener
            .local_addr()
            .map_err(|error| keel_error(py, "KeelError", error.to_string(), None))?;
        let (mode, watching) = watch::channel(Mode::Open);
        let accepting = handle.spawn(serve(listener, target, watching));
        Ok(Self {
            addr,
            mode,
            accepting: Mutex::new(Some(accepting)),
        })
    }

    /// The address a member dials to reach the link's target.
    #[getter]
    fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Drops the link's connections, and every new one until `heal`.
    fn cut(&self) {
        self.mode.send_if_modified(|mode| {
            let was_open = *mode == Mode::Open;
            if was_open {
                *mode = Mode::Cut;
            }
            was_open
        });
    }

    /// Lets connections through again.
    fn heal(&self) {
        self.mode.send_if_modified(|mode| {
            let was_cut = *mode == Mode::Cut;
            if was_cut {
                *mode = Mode::Open;
            }
            was_cut
        });
    }

    /// Closes the link for good: its connections and its port.
    fn close(&self) {
        self.mode.send_replace(Mode::Closed);
        if let Some(accepting) = slot::take(&self.accepting) {
            accepting.abort();
        }
    }
}

impl Drop for NativeLink {
    fn drop(&mut self) {
        self.close();
    }
}
