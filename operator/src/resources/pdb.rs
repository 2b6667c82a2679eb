//! The PodDisruptionBudget: voluntary disruptions take at most one node at a time, and none
//! that would leave some key fewer holders than its threshold.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ClusterNames, child_meta, selector_labels};
use crate::crd::MpcCluster;

/// The PodDisruptionBudget; `spare` is how many members the keys can spare (over every key,
/// its holders among the members less its threshold), when known.
pub fn build(mc: &MpcCluster, names: &ClusterNames, spare: Option<usize>) -> PodDisruptionBudget {
    let spare = spare.map_or(1, |s| s.min(1) as i32);
    PodDisruptionBudget {
        metadata: child_meta(mc, names, names.workload()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(spare)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&names.name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
