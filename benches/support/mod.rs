//! Shared kit of the proxy benches (`benches/proxy.rs`, `benches/peers.rs`).
//!
//! Everything runs on 127.0.0.1 in child processes that are SIGKILLed when
//! dropped. The bench binary re-executes itself with `TETHER_BENCH_ROLE`
//! to play the parts that need Rust code: a plain Pingora pass-through
//! (`passthrough`), a tiny upstream when nginx is absent (`upstream`),
//! tether in-process for counting allocations (`tether-counted`), and the
//! load generator (`loadgen`). The method is the one of
//! `shared/notes/perf-baseline.md`: the proxy under test pinned alone to
//! core 1 with one worker thread, the upstream and the load generator on
//! core 0, keep-alive everywhere, the same connection count for all,
//! rounds interleaved (A B A B) and medians reported.
//!
//! One file per part, following the sections a bench run goes through:
//! `roles` (what a re-executed bench plays), `process` (pinning, starting,
//! waiting), `targets` (what is measured), `load` and `loadgen` (the load),
//! `measure` (CPU, allocations, medians, report helpers). Processes,
//! ports, configs and the counting allocator come from the workspace test
//! kit (`tether_testkit`).
#![allow(dead_code, unused_imports)]

pub mod load;
pub mod loadgen;
pub mod measure;
pub mod process;
pub mod roles;
pub mod targets;

pub use load::*;
pub use loadgen::{find, LoadResult, LoadSpec, PostSpec};
pub use measure::*;
pub use process::*;
pub use roles::run_role_if_asked;
pub use targets::*;
pub use tether_testkit::{addr, free_port, Proc};

pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");
/// The variable that tells a re-executed bench binary which part to play
/// (`roles`).
pub const ROLE: &str = "TETHER_BENCH_ROLE";
/// Closed-loop connections, for every target (the notes' `wrk -c32`).
pub const CONNECTIONS: usize = 32;
/// The id of the tether server under test; its tokens are locked to it.
pub const SERVER_ID: &str = "bench-1";
/// The HS256 secret, printable so HAProxy's `jwt_verify` can take it as a
/// string; 64 bytes, well above the 32-byte minimum.
pub const SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

/// The benches' global allocator: mimalloc (as in the release binary),
/// counted by the test kit's allocator when a run asks for it.
pub type Counting = tether_testkit::alloc::Counting<mimalloc::MiMalloc>;

/// The value to declare it with: `#[global_allocator] static GLOBAL:
/// support::Counting = support::COUNTING;`.
pub const COUNTING: Counting = tether_testkit::alloc::Counting(mimalloc::MiMalloc);
