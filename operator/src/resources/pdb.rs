//! The PodDisruptionBudget: voluntary disruptions take at most one node at a time, and none
//! that would leave fewer members than the largest threshold of the keys they hold.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ClusterNames, child_meta, selector_labels};
use crate::crd::MpcCluster;

/// The PodDisruptionBudget; `largest_threshold` is the largest threshold of the keys the
/// members hold, when known.
pub fn build(
    mc: &MpcCluster,
    names: &ClusterNames,
    largest_threshold: Option<u16>,
) -> PodDisruptionBudget {
    let spare = largest_threshold.map_or(1, |t| (mc.spec.replicas - i32::from(t)).max(0));
    PodDisruptionBudget {
        metadata: child_meta(mc, names, names.workload()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(spare.min(1))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&names.name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
