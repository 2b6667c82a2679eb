//! p2p-mpc operator: reconciles `MpcCluster` resources into the Kubernetes objects of a
//! running p2p-mpc network.

pub mod crd;
pub mod keys;
pub mod resources;
