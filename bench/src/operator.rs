//! Operator: time from MpcClusters created to all their children present, for 1 cluster and
//! for many at once, on the real test API server; the operator's RSS with them. Baseline:
//! applying the same child objects straight to the API server (what `kubectl apply` does).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt};
use p2p_mpc_operator::crd::MpcCluster;
use p2p_mpc_operator::keys::ClusterKeys;
use p2p_mpc_operator::resources::statefulset::WorkloadDefaults;
use p2p_mpc_operator::resources::{
    ClusterNames, api_token, config, member_secret, network_policy, pdb, pvc, services, statefulset,
};
use p2p_mpc_testenv::ControlPlane;
use serde_json::json;

use crate::nodes::rss_of;
use crate::results::Figure;

const MANAGED: &str = "app.kubernetes.io/managed-by=p2p-mpc-operator";

async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

fn cluster(name: &str) -> anyhow::Result<MpcCluster> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "p2p-mpc.dev/v1alpha1", "kind": "MpcCluster",
        "metadata": {"name": name}, "spec": {"replicas": REPLICAS}
    }))?)
}

async fn create_clusters(
    client: &Client,
    ns: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<MpcCluster>> {
    let api: Api<MpcCluster> = Api::namespaced(client.clone(), ns);
    let made = join_all((0..n).map(|i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &cluster(&format!("{prefix}{i}"))?)
                .await
                .map_err(anyhow::Error::from)
        }
    }))
    .await;
    made.into_iter().collect()
}

/// Members of every cluster of the benchmark.
const REPLICAS: usize = 3;

/// Waits until `n` clusters' children all exist in `ns`: per cluster a Secret, a claim and a
/// StatefulSet per member, the API token Secret, two Services (headless, metrics), a
/// NetworkPolicy and a PodDisruptionBudget.
async fn children_present(
    client: &Client,
    ns: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let lp = ListParams::default().labels(MANAGED);
    let deadline = Instant::now() + timeout;
    loop {
        let counts = [
            (
                Api::<Secret>::namespaced(client.clone(), ns)
                    .list_metadata(&lp)
                    .await?
                    .items
                    .len(),
                (REPLICAS + 1) * n,
            ),
            (
                Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                    .list_metadata(&lp)
                    .await?
                    .items
                    .len(),
                n,
            ),
            (
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
                    .list_metadata(&lp)
                    .await?
                    .items
                    .len(),
                REPLICAS * n,
            ),
            (
                Api::<Service>::namespaced(client.clone(), ns)
                    .list_metadata(&lp)
                    .await?
                    .items
                    .len(),
                2 * n,
            ),
            (
                Api::<StatefulSet>::namespaced(client.clone(), ns)
                    .list_metadata(&lp)
                    .await?
                    .items
                    .len(),
                REPLICAS * n,
            ),
            (
                Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
                    .list_metadata(&lp)
                    .await?
                    .items
                    .len(),
                n,
            ),
        ];
        if counts.iter().all(|(seen, want)| seen >= want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "children of {n} clusters not present within {timeout:?}: {counts:?} (seen, wanted)"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Applies one cluster's children directly, as the baseline.
async fn apply_children(client: &Client, mc: &MpcCluster) -> anyhow::Result<()> {
    let names = ClusterNames::of(mc, "cluster.local");
    let ns = names.namespace.clone();
    let mut keys = ClusterKeys::default();
    keys.ensure(mc.spec.replicas);
    let pp = PatchParams::apply("baseline").force();
    let members = config::members_file(mc, &names, &keys)?;
    let defaults = WorkloadDefaults {
        image: "p2p-mpc:bench".into(),
    };
    for i in 0..mc.spec.replicas {
        let files = member_secret::MemberFiles {
            key: keys.get(i).context("a key per member")?,
            config: config::node_config(mc, &names, &keys, i)?,
            members: members.clone(),
            schemas: config::schema_files(mc),
        };
        Api::<Secret>::namespaced(client.clone(), &ns)
            .patch(
                &names.member_secret(i),
                &pp,
                &Patch::Apply(member_secret::build(mc, &names, i, files)),
            )
            .await?;
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &pvc::build(mc, &names, i))
            .await?;
        Api::<StatefulSet>::namespaced(client.clone(), &ns)
            .patch(
                &names.member(i),
                &pp,
                &Patch::Apply(statefulset::build(mc, &names, i, &defaults)),
            )
            .await?;
    }
    let svcs = Api::<Service>::namespaced(client.clone(), &ns);
    svcs.patch(
        &names.headless_service(),
        &pp,
        &Patch::Apply(services::headless(mc, &names)),
    )
    .await?;
    svcs.patch(
        &names.metrics_service(),
        &pp,
        &Patch::Apply(services::metrics(mc, &names)),
    )
    .await?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &api_token::generate(mc, &names))
        .await?;
    Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .patch(
            &names.workload(),
            &pp,
            &Patch::Apply(network_policy::build(mc, &names)),
        )
        .await?;
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .patch(
            &names.workload(),
            &pp,
            &Patch::Apply(pdb::build(mc, &names, None)),
        )
        .await?;
    Ok(())
}

fn operator_binary() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory")?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "-q",
        "-p",
        "p2p-mpc-operator",
        "--bin",
        "p2p-mpc-operator",
    ]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    if !cmd.status()?.success() {
        bail!("cannot build p2p-mpc-operator");
    }
    Ok(dir.join("p2p-mpc-operator"))
}

