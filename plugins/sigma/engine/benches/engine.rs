//! Engine benchmarks (run with `cargo bench -p sigma-engine --bench engine`); filled in below.
fn main() {}
