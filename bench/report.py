#!/usr/bin/env python3
"""Prints the criterion results under target/criterion as a table: median ns per operation
and operations per second. Run after `cargo bench --bench packet` / `--bench table`."""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
rows = []
for dirpath, _, files in os.walk(root):
    if os.path.basename(dirpath) == "new" and "estimates.json" in files:
        bench = os.path.relpath(os.path.dirname(dirpath), root)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            med = json.load(f)["median"]["point_estimate"]
        rows.append((bench, med))
print(f"{'benchmark':<48} {'median':>12} {'per second':>14}")
for bench, ns in sorted(rows):
    print(f"{bench:<48} {ns:>9.2f} ns {1e9 / ns / 1e6:>10.1f} M/s")
