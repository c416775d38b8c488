//! The `inlong-dataproxy` command line: `serve` (a local DataProxy + Manager).
fn main() {}
