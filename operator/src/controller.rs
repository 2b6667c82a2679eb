//! The reconciler: one `MpcCluster` in, its children applied (server-side apply, one field
//! manager, controller owner references), its status written from what was observed.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, info, warn};

use crate::crd::{MpcCluster, MpcClusterStatus, PeerStatus};
use crate::keys::{ClusterKeys, KeyError, pod_name};
use crate::metrics::OperatorMetrics;
use crate::resources::statefulset::WorkloadDefaults;
use crate::resources::{ClusterNames, config, pdb, secret, service_monitor, services, statefulset};

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "p2p-mpc-operator";
/// Label selector of the children the controller watches.
const CHILD_SELECTOR: &str = "app.kubernetes.io/managed-by=p2p-mpc-operator";
/// How often an unchanged cluster is looked at again.
const RESYNC: Duration = Duration::from_secs(300);

/// Operator-wide settings.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Node image when a spec names none.
    pub default_image: String,
    /// DNS suffix of the cluster, for the pods' stable names.
    pub cluster_domain: String,
}

/// A failed reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {kind} {name}: {source}")]
    Kube {
        action: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Keys(#[from] KeyError),
}

impl Error {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Keys(_) => "keys",
        }
    }
}

/// What the reconciler shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: OperatorConfig,
    pub metrics: Arc<OperatorMetrics>,
    /// Consecutive failures per cluster, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, config: OperatorConfig, metrics: Arc<OperatorMetrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

/// What an apply did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

fn kube_err(
    action: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_string();
    move |source| Error::Kube {
        action,
        kind,
        name,
        source,
    }
}

/// Server-side applies `obj` and reports whether it was created, changed or left alone
/// (by its resourceVersion: an apply that changes nothing does not bump it).
async fn apply<K>(api: &Api<K>, obj: &K, kind: &'static str) -> Result<(K, Change), Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let before = api
        .get_opt(&name)
        .await
        .map_err(kube_err("read", kind, &name))?
        .and_then(|o| o.meta().resource_version.clone());
    let after = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(kube_err("apply", kind, &name))?;
    let change = match (before, after.meta().resource_version.clone()) {
        (None, _) => Change::Created,
        (Some(a), Some(b)) if a != b => Change::Updated,
        _ => Change::Unchanged,
    };
    Ok((after, change))
}

async fn publish(ctx: &Context, mc: &MpcCluster, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &mc.object_ref(&())).await {
        warn!(error = %e, "cannot publish event");
    }
}

/// Reconciles one cluster.
pub async fn reconcile(mc: Arc<MpcCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = format!("{}/{}", mc.namespace().unwrap_or_default(), mc.name_any());
    let span =
        tracing::info_span!("reconcile", cluster = %key, generation = mc.metadata.generation);
    let start = Instant::now();
    let result = reconcile_cluster(&mc, &ctx).instrument(span).await;
    ctx.metrics
        .observe(start.elapsed(), result.as_ref().err().map(Error::label));
    match &result {
        Ok(_) => {
            ctx.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        Err(e) => {
            warn!(cluster = %key, error = %e, "reconcile failed");
            publish(
                &ctx,
                &mc,
                EventType::Warning,
                "ReconcileFailed",
                e.to_string(),
            )
            .await;
            mark_degraded(&mc, &ctx, &e.to_string()).await;
        }
    }
    result
}

/// Requeue with exponential backoff (1 s doubling to 5 min) after a failure.
pub fn error_policy(mc: Arc<MpcCluster>, _error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", mc.namespace().unwrap_or_default(), mc.name_any());
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = failures.entry(key).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(9)).min(RESYNC);
    Action::requeue(delay)
}

