//! tether's test kit: one harness for the integration tests (`tests/`),
//! the benches (`benches/`) and the demo (`demo/`).
//!
//! Everything runs for real on 127.0.0.1 with ephemeral ports: discovery,
//! proxies and the sample app are child processes of the `tether` binary
//! ([`tether_bin`]), upstreams are small in-process servers. Nothing
//! outlives its owner: a [`Proc`] SIGKILLs and reaps its process (and the
//! process's own children) when dropped, and when it is dropped during a
//! panic it prints the last lines of the process's log, which the kit keeps
//! in the cluster's temp folder.
//!
//! What it offers, one file per role (add a role as a file: an etcd or
//! redis launcher would sit next to `proxy.rs`):
//! - [`proc`]: [`Spawn`] (builder: args, env, log file, ready line,
//!   exit-with-parent, own process group) and [`Proc`] (kill, signal,
//!   CPU time and peak memory of its process tree); [`group_members`] to
//!   check that a process group left nothing behind.
//! - [`conf`]: the shipped `conf/*.toml` loaded as tables and edited key by
//!   key ([`Conf`]); no config template is written by hand.
//! - [`cluster`]: [`Cluster`] (temp folder, `tether keygen` secrets) and
//!   [`Timing`]; [`discovery`]: `cluster.start_discovery(0)`; [`proxy`]:
//!   [`ProxyBuilder`] and [`Proxy`],
//!   `cluster.proxy("eu-1", "eu").upstream(&app).start().await`.
//! - [`etcd`]: [`Etcd`], a 1- or 3-member etcd cluster on ephemeral ports
//!   (kill, restart, stop all for no-quorum tests); set
//!   [`Cluster::etcd_endpoints`] to run discovery over it.
//! - [`upstream`]: [`Upstream`], an echo app with `/login` and a switchable
//!   `/health`; [`recording`]: [`RecordingUpstream`], which keeps the raw
//!   bytes of every request; [`sampleapp`]: `tether sample-app` as a child;
//!   [`redis`]: a private `redis-server` ([`Redis`]) for the idempotency
//!   store.
//!   bytes of every request; [`flaky`]: [`FlakyUpstream`], which fails in
//!   a chosen way (drops reused connections, hangs, cuts its answer);
//!   [`sampleapp`]: `tether sample-app` as a child.
//! - [`client`]: login, refresh, requests, `tether token mint`, metrics;
//!   [`workflows`]: [`Workflows`], SDK clients running the sample app's
//!   order workflow until stopped, checked against the app's records.
//! - [`net`]: [`free_port`], [`wait_for_port`]; [`poll`]: [`eventually`],
//!   to wait for a condition with a deadline instead of sleeping.
//! - [`netns`]: [`netns::Lab`], two regions in Linux network namespaces
//!   whose links a partition test cuts and restores.
//! - [`alloc`]: the one counting global allocator (per process or per
//!   thread).
//!
//! `docs/testing.md` describes how the tests are organised and run.

pub mod alloc;
pub mod client;
pub mod cluster;
pub mod conf;
pub mod discovery;
pub mod etcd;
pub mod flaky;
pub mod net;
pub mod netns;
pub mod poll;
pub mod proc;
pub mod proxy;
pub mod recording;
pub mod redis;
pub mod sampleapp;
pub mod tls;
pub mod upstream;
pub mod workflows;

pub use client::{get, login, metric, mint, refresh, Login};
pub use cluster::{Cluster, Discovery, Timing};
pub use conf::Conf;
pub use etcd::Etcd;
pub use flaky::{FlakyUpstream, Flaw};
pub use net::{addr, free_port, port_open, wait_for_port};
pub use poll::{eventually, eventually_blocking};
pub use proc::{group_members, tether_bin, Proc, Spawn, StartError, Started};
pub use proxy::{Proxy, ProxyBuilder};
pub use recording::{Recorded, RecordingUpstream};
pub use redis::Redis;
pub use sampleapp::SampleApp;
pub use tls::TlsSet;
pub use upstream::{Seen, Upstream};
pub use workflows::{WorkflowOptions, WorkflowReport, Workflows};
