//! Benchmarks for the classify step (client → framing → **classify** → route → pool → server).

fn main() {}