async fn reconcile_cluster(mc: &MpcCluster, ctx: &Context) -> Result<Action, Error> {
    let names = ClusterNames::of(mc, &ctx.config.cluster_domain);
    let ns = names.namespace.clone();
    let client = ctx.client.clone();
    let mut changes: Vec<(Change, &'static str, String)> = Vec::new();

    // Identity keys: existing ones are kept byte for byte, missing ones generated.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let existing = secrets.get_opt(&names.secret()).await.map_err(kube_err(
        "read",
        "Secret",
        &names.secret(),
    ))?;
    let entries = existing
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let mut keys = ClusterKeys::from_entries(entries);
    let added = keys.ensure(&names.name, mc.spec.replicas);
    let (_, c) = apply(&secrets, &secret::build(mc, &names, &keys), "Secret").await?;
    changes.push((c, "Secret", names.secret()));
    if !added.is_empty() {
        publish(
            ctx,
            mc,
            EventType::Normal,
            "KeysGenerated",
            format!("generated identity keys for {}", added.join(", ")),
        )
        .await;
    }

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let (_, c) = apply(
        &config_maps,
        &config::build(mc, &names, &keys)?,
        "ConfigMap",
    )
    .await?;
    changes.push((c, "ConfigMap", names.config_map()));

    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let (_, c) = apply(&svcs, &services::headless(mc, &names), "Service").await?;
    changes.push((c, "Service", names.headless_service()));
    let (_, c) = apply(&svcs, &services::client(mc, &names), "Service").await?;
    changes.push((c, "Service", names.client_service()));

    let defaults = WorkloadDefaults {
        image: ctx.config.default_image.clone(),
    };
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let (sts, c) = apply(
        &sets,
        &statefulset::build(mc, &names, &defaults),
        "StatefulSet",
    )
    .await?;
    changes.push((c, "StatefulSet", names.workload()));

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let (_, c) = apply(&pdbs, &pdb::build(mc, &names), "PodDisruptionBudget").await?;
    changes.push((c, "PodDisruptionBudget", names.workload()));

    let monitor_condition = reconcile_service_monitor(mc, ctx, &names, &mut changes).await?;

    for (change, kind, name) in &changes {
        let (reason, verb) = match change {
            Change::Created => ("Created", "created"),
            Change::Updated => ("Updated", "updated"),
            Change::Unchanged => continue,
        };
        info!(kind, name, "{verb}");
        publish(
            ctx,
            mc,
            EventType::Normal,
            reason,
            format!("{verb} {kind} {name}"),
        )
        .await;
    }

    let status = observed_status(mc, &names, &keys, &sts, monitor_condition)?;
    write_status(mc, ctx, status).await?;
    Ok(Action::requeue(RESYNC))
}

