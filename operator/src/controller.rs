//! The reconciler: one `MpcCluster` in, its children applied (server-side apply, one field
//! manager, controller owner references), its status written from what was observed.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, info, warn};

use crate::crd::{MpcCluster, MpcClusterStatus, PeerStatus};
use crate::keys::{ClusterKeys, KeyError};
use crate::metrics::OperatorMetrics;
use crate::resources::statefulset::WorkloadDefaults;
use crate::resources::{
    ClusterNames, MEMBER_LABEL, api_token, config, member_secret, network_policy, pdb, pvc,
    service_monitor, services, statefulset,
};

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
    /// Namespaces whose MpcClusters are managed; empty: every namespace.
    pub watch_namespaces: Vec<String>,
    /// How the operator reaches the members' APIs.
    pub node_api: NodeApi,
}

/// How the operator reaches a member's HTTP API (to move keys when a cluster scales).
#[derive(Clone, Default)]
pub enum NodeApi {
    /// `http://<pod>.<headless Service>.<namespace>.svc.<cluster domain>:<api port>`.
    #[default]
    Dns,
    /// The base URL of (namespace, pod), when the pods are not reached by DNS (tests).
    Mapped(Arc<MemberUrl>),
}

/// The base URL of a member's API, given its namespace and pod name.
pub type MemberUrl = dyn Fn(&str, &str) -> Option<String> + Send + Sync;

impl std::fmt::Debug for NodeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeApi::Dns => f.write_str("Dns"),
            NodeApi::Mapped(_) => f.write_str("Mapped"),
        }
    }
}

impl NodeApi {
    /// The base URL of member pod `pod`'s API, if it can be reached.
    fn url(&self, mc: &MpcCluster, names: &ClusterNames, pod: &str) -> Option<String> {
        match self {
            NodeApi::Dns => Some(format!(
                "http://{}:{}/",
                names.pod_dns(pod),
                mc.spec.api.port
            )),
            NodeApi::Mapped(map) => map(&names.namespace, pod),
        }
    }
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
    /// The spec names something that cannot be used as it is.
    #[error("{0}")]
    Spec(String),
}

impl Error {
    /// A short label for metrics (one of [`crate::metrics::ERROR_KINDS`]).
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Keys(_) => "keys",
            Error::Spec(_) => "spec",
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
    Deleted,
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

/// `obj` is controlled by `mc`.
fn controlled_by(obj: &impl Resource, mc: &MpcCluster) -> bool {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == mc.metadata.uid.as_ref())
}

/// How long to wait for the earlier layout's pods to be gone before the members start.
const MIGRATION_POLL: Duration = Duration::from_secs(2);

