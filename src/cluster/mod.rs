//! Cluster state the policies read as `data.mlguard.cluster`: namespaces, ResourceQuotas,
//! nodes and the Dynamic Resource Allocation objects (`dra`), from snapshot files
//! (`snapshot`) or, in a cluster, from watch caches (`watch`).
//!
//! - `state`: the data model and its JSON form; `quantity`: Kubernetes quantities;
//! - `dra`: DeviceClasses, ResourceClaims, ResourceClaimTemplates and ResourceSlices, cut to
//!   what policies read, and the device capacity the classes' CEL selectors give;
//! - `snapshot`: the state from YAML files; `list`: the state (and workloads) read once live;
//! - `watch`: kube reflectors that keep the state current;
//! - `usage` and `ledger`: what a pod is charged against quotas (`dra_usage`: what its DRA
//!   claims are charged), and reservations for pods
//!   admitted but not yet shown in the quota status (the server's quota coordinator joins
//!   them to the request path); `confirm`: a reservation checked against its pod, so that a
//!   review that did not come from the API server holds no quota for long.
//!
//! Plain data and watches: nothing here imports from the policy engine or the server.

pub mod confirm;
pub mod dra;
pub mod dra_usage;
pub mod ledger;
pub mod list;
pub mod quantity;
pub mod snapshot;
pub mod state;
pub mod usage;
pub mod watch;

pub use state::ClusterState;
