//! mlguard: a Kubernetes admission webhook that enforces ML and GPU resource policy, with the
//! policies written in Rego and evaluated in-process.
//!
//! Layers, top to bottom (a module imports only from layers below it; see the README's
//! Development section and `tests/layers.rs`):
//! the commands (`serve`, `audit`, `casefile`, `bench`, `manifests`, `certs`) -> the command line's
//! arguments (`cli`, `config`) -> `sim` and the observers (`metrics`, `decision_log`) ->
//! `admission` -> `policy` -> `cluster` -> leaves (`tls`, `logging`, `alloc`).

pub mod admission;
pub mod alloc;
pub mod audit;
pub mod bench;
pub mod casefile;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod decision_log;
pub mod logging;
pub mod manifests;
pub mod metrics;
pub mod policy;
pub mod serve;
pub mod sim;
pub mod tls;