async fn reconcile_cluster(mc: &MpcCluster, ctx: &Context) -> Result<Action, Error> {
    let names = ClusterNames::of(mc, &ctx.config.cluster_domain);
    let ns = names.namespace.clone();
    let client = ctx.client.clone();
    let replicas = mc.spec.replicas;
    let mut changes: Vec<(Change, &'static str, String)> = Vec::new();
    mc.spec.network.check_topic_rules().map_err(Error::Spec)?;

    // Identity keys: a member's own Secret first, then the earlier layout's Secret of every
    // key (migrated, peer ids kept), else a new key. Existing keys are kept byte for byte.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let legacy_secret = secrets
        .get_opt(&names.legacy_secret())
        .await
        .map_err(kube_err("read", "Secret", &names.legacy_secret()))?
        .filter(|s| controlled_by(s, mc));
    let mut keys = match &legacy_secret {
        Some(s) => {
            let entries = s
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            ClusterKeys::from_legacy_entries(&names.name, &entries)
        }
        None => ClusterKeys::default(),
    };
    let known = keys.ordinals().max().map_or(0, |m| m + 1).max(replicas);
    for i in 0..known {
        let name = names.member_secret(i);
        let found = secrets
            .get_opt(&name)
            .await
            .map_err(kube_err("read", "Secret", &name))?;
        if let Some(key) = found.as_ref().and_then(member_secret::key_of) {
            keys.insert_existing(i, key);
        }
    }
    let added = keys.ensure(replicas);
    let members = config::members_file(mc, &names, &keys)?;
    let ordinals: Vec<i32> = keys.ordinals().collect();
    for i in ordinals {
        let files = member_secret::MemberFiles {
            key: keys.get(i).unwrap_or_default(),
            config: config::node_config(mc, &names, &keys, i)?,
            members: members.clone(),
            schemas: config::schema_files(mc),
        };
        let secret = member_secret::build(mc, &names, i, files);
        let (_, c) = apply(&secrets, &secret, "Secret").await?;
        changes.push((c, "Secret", names.member_secret(i)));
    }
    if !added.is_empty() {
        let list: Vec<String> = added.iter().map(|i| names.member(*i)).collect();
        publish(
            ctx,
            mc,
            EventType::Normal,
            "KeysGenerated",
            format!("generated identity keys for {}", list.join(", ")),
        )
        .await;
    }

    // The API token: the spec's Secret, checked, or one made once and never changed.
    let token_name = api_token::secret_name(mc, &names);
    let token =
        secrets
            .get_opt(&token_name)
            .await
            .map_err(kube_err("read", "Secret", &token_name))?;
    match token {
        Some(s) => {
            if let Some(why) = api_token::unusable(&s) {
                return Err(Error::Spec(format!(
                    "the API token Secret {token_name} {why}: put the bearer token under the key `{}`",
                    api_token::TOKEN_KEY
                )));
            }
        }
        None if mc.spec.api.token_secret.is_some() => {
            return Err(Error::Spec(format!(
                "spec.api.tokenSecret names Secret {token_name}, which does not exist in namespace {ns}: create it with the bearer token under the key `{}`, or remove the field to have the operator make one",
                api_token::TOKEN_KEY
            )));
        }
        None => match secrets
            .create(&PostParams::default(), &api_token::generate(mc, &names))
            .await
        {
            Ok(_) => changes.push((Change::Created, "Secret", token_name)),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(kube_err("create", "Secret", &token_name)(e)),
        },
    }

    // Data claims: made when missing, never changed (a bound claim's spec is immutable).
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    for i in 0..replicas {
        let name = names.data_claim(i);
        let exists = claims
            .get_opt(&name)
            .await
            .map_err(kube_err("read", "PersistentVolumeClaim", &name))?
            .is_some();
        if !exists {
            match claims
                .create(&PostParams::default(), &pvc::build(mc, &names, i))
                .await
            {
                Ok(_) => changes.push((Change::Created, "PersistentVolumeClaim", name)),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(kube_err("create", "PersistentVolumeClaim", &name)(e)),
            }
        }
    }

    // The earlier layout's one StatefulSet goes first, and the members start only once its
    // pods are gone: two processes must never share a data volume.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let legacy_set = sets
        .get_opt(&names.legacy_workload())
        .await
        .map_err(kube_err("read", "StatefulSet", &names.legacy_workload()))?
        .filter(|s| controlled_by(s, mc) && !s.labels().contains_key(MEMBER_LABEL));
    if let Some(legacy) = legacy_set {
        if legacy.metadata.deletion_timestamp.is_none() {
            sets.delete(&names.legacy_workload(), &DeleteParams::foreground())
                .await
                .map_err(kube_err("delete", "StatefulSet", &names.legacy_workload()))?;
            info!(name = %names.legacy_workload(), "migrating: deleted the StatefulSet of the earlier layout");
            publish(
                ctx,
                mc,
                EventType::Normal,
                "Migrating",
                format!(
                    "deleted StatefulSet {} of the earlier layout; each member gets its own StatefulSet, Secret and the same data volume once its pods are gone",
                    names.legacy_workload()
                ),
            )
            .await;
        }
        return Ok(Action::requeue(MIGRATION_POLL));
    }

    let defaults = WorkloadDefaults {
        image: ctx.config.default_image.clone(),
    };
    let mut member_sets = Vec::new();
    for i in 0..replicas {
        let (sts, c) = apply(
            &sets,
            &statefulset::build(mc, &names, i, &defaults),
            "StatefulSet",
        )
        .await?;
        changes.push((c, "StatefulSet", names.member(i)));
        member_sets.push(sts);
    }
    let ours = sets
        .list(&ListParams::default().labels(&instance_selector(&names.name)))
        .await
        .map_err(kube_err("list", "StatefulSet", &names.name))?;
    // Keys follow the members; a scale-down waits for them.
    let key_step = reconcile_keys(mc, ctx, &names, &keys, &ours.items).await;
    // Scaled down: the members at or above `replicas` stop once every key that lets the
    // roster move it is off them and no key would fall below its threshold; their Secret and
    // claim stay.
    let leaving_allowed = key_step.blocked.is_empty() && key_step.pending == 0;
    for sts in ours.items {
        let ordinal = sts
            .labels()
            .get(MEMBER_LABEL)
            .and_then(|v| v.parse::<i32>().ok());
        if ordinal.is_some_and(|i| i >= replicas)
            && leaving_allowed
            && controlled_by(&sts, mc)
            && sts.metadata.deletion_timestamp.is_none()
        {
            let name = sts.name_any();
            sets.delete(&name, &DeleteParams::default())
                .await
                .map_err(kube_err("delete", "StatefulSet", &name))?;
            changes.push((Change::Deleted, "StatefulSet", name));
        }
    }

    // Every key is in its member's Secret now: the earlier layout's Secret and ConfigMap go.
    if legacy_secret.is_some() {
        delete_owned::<Secret>(ctx, mc, &names.legacy_secret(), "Secret", &mut changes).await?;
    }
    delete_owned::<ConfigMap>(
        ctx,
        mc,
        &names.legacy_config_map(),
        "ConfigMap",
        &mut changes,
    )
    .await?;

    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let (_, c) = apply(&svcs, &services::headless(mc, &names), "Service").await?;
    changes.push((c, "Service", names.headless_service()));
    let (_, c) = apply(&svcs, &services::metrics(mc, &names), "Service").await?;
    changes.push((c, "Service", names.metrics_service()));
    // The API's Service only when asked for (the earlier layout always made one).
    if mc.spec.api.service {
        let (_, c) = apply(&svcs, &services::client(mc, &names), "Service").await?;
        changes.push((c, "Service", names.client_service()));
    } else {
        delete_owned::<Service>(ctx, mc, &names.client_service(), "Service", &mut changes).await?;
    }

    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    if mc.spec.network_policy.enabled {
        let (_, c) = apply(
            &policies,
            &network_policy::build(mc, &names),
            "NetworkPolicy",
        )
        .await?;
        changes.push((c, "NetworkPolicy", names.workload()));
    } else {
        delete_owned::<NetworkPolicy>(ctx, mc, &names.workload(), "NetworkPolicy", &mut changes)
            .await?;
    }

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let (_, c) = apply(
        &pdbs,
        &pdb::build(mc, &names, key_step.spare),
        "PodDisruptionBudget",
    )
    .await?;
    changes.push((c, "PodDisruptionBudget", names.workload()));

    let monitor_condition = reconcile_service_monitor(mc, ctx, &names, &mut changes).await?;

    for (change, kind, name) in &changes {
        let (reason, verb) = match change {
            Change::Created => ("Created", "created"),
            Change::Updated => ("Updated", "updated"),
            Change::Deleted => ("Deleted", "deleted"),
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

    let extra: Vec<Condition> = monitor_condition
        .into_iter()
        .chain(key_step.condition.clone())
        .collect();
    let mut status = observed_status(mc, &names, &keys, &member_sets, extra)?;
    status.keys = key_step.keys.clone();
    write_status(mc, ctx, status).await?;
    if key_step.pending > 0 || !key_step.blocked.is_empty() {
        return Ok(Action::requeue(KEY_RETRY));
    }
    Ok(Action::requeue(RESYNC))
}

/// How soon a cluster whose keys wait for a reshare (or block a scale-down) is looked at
/// again.
const KEY_RETRY: Duration = Duration::from_secs(10);

/// What the keys of a cluster need and got in one reconcile.
#[derive(Default)]
struct KeyStep {
    /// Every key the members hold, for the status (the last known list when no member
    /// answered).
    keys: Vec<crate::membership::KeyStatus>,
    /// Keys the new member set cannot carry.
    blocked: Vec<crate::membership::Blocked>,
    /// Reshares still to be made (not yet possible, or failed this time).
    pending: usize,
    /// How many members the keys can spare (the PodDisruptionBudget's room).
    spare: Option<usize>,
    /// `ScaleBlocked`, when it applies or applied before.
    condition: Option<Condition>,
}

/// Lists the keys on every ready member, reshares the `roster` keys whose holders are not
/// the members (once every member is ready), and says what blocks a scale-down.
async fn reconcile_keys(
    mc: &MpcCluster,
    ctx: &Context,
    names: &ClusterNames,
    keys: &ClusterKeys,
    sets: &[StatefulSet],
) -> KeyStep {
    use crate::membership;
    let replicas = mc.spec.replicas;
    let mut desired: Vec<String> = (0..replicas)
        .filter_map(|i| config::member_peer(names, keys, i).ok().flatten())
        .map(|p| p.to_string())
        .collect();
    desired.sort();
    let ready: BTreeMap<i32, bool> = sets
        .iter()
        .filter_map(|sts| {
            let ordinal = sts.labels().get(MEMBER_LABEL)?.parse::<i32>().ok()?;
            let ready = sts
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
                > 0;
            Some((ordinal, ready))
        })
        .collect();
    let token = read_api_token(mc, ctx, names).await;
    let leaving = ready.keys().any(|i| *i >= replicas);
    let mut peer_of: BTreeMap<String, i32> = BTreeMap::new();
    let mut views = Vec::new();
    // What each desired member itself shows: a scale-down goes on only once every one of
    // them shows each roster key held by exactly the members.
    let mut own_views: BTreeMap<String, Vec<p2p_mpc_node::mpc::store::KeyInfo>> = BTreeMap::new();
    let mut answered = 0;
    let mut unanswered = 0;
    for (&i, &is_ready) in &ready {
        let Ok(Some(peer)) = config::member_peer(names, keys, i) else {
            continue;
        };
        peer_of.insert(peer.to_string(), i);
        if !is_ready {
            continue;
        }
        let Some(client) = member_client(mc, ctx, names, i, token.clone()) else {
            unanswered += 1;
            continue;
        };
        match membership::list_keys(&client).await {
            Ok(list) => {
                answered += 1;
                if i < replicas {
                    own_views.insert(peer.to_string(), list.clone());
                }
                views.extend(list);
            }
            Err(e) => {
                unanswered += 1;
                warn!(member = %names.member(i), error = %e, "cannot list the member's keys")
            }
        }
    }
    let previous = mc
        .status
        .as_ref()
        .map(|s| s.keys.clone())
        .unwrap_or_default();
    let mut step = KeyStep::default();
    // A scale-down waits for every ready member's answer (one that cannot be asked might
    // hold a key that must move first).
    if leaving && unanswered > 0 {
        step.pending += 1;
    }
    if answered == 0 {
        // No member answered: what was known stands, and a key known to need more holders
        // than the new member set holds the scale-down back.
        step.keys = previous.clone();
        step.spare = previous
            .iter()
            .map(|k| k.holders.saturating_sub(usize::from(k.threshold)))
            .min();
        step.blocked = previous
            .iter()
            .filter(|k| usize::from(k.threshold) > desired.len())
            .map(|k| membership::Blocked {
                key_id: k.key_id.clone(),
                threshold: k.threshold,
                left: desired.len(),
            })
            .collect();
    } else {
        let known = membership::merge(views);
        let plan = membership::plan(&known, &desired);
        step.spare = plan.spare;
        step.blocked = plan.blocked;
        // Every roster key must be shown by each desired member itself as held by exactly
        // the members (not only by the member with the newest view) before leaving ones go.
        if leaving {
            for key in known.values() {
                if key.policy.reshare_rule() != p2p_mpc_node::mpc::policy::ReshareRule::Roster {
                    continue;
                }
                let settled = desired.iter().all(|m| {
                    own_views.get(m).is_some_and(|list| {
                        list.iter().any(|k| {
                            let mut holders = k.participants.clone();
                            holders.sort();
                            k.key_id == key.key_id && holders == desired
                        })
                    })
                });
                if !settled {
                    step.pending += 1;
                }
            }
        }
        for key_id in &plan.unmanaged {
            publish(
                ctx,
                mc,
                EventType::Warning,
                "KeyNotMoved",
                format!(
                    "key {key_id} has holders outside the members and its policy lets only its clients move it (`p2p-mpc keys reshare`)"
                ),
            )
            .await;
        }
        let all_ready = (0..replicas).all(|i| ready.get(&i) == Some(&true));
        let mut moved = BTreeMap::new();
        for reshare in &plan.reshares {
            let coordinator = peer_of.get(&reshare.coordinator).copied();
            let client = coordinator
                .filter(|i| all_ready && ready.get(i) == Some(&true))
                .and_then(|i| member_client(mc, ctx, names, i, token.clone()));
            let Some(client) = client else {
                step.pending += 1;
                continue;
            };
            match membership::reshare(&client, reshare).await {
                Ok(key) => {
                    info!(key_id = %key.key_id, generation = key.generation, holders = key.participants.len(), "key reshared to the members");
                    publish(
                        ctx,
                        mc,
                        EventType::Normal,
                        "Reshared",
                        format!(
                            "moved key {} to the {} members (generation {})",
                            key.key_id,
                            key.participants.len(),
                            key.generation
                        ),
                    )
                    .await;
                    moved.insert(key.key_id.clone(), key);
                }
                Err(e) => {
                    step.pending += 1;
                    warn!(key_id = %reshare.key_id, error = %e, "reshare to the members failed; retrying");
                    publish(
                        ctx,
                        mc,
                        EventType::Warning,
                        "ReshareFailed",
                        format!("moving key {} to the members: {e}", reshare.key_id),
                    )
                    .await;
                }
            }
        }
        // Scheduled refreshes, once nothing else is to be done with the keys.
        if let Some(interval) = mc.spec.keys.refresh_seconds()
            && all_ready
            && step.pending == 0
            && step.blocked.is_empty()
        {
            let now = p2p_mpc_node::mpc::store::unix_now();
            for due in membership::refresh_due(&known, &desired, now, interval) {
                let client = peer_of
                    .get(&due.coordinator)
                    .and_then(|i| member_client(mc, ctx, names, *i, token.clone()));
                let Some(client) = client else { continue };
                match membership::refresh(&client, &due.key_id).await {
                    Ok(key) => {
                        info!(key_id = %key.key_id, generation = key.generation, "key refreshed on schedule");
                        publish(
                            ctx,
                            mc,
                            EventType::Normal,
                            "Refreshed",
                            format!(
                                "refreshed key {} on schedule (generation {})",
                                key.key_id, key.generation
                            ),
                        )
                        .await;
                        moved.insert(key.key_id.clone(), key);
                    }
                    Err(e) => {
                        warn!(key_id = %due.key_id, error = %e, "scheduled refresh failed; retrying");
                        step.pending += 1;
                        publish(
                            ctx,
                            mc,
                            EventType::Warning,
                            "RefreshFailed",
                            format!("refreshing key {} on schedule: {e}", due.key_id),
                        )
                        .await;
                    }
                }
            }
        }
        let mut known = known;
        known.extend(moved);
        step.keys = known.values().map(membership::KeyStatus::of).collect();
    }
    step.condition = if step.blocked.is_empty() {
        let was = mc
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "ScaleBlocked"));
        was.then(|| {
            condition(
                "ScaleBlocked",
                false,
                "KeysFit",
                "every key fits the member set",
            )
        })
    } else {
        let list: Vec<String> = step
            .blocked
            .iter()
            .map(|b| {
                format!(
                    "key {} needs {} holders, {} would be left",
                    b.key_id, b.threshold, b.left
                )
            })
            .collect();
        Some(condition(
            "ScaleBlocked",
            true,
            "BelowThreshold",
            &format!(
                "{replicas} members cannot carry every key: {}; the leaving members keep running",
                list.join("; ")
            ),
        ))
    };
    step
}

/// The API token of a cluster's nodes, from its Secret.
async fn read_api_token(
    mc: &MpcCluster,
    ctx: &Context,
    names: &ClusterNames,
) -> Option<p2p_mpc_node::config::ApiToken> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let secret = secrets
        .get_opt(&api_token::secret_name(mc, names))
        .await
        .ok()
        .flatten()?;
    let bytes = secret.data?.get(api_token::TOKEN_KEY)?.0.clone();
    let text = String::from_utf8(bytes).ok()?;
    p2p_mpc_node::config::parse_token(&text, "the API token Secret").ok()
}

