//! Cluster state the policies read as `data.mlguard.cluster`: namespaces, ResourceQuotas and
//! nodes, from snapshot files (`snapshot`) or, in a cluster, from watch caches (`watch`).

pub mod quantity;
pub mod snapshot;
pub mod state;

pub use state::ClusterState;