/// Applies or removes the ServiceMonitor; returns the condition to report when one was asked for.
async fn reconcile_service_monitor(
    mc: &MpcCluster,
    ctx: &Context,
    names: &ClusterNames,
    changes: &mut Vec<(Change, &'static str, String)>,
) -> Result<Option<Condition>, Error> {
    let wanted = mc.spec.metrics.service_monitor.enabled;
    let installed = kube::discovery::pinned_kind(&ctx.client, &service_monitor::gvk()).await;
    let (resource, _caps) = match installed {
        Ok(found) => found,
        Err(_) if wanted => {
            return Ok(Some(condition(
                "ServiceMonitor",
                false,
                "CRDNotInstalled",
                "monitoring.coreos.com/v1 ServiceMonitor is not installed in this cluster; install the Prometheus operator (e.g. kube-prometheus-stack) or set spec.metrics.serviceMonitor.enabled=false",
            )));
        }
        Err(_) => return Ok(None),
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &names.namespace, &resource);
    if wanted {
        let (_, c) = apply(&api, &service_monitor::build(mc, names), "ServiceMonitor").await?;
        changes.push((c, "ServiceMonitor", names.workload()));
        Ok(Some(condition(
            "ServiceMonitor",
            true,
            "Created",
            "the ServiceMonitor selects the nodes' metrics port",
        )))
    } else {
        // Turned off: remove the one we made earlier, if any.
        let ours = api
            .get_opt(&names.workload())
            .await
            .map_err(kube_err("read", "ServiceMonitor", &names.workload()))?
            .is_some_and(|o| {
                o.owner_references()
                    .iter()
                    .any(|r| Some(&r.uid) == mc.metadata.uid.as_ref())
            });
        if ours {
            api.delete(&names.workload(), &Default::default())
                .await
                .map_err(kube_err("delete", "ServiceMonitor", &names.workload()))?;
            publish(
                ctx,
                mc,
                EventType::Normal,
                "Deleted",
                format!("deleted ServiceMonitor {}", names.workload()),
            )
            .await;
        }
        Ok(None)
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// The status from what was observed: keys, the StatefulSet's status.
pub fn observed_status(
    mc: &MpcCluster,
    names: &ClusterNames,
    keys: &ClusterKeys,
    sts: &StatefulSet,
    extra: Option<Condition>,
) -> Result<MpcClusterStatus, KeyError> {
    let replicas = mc.spec.replicas;
    let st = sts.status.clone().unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let sts_current = st.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);

    let mut peers = std::collections::BTreeMap::new();
    for i in 0..replicas {
        let pod = pod_name(&names.name, i);
        if let Some(peer) = keys.peer_id(&pod)? {
            let peer = peer.to_string();
            peers.insert(
                pod.clone(),
                PeerStatus {
                    multiaddr: config::pod_multiaddr(names, &pod, mc.spec.network.port, &peer),
                    peer_id: peer,
                },
            );
        }
    }

    let mut conditions = vec![
        if ready >= replicas {
            condition(
                "Ready",
                true,
                "AllNodesReady",
                &format!("{ready}/{replicas} nodes ready"),
            )
        } else {
            condition(
                "Ready",
                false,
                "NodesNotReady",
                &format!("{ready}/{replicas} nodes ready"),
            )
        },
        if !sts_current || updated < replicas || ready < replicas {
            condition(
                "Progressing",
                true,
                "RollingOut",
                &format!("{updated}/{replicas} nodes updated, {ready}/{replicas} ready"),
            )
        } else {
            condition(
                "Progressing",
                false,
                "Stable",
                "every node runs the current spec",
            )
        },
        condition(
            "Degraded",
            false,
            "ReconcileSucceeded",
            "all child objects are applied",
        ),
    ];
    conditions.extend(extra);
    for c in &mut conditions {
        c.observed_generation = mc.metadata.generation;
    }
    Ok(MpcClusterStatus {
        observed_generation: mc.metadata.generation,
        replicas,
        ready_replicas: ready,
        peers,
        conditions,
    })
}

/// Two condition lists say the same, transition times aside.
fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

/// Writes `status` unless it says what the current status already says. Transition times
/// of conditions whose status did not change are kept.
async fn write_status(
    mc: &MpcCluster,
    ctx: &Context,
    mut status: MpcClusterStatus,
) -> Result<(), Error> {
    let current = mc.status.clone().unwrap_or_default();
    for c in &mut status.conditions {
        if let Some(old) = current
            .conditions
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    let unchanged = current.observed_generation == status.observed_generation
        && current.replicas == status.replicas
        && current.ready_replicas == status.ready_replicas
        && current.peers == status.peers
        && same_conditions(&current.conditions, &status.conditions);
    if unchanged {
        return Ok(());
    }
    let api: Api<MpcCluster> =
        Api::namespaced(ctx.client.clone(), &mc.namespace().unwrap_or_default());
    api.patch_status(
        &mc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map_err(kube_err("write status of", "MpcCluster", &mc.name_any()))?;
    Ok(())
}

/// Best effort: say in the status that the last reconcile failed.
async fn mark_degraded(mc: &MpcCluster, ctx: &Context, message: &str) {
    let mut status = mc.status.clone().unwrap_or_default();
    status.conditions.retain(|c| c.type_ != "Degraded");
    let mut c = condition("Degraded", true, "ReconcileFailed", message);
    c.observed_generation = mc.metadata.generation;
    status.conditions.push(c);
    if let Err(e) = write_status(mc, ctx, status).await {
        warn!(error = %e, "cannot write the Degraded condition");
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Arc<OperatorMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(Context::new(client.clone(), config, metrics.clone()));
    let children = watcher::Config::default().labels(CHILD_SELECTOR);
    metrics.set_ready(true);
    Controller::new(
        Api::<MpcCluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client.clone()), children.clone())
    .owns(Api::<Secret>::all(client.clone()), children.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
    .owns(Api::<Service>::all(client.clone()), children.clone())
    .owns(Api::<PodDisruptionBudget>::all(client.clone()), children)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "reconcile did not finish");
        }
    })
    .await;
    metrics.set_ready(false);
}
