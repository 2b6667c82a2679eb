//! The `MpcCluster` custom resource (`p2p-mpc.dev/v1alpha1`).
//!
//! Ranges and CEL rules here end up in the CRD's schema, so the API server refuses an
//! invalid spec at `kubectl apply` time.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A p2p-mpc network: a StatefulSet of nodes that find each other through bootnodes.
// The derive's repeated `printcolumn`/`validation` arguments are a list, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "p2p-mpc.dev",
    version = "v1alpha1",
    kind = "MpcCluster",
    plural = "mpcclusters",
    shortname = "mpc",
    namespaced,
    status = "MpcClusterStatus",
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A p2p-mpc network of nodes run by the p2p-mpc operator."
)]
#[x_kube(
    validation = Rule::new("self.network.port != self.metrics.port && self.network.port != self.api.port && self.metrics.port != self.api.port").message("network.port, metrics.port and api.port must be different"),
    validation = Rule::new("!has(self.network.websocketPort) || (self.network.websocketPort != self.network.port && self.network.websocketPort != self.metrics.port && self.network.websocketPort != self.api.port)").message("network.websocketPort must differ from the other ports")
)]
#[serde(rename_all = "camelCase")]
pub struct MpcClusterSpec {
    /// Number of nodes, 1 to 1000.
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Node container image. Defaults to the operator's --default-image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// libp2p settings.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Log level of the nodes.
    #[serde(default)]
    pub log_level: LogLevel,
    /// CPU and memory of each node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Persistent volume of each node (its --data-dir). Immutable once created.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable: changing it would orphan the nodes' data volumes"))]
    pub storage: StorageSpec,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// Trace export.
    #[serde(default)]
    pub tracing: TracingSpec,
    /// HTTP API.
    #[serde(default)]
    pub api: ApiSpec,
    /// The threshold keys the members hold.
    #[serde(default)]
    pub keys: KeysSpec,
    /// Scheduling and metadata extras for the node pods.
    #[serde(default)]
    pub pod: PodExtras,
    /// The NetworkPolicy that limits who reaches the nodes' ports.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
}

fn default_true() -> bool {
    true
}

/// The NetworkPolicy of the nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create it (on by default; it takes effect where the network plugin enforces
    /// NetworkPolicies). The p2p port admits only the cluster's own pods; the API and metrics
    /// ports admit `api.allowFrom` and `metrics.allowFrom`.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Node log level.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The node's spelling of the level.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

fn default_network_port() -> i32 {
    4001
}
fn default_metrics_port() -> i32 {
    9090
}
fn default_api_port() -> i32 {
    8080
}
fn default_topics() -> Vec<String> {
    vec!["p2p-mpc".to_string()]
}

/// libp2p settings of the nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// TCP port of libp2p.
    #[serde(default = "default_network_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Gossipsub topics every node joins.
    #[serde(default = "default_topics")]
    #[schemars(length(max = 64))]
    pub topics: Vec<String>,
    /// Port of an additional WebSocket listener; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub websocket_port: Option<i32>,
    /// UDP port of an additional QUIC (v1) listener; off when absent (then the nodes
    /// neither listen nor dial over QUIC). It may be the number of `port` (that one is TCP).
    /// Over QUIC a dead peer is noticed after a 10 s idle timeout, not at once as over TCP,
    /// and a spoofed UDP packet costs a node a handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub quic_port: Option<i32>,
    /// Content rules of joined topics, by topic: a message that breaks its topic's rule is
    /// rejected by every node (not delivered, not forwarded) and counted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub topic_rules: BTreeMap<String, TopicRuleSpec>,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            port: default_network_port(),
            topics: default_topics(),
            websocket_port: None,
            quic_port: None,
            topic_rules: BTreeMap::new(),
        }
    }
}

/// What a valid message on a topic is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopicRuleSpec {
    /// Largest payload a publisher may give, in bytes (at most the node's 1 MiB message limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_bytes: Option<i64>,
    /// `text` (the default), `json`, `cbor` or `bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<TopicContentType>,
    /// A JSON Schema, as JSON text, that every message must meet (with `json` or `cbor`). It
    /// must be self-contained: a `$ref` outside it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub schema: Option<String>,
}

/// The payload of a topic's messages.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TopicContentType {
    Text,
    Json,
    Cbor,
    Bytes,
}

impl TopicContentType {
    /// The node's name of this content type.
    pub fn to_node(self) -> p2p_mpc_node::network::topic_rules::ContentType {
        use p2p_mpc_node::network::topic_rules::ContentType;
        match self {
            TopicContentType::Text => ContentType::Text,
            TopicContentType::Json => ContentType::Json,
            TopicContentType::Cbor => ContentType::Cbor,
            TopicContentType::Bytes => ContentType::Bytes,
        }
    }
}

