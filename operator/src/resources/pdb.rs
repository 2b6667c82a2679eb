//! The PodDisruptionBudget: voluntary disruptions take at most one node at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ClusterNames, child_meta, selector_labels};
use crate::crd::MpcCluster;

/// The PodDisruptionBudget.
pub fn build(mc: &MpcCluster, names: &ClusterNames) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(mc, names, names.workload()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&names.name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