/// A client of member `i`'s API.
fn member_client(
    mc: &MpcCluster,
    ctx: &Context,
    names: &ClusterNames,
    i: i32,
    token: Option<p2p_mpc_node::config::ApiToken>,
) -> Option<p2p_mpc_node::api::client::ApiClient> {
    let url = ctx.config.node_api.url(mc, names, &names.pod(i))?;
    match p2p_mpc_node::api::client::ApiClient::with_token(&url, token, None) {
        Ok(client) => Some(client),
        Err(e) => {
            warn!(%url, error = %e, "cannot make a client of the member's API");
            None
        }
    }
}

/// The label selector of every child object of cluster `name`.
fn instance_selector(name: &str) -> String {
    format!("app.kubernetes.io/instance={name},{CHILD_SELECTOR}")
}

/// Deletes an object that is no longer wanted (or of the earlier layout), if `mc` controls it.
async fn delete_owned<K>(
    ctx: &Context,
    mc: &MpcCluster,
    name: &str,
    kind: &'static str,
    changes: &mut Vec<(Change, &'static str, String)>,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &mc.namespace().unwrap_or_default());
    let found = api
        .get_opt(name)
        .await
        .map_err(kube_err("read", kind, name))?;
    if found.is_some_and(|o| controlled_by(&o, mc)) {
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(kube_err("delete", kind, name))?;
        changes.push((Change::Deleted, kind, name.to_string()));
    }
    Ok(())
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

/// The status from what was observed: keys, the members' StatefulSets (`sets[i]` is
/// member `i`'s).
pub fn observed_status(
    mc: &MpcCluster,
    names: &ClusterNames,
    keys: &ClusterKeys,
    sets: &[StatefulSet],
    extra: Vec<Condition>,
) -> Result<MpcClusterStatus, KeyError> {
    let replicas = mc.spec.replicas;
    let (mut ready, mut updated, mut sts_current) = (0, 0, true);
    for sts in sets {
        let st = sts.status.clone().unwrap_or_default();
        ready += st.ready_replicas.unwrap_or(0).min(1);
        updated += st.updated_replicas.unwrap_or(0).min(1);
        sts_current &= st.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    }

    let mut peers = std::collections::BTreeMap::new();
    for i in 0..replicas {
        if let Some(peer) = config::member_peer(names, keys, i)? {
            let pod = names.pod(i);
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
        keys: vec![],
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
        && current.keys == status.keys
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

/// The APIs of one watch scope: every namespace (`None`) or one.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One controller for MpcClusters of `namespace` (every namespace when `None`).
async fn run_scope(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let children = watcher::Config::default().labels(CHILD_SELECTOR);
    // Secrets are not watched: that would need list/watch on every Secret in scope. The
    // operator reads its Secrets by name and repairs them at the next resync.
    Controller::new(
        scoped::<MpcCluster>(&client, ns),
        watcher::Config::default(),
    )
    .owns(scoped::<StatefulSet>(&client, ns), children.clone())
    .owns(scoped::<Service>(&client, ns), children.clone())
    .owns(scoped::<PodDisruptionBudget>(&client, ns), children.clone())
    .owns(scoped::<NetworkPolicy>(&client, ns), children)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "reconcile did not finish");
        }
    })
    .await;
}

/// Runs the controller until `shutdown` resolves: one for every namespace, or one per
/// namespace of `config.watch_namespaces`.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Arc<OperatorMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let scopes: Vec<Option<String>> = if config.watch_namespaces.is_empty() {
        vec![None]
    } else {
        config.watch_namespaces.iter().cloned().map(Some).collect()
    };
    let ctx = Arc::new(Context::new(client, config, metrics.clone()));
    let shutdown = shutdown.shared();
    metrics.set_ready(true);
    futures::future::join_all(
        scopes
            .into_iter()
            .map(|ns| run_scope(ctx.clone(), ns, shutdown.clone())),
    )
    .await;
    metrics.set_ready(false);
}
