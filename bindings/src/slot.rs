//! Locks that outlive a panic: a panic while a lock was held (Python code runs under some)
//! must not make a node, a worker or a context unusable, so every lock here ignores
//! poisoning — the values behind them stay consistent at every point a panic can occur
//! (each is one `Option` or one handle, replaced whole).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// `mutex`, locked, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What `slot` holds, taken out (`None` when a call took it before).
pub(crate) fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    lock(slot).take()
}
