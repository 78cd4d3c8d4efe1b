//! The node process's allocator tuning (`keel_scheduler::allocator`).
//!
//! Its own test binary with one test: the setting is process-wide, and the test's thread is
//! the only one allocating when it is made.

/// On glibc the mmap threshold is fixed (mallopt reports success); elsewhere the call
/// reports that it did nothing.
#[test]
fn the_mmap_threshold_is_fixed_on_glibc_only() {
    assert_eq!(
        keel_scheduler::allocator::fix_mmap_threshold(),
        cfg!(all(target_os = "linux", target_env = "gnu"))
    );
}
