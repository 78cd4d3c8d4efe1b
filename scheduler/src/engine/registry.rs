//! Workflow kinds this process can run: async functions of a [`Context`] and an input.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use super::context::Context;
use super::error::WorkflowError;

/// A running workflow function's future.
pub type WorkflowFuture = Pin<Box<dyn Future<Output = Result<Bytes, WorkflowError>> + Send>>;

/// A registered workflow function.
pub type WorkflowFn = Arc<dyn Fn(Context, Bytes) -> WorkflowFuture + Send + Sync>;

/// A registered kind: its code version marker and its function.
#[derive(Clone)]
pub struct Kind {
    /// The version marker journaled with each workflow of this kind.
    pub version: String,
    /// The function.
    pub function: WorkflowFn,
    /// Whether a run of this kind gives back its thread at an unresolved wait instead of
    /// awaiting it (see [`Registry::register_suspending`]).
    pub suspends: bool,
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kind")
            .field("version", &self.version)
            .field("suspends", &self.suspends)
            .finish_non_exhaustive()
    }
}

/// Workflow kinds by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Kind>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `function` as workflow kind `kind` at code version `version` (a marker
    /// journaled with every workflow of the kind from its start: a run of a workflow whose
    /// marker differs from the registered one is not started here).
    #[must_use]
    pub fn register<F, Fut>(self, kind: &str, version: &str, function: F) -> Self
    where
        F: Fn(Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, WorkflowError>> + Send + 'static,
    {
        self.insert(kind, version, false, function)
    }

    /// Registers `function` as [`Registry::register`] does, as a kind whose runs do not
    /// wait: a durable wait that is not resolved yet (a sleep, a signal wait, a child call)
    /// returns [`WorkflowError::Suspended`], the run ends, and the engine replays it from
    /// its journal once the entry resolved. For code that holds a scarce resource while it
    /// runs (an OS thread, as a synchronous Python workflow does); replays cost a pass over
    /// the journal per wait.
    #[must_use]
    pub fn register_suspending<F, Fut>(self, kind: &str, version: &str, function: F) -> Self
    where
        F: Fn(Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, WorkflowError>> + Send + 'static,
    {
        self.insert(kind, version, true, function)
    }

    fn insert<F, Fut>(mut self, kind: &str, version: &str, suspends: bool, function: F) -> Self
    where
        F: Fn(Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, WorkflowError>> + Send + 'static,
    {
        let function: WorkflowFn = Arc::new(move |ctx, input| Box::pin(function(ctx, input)));
        self.kinds.insert(
            kind.to_owned(),
            Kind {
                version: version.to_owned(),
                function,
                suspends,
            },
        );
        self
    }

    /// Kind `kind`.
    pub fn get(&self, kind: &str) -> Option<&Kind> {
        self.kinds.get(kind)
    }

    /// `(kind, version)` of every registered kind.
    pub fn declarations(&self) -> Vec<(String, String)> {
        self.kinds
            .iter()
            .map(|(kind, k)| (kind.clone(), k.version.clone()))
            .collect()
    }

    /// Whether no kind is registered.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}
