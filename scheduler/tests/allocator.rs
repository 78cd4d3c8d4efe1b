//! The node process's allocator tuning (`keel_scheduler::allocator`), in a test binary
//! without libtest's harness: `main` is the process's only thread, as in `keel`'s `main`.

fn main() {
    let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
    // On glibc, with this thread alone, mallopt takes the threshold.
    assert_eq!(keel_scheduler::allocator::fix_mmap_threshold(), glibc);
    // Once another thread exists, the call is refused (not made), on any C library.
    let (release, parked) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || parked.recv());
    assert!(
        !keel_scheduler::allocator::fix_mmap_threshold(),
        "refused while another thread runs"
    );
    drop(release);
    other.join().expect("the other thread").ok();
}