impl NetworkSpec {
    /// Checks the topic rules as the nodes will (so a bad schema is reported on the
    /// MpcCluster, not as pods that refuse to start): each ruled topic is joined, and its
    /// schema is JSON and a valid, self-contained JSON Schema for a `json` or `cbor` topic.
    pub fn check_topic_rules(&self) -> Result<(), String> {
        for (topic, rule) in &self.topic_rules {
            let at = format!("spec.network.topicRules[{topic:?}]");
            if !self.topics.contains(topic) {
                return Err(format!(
                    "{at}: `{topic}` is not in spec.network.topics ({}); add it there",
                    self.topics.join(", ")
                ));
            }
            let schema = match &rule.schema {
                None => None,
                Some(text) => Some((
                    None,
                    serde_json::from_str(text)
                        .map_err(|e| format!("{at}.schema is not JSON: {e}"))?,
                )),
            };
            p2p_mpc_node::network::topic_rules::TopicRule::compile(
                rule.max_bytes.map(|m| m.max(0) as usize),
                rule.content_type.map(TopicContentType::to_node),
                schema,
                p2p_mpc_node::config::args::DEFAULT_MAX_MESSAGE_SIZE,
            )
            .map_err(|e| format!("{at}: {e}"))?;
        }
        Ok(())
    }
}

fn default_storage_size() -> Quantity {
    Quantity("1Gi".into())
}

/// The persistent volume of each node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each node's volume.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// Storage class of the volumes; the cluster's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// Metrics settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Port of /metrics, /healthz and /readyz.
    #[serde(default = "default_metrics_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// A Prometheus-operator ServiceMonitor for the nodes.
    #[serde(default)]
    pub service_monitor: ServiceMonitorSpec,
    /// Who may reach the metrics port, as NetworkPolicy peers. Default: pods of the namespace
    /// `monitoring` (where kube-prometheus-stack is usually installed) and of the cluster's
    /// own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_from: Option<Vec<NetworkPolicyPeer>>,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        Self {
            port: default_metrics_port(),
            service_monitor: ServiceMonitorSpec::default(),
            allow_from: None,
        }
    }
}

fn default_interval() -> String {
    "30s".into()
}

/// The ServiceMonitor the operator creates when asked and when its CRD exists.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Create a ServiceMonitor.
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval, e.g. 30s.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
    /// Extra labels of the ServiceMonitor, e.g. `release: kube-prometheus-stack` so that
    /// Prometheus' serviceMonitorSelector matches it.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Default for ServiceMonitorSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: default_interval(),
            labels: BTreeMap::new(),
        }
    }
}

/// Trace export settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// OTLP gRPC export to Jaeger.
    #[serde(default)]
    pub jaeger: JaegerSpec,
}

fn default_jaeger_host() -> String {
    "jaeger-collector.observability.svc".into()
}
fn default_jaeger_port() -> i32 {
    4317
}

/// Where the nodes send their spans.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JaegerSpec {
    /// Export spans.
    #[serde(default)]
    pub enabled: bool,
    /// Host of the OTLP gRPC receiver.
    #[serde(default = "default_jaeger_host")]
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Port of the OTLP gRPC receiver.
    #[serde(default = "default_jaeger_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for JaegerSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            host: default_jaeger_host(),
            port: default_jaeger_port(),
        }
    }
}

/// HTTP API settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    /// Port of the HTTP API.
    #[serde(default = "default_api_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// A Secret of the cluster's namespace whose key `token` is the API's bearer token. When
    /// absent, the operator creates `<name>-api-token` with a random token and never changes it.
    /// Every `/v1` request needs `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub token_secret: Option<String>,
    /// Create a ClusterIP Service `<name>` for the API (off by default: callers reach a pod by
    /// its stable DNS name).
    #[serde(default)]
    pub service: bool,
    /// Who may reach the API port, as NetworkPolicy peers. Default: every pod of the cluster's
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_from: Option<Vec<NetworkPolicyPeer>>,
}

impl Default for ApiSpec {
    fn default() -> Self {
        Self {
            port: default_api_port(),
            token_secret: None,
            service: false,
            allow_from: None,
        }
    }
}

/// What the operator does with the members' keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeysSpec {
    /// Refresh every key whose policy lets the roster move it (`reshare: roster`) once its
    /// shares are this old, e.g. `24h` or `7d` (minutes `m`, hours `h`, days `d`): new shares
    /// of the same key on the same members. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}(m|h|d)$"))]
    pub refresh_interval: Option<String>,
}

impl KeysSpec {
    /// The refresh interval in seconds, if one is set and valid.
    pub fn refresh_seconds(&self) -> Option<u64> {
        let text = self.refresh_interval.as_deref()?;
        let (number, unit) = text.split_at(text.len().checked_sub(1)?);
        let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
        let unit = match unit {
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return None,
        };
        n.checked_mul(unit)
    }
}

/// Pod-level extras.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodExtras {
    /// Node selector of the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra annotations of the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra labels of the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One node as the status shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// libp2p peer id.
    pub peer_id: String,
    /// Address other nodes dial, ending in /p2p/<peer id>.
    pub multiaddr: String,
}

/// Observed state of an MpcCluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MpcClusterStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes wanted.
    #[serde(default)]
    pub replicas: i32,
    /// Nodes ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pod name to peer id and address.
    #[serde(default)]
    pub peers: BTreeMap<String, PeerStatus>,
    /// Ready, Progressing, Degraded, ScaleBlocked (a scale-down held back because a key
    /// needs more holders), and ServiceMonitor when one was asked for.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The threshold keys the members hold: generation, holders, and who moves them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<crate::membership::KeyStatus>,
}