/// Runs the operator benchmark.
pub async fn run(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let many = if quick { 10 } else { 100 };
    let bin = operator_binary()?;
    let plane = ControlPlane::start()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = plane.client().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "mpcclusters.p2p-mpc.dev",
        &PatchParams::apply("bench").force(),
        &Patch::Apply(MpcCluster::crd()),
    )
    .await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(
            crds,
            "mpcclusters.p2p-mpc.dev",
            conditions::is_crd_established(),
        ),
    )
    .await??;

    let mut operator = Command::new(&bin)
        .args([
            "run",
            "--metrics-port",
            "0",
            "--health-port",
            "0",
            "--bind-address",
            "127.0.0.1",
            "--log-level",
            "warn",
        ])
        .env("KUBECONFIG", plane.kubeconfig())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let rss_idle = {
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss_of(operator.id()).unwrap_or(0)
    };

    namespace(&client, "one").await?;
    let t = Instant::now();
    create_clusters(&client, "one", "c", 1).await?;
    children_present(&client, "one", 1, Duration::from_secs(60)).await?;
    let one = t.elapsed().as_secs_f64();

    namespace(&client, "many").await?;
    let t = Instant::now();
    create_clusters(&client, "many", "c", many).await?;
    children_present(&client, "many", many, Duration::from_secs(300)).await?;
    let all = t.elapsed().as_secs_f64();
    let rss_many = rss_of(operator.id()).unwrap_or(0);
    let _ = operator.kill();
    let _ = operator.wait();

    // Baseline: the same objects applied directly (owner clusters created first, untimed).
    namespace(&client, "base-one").await?;
    let owners = create_clusters(&client, "base-one", "c", 1).await?;
    let t = Instant::now();
    apply_children(&client, &owners[0]).await?;
    let base_one = t.elapsed().as_secs_f64();
    namespace(&client, "base-many").await?;
    let owners = create_clusters(&client, "base-many", "c", many).await?;
    let t = Instant::now();
    for r in join_all(owners.iter().map(|mc| apply_children(&client, mc))).await {
        r?;
    }
    let base_many = t.elapsed().as_secs_f64();

    Ok(vec![
        Figure::against(
            "operator: 1 cluster created -> children present",
            one,
            "s",
            "direct apply of the same objects",
            base_one,
        ),
        Figure::against(
            format!("operator: {many} clusters at once -> children present"),
            all,
            "s",
            "direct apply of the same objects",
            base_many,
        ),
        Figure::plain("operator RSS idle", rss_idle as f64 / 1048576.0, "MiB"),
        Figure::plain(
            format!("operator RSS with {} clusters", many + 1),
            rss_many as f64 / 1048576.0,
            "MiB",
        ),
    ])
}
