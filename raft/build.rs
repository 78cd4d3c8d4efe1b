//! Compiles `proto/*.proto` with a vendored `protoc` unless `PROTOC` names one.
fn main() {}
