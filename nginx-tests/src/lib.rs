//! End-to-end fixtures for upstreamtop: find the built artifacts, run a real
//! nginx in a temporary prefix, talk HTTP to it, run test backends that count
//! what they served (the ground truth), generate load, isolate backends in a
//! network namespace, and run the probe.
//!
//! Everything here talks to real processes and real sockets; nothing is
//! mocked. Only 127.0.0.0/8, ::1 and addresses inside namespaces created by
//! [`netns`] are ever contacted.

pub mod artifacts;
pub mod backend;
pub mod bench;
pub mod http;
pub mod impair;
pub mod impaired_link;
pub mod load;
pub mod netns;
pub mod nginx;
pub mod prereq;
pub mod probe;
pub mod promtool;
mod rng;
pub mod systemd;
pub mod upstream_log;
pub mod webdriver;
