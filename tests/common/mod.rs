//! What the integration tests share: the workspace test kit
//! (`testkit/`, crate `tether_testkit`), re-exported, plus the path of the
//! `tether` binary cargo built for these tests. The kit's roles live in
//! their own files there (cluster, discovery, proxy, upstream, recording
//! upstream, sample app, client helpers); `docs/testing.md` is the guide.
#![allow(dead_code, unused_imports)]

pub use tether_testkit::*;

pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");
