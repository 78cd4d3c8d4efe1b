//! `cargo test` links the crate's test binaries against libpython (maturin's wheel build
//! sets `PYO3_BUILD_EXTENSION_MODULE` and links none): give them the interpreter's library
//! directory as a run path, so they start wherever that directory is.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
