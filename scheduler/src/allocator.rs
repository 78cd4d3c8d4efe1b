//! The node process's allocator tuning: glibc's malloc with a fixed mmap threshold.
//!
//! glibc serves an allocation of at least its *mmap threshold* (128 KiB at start) with its
//! own `mmap`, returned to the system when freed. But by default the threshold is dynamic:
//! each time such a block is freed, the threshold rises to its size (up to 32 MiB). A node
//! frees large buffers as a matter of course (a snapshot's archive and value list, a batch
//! of entries, a message), and after the first, allocations of up to that size come from
//! the heap arenas, where the retained workflows' small records, allocated between them,
//! keep the freed space from going back to the system. Measured with the scale benchmark
//! (100 000 retained 10-step workflows, `cargo bench -p keel-benches --bench scale`): the
//! leader's anonymous memory grew by 1 459 B per workflow with the dynamic threshold and by
//! 593 B with it fixed at 128 KiB, the state itself holding 447 B
//! (`benches/README.md`). Fixing the threshold (any explicit `M_MMAP_THRESHOLD`) turns the
//! dynamic adjustment off.
//!
//! Other allocators and C libraries are left as they are: the call does nothing there.
#![cfg_attr(
    all(target_os = "linux", target_env = "gnu"),
    expect(unsafe_code, reason = "mallopt is a C function")
)]

/// The mmap threshold a node process runs with, in bytes (glibc's initial default).
pub const MMAP_THRESHOLD_BYTES: i32 = 128 * 1024;

/// Fixes glibc malloc's mmap threshold at [`MMAP_THRESHOLD_BYTES`] (see the module's
/// documentation) if the process has one thread; call it first thing in `main`. Returns
/// whether the setting took: false under another C library, or when another thread
/// exists (glibc's `free` adjusts the threshold without a lock, so a free racing the
/// change could undo it; the call is then not made).
pub fn fix_mmap_threshold() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if !single_threaded() {
            return false;
        }
        // SAFETY: mallopt takes two integers and no pointers, and changes malloc's
        // parameters under the main arena's lock. The one thing that may touch them
        // without it, the dynamic adjustment in another thread's `free`, cannot run: the
        // process has this thread only (checked above, and no thread is started here).
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        set == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether this process has exactly one thread (Linux: one entry in `/proc/self/task`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}
