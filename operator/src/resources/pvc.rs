//! The data volume claim of one member (its `--data-dir`: key shares, tasks, replay log).
//!
//! Made by the operator, not by a StatefulSet template, and named as the earlier layout's
//! single StatefulSet named the claim of the same ordinal, so an upgraded cluster's members
//! mount the volumes that hold their shares. Like StatefulSet claims, it has no owner: deleting
//! the MpcCluster or scaling it down keeps the shares.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ClusterNames, MEMBER_LABEL, labels};
use crate::crd::MpcCluster;

/// The claim `data-<cluster>-<i>`.
pub fn build(mc: &MpcCluster, names: &ClusterNames, i: i32) -> PersistentVolumeClaim {
    let storage = &mc.spec.storage;
    let mut labels = labels(&names.name);
    labels.insert(MEMBER_LABEL.into(), i.to_string());
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(names.data_claim(i)),
            namespace: Some(names.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    storage.size.clone(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
