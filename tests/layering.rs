//! The packet layer (`wire/`, `encap`, `gso`, `gro`, `offload`, `buf`) is pure: it parses and
//! builds packets in caller-owned buffers, does no I/O and needs no syscall. Its constants
//! live in it, and `sys` and `dataplane` use them, never the reverse. This test reads the
//! sources and fails on an import that would break that (an I/O module, a syscall crate, or
//! a module above the packet layer). No root needed.

use std::path::{Path, PathBuf};

/// The packet layer's files, relative to the crate root.
fn packet_layer() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<PathBuf> = ["encap.rs", "gso.rs", "gro.rs", "offload.rs", "buf.rs"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    for dir in ["wire", "encap"] {
        let entries = std::fs::read_dir(root.join(dir)).expect("packet layer directory");
        files.extend(entries.map(|e| e.expect("directory entry").path()));
    }
    files.retain(|p| p.extension().is_some_and(|e| e == "rs"));
    files
}

/// What the packet layer must not name: the modules above it or beside it that do I/O, and
/// the syscall and I/O APIs themselves.
const FORBIDDEN: &[&str] = &[
    "crate::sys",
    "crate::dataplane",
    "crate::store",
    "crate::host",
    "crate::node",
    "crate::ops",
    "libc::",
    "nix::",
    "std::fs",
    "std::net::UdpSocket",
    "std::net::TcpStream",
    "std::os::fd",
    "tokio",
];

#[test]
fn the_packet_layer_imports_nothing_that_does_io() {
    let files = packet_layer();
    assert!(files.len() >= 15, "packet layer files found: {files:?}");
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source file");
        // Unit tests may use what they like (a socket to check a constant against the kernel).
        let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for bad in FORBIDDEN {
                if line.contains(bad) {
                    found.push(format!("{}:{}: {bad}: {line}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the packet layer reaches out of itself:\n{}",
        found.join("\n")
    );
}
