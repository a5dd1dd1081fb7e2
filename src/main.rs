//! The `weft` binary: flags -> tracing -> config -> run until a signal.

fn main() {
    println!("weft {}", env!("CARGO_PKG_VERSION"));
}
