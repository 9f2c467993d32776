//! Command-line entry point: parses arguments and hands over to the library.

fn main() {}
