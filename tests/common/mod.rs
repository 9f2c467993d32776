//! Shared integration-test harness: real PostgreSQL topologies, the pgdecomp process, and a
//! minimal raw protocol client for malformed-input tests.
// Each test binary compiles this module on its own and uses only some of it.
#![allow(dead_code)]

pub mod cluster;
pub mod drivers;
pub mod load;
pub mod patroni;
pub mod proxy;
pub mod raw;
pub mod scrape;
