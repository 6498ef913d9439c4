#!/usr/bin/env bash
echo "no benchmarks yet"
cargo run --profile bench-native --quiet --example bench_grade  # computers: grading 100k receipts x 50 criteria
