//! The web dashboard in a real browser (headless Chromium) against a live 3-node devnet, the
//! dashboard behind an API token, and the chart's Grafana dashboard against the series a
//! Prometheus scrapes from the same devnet.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::devnet::Devnet;
use common::{NodeProcess, args, bin, tempdir, wait_for, write_file};
use p2p_mpc_testenv::{Error, Prometheus, or_skip};
use serde_json::Value;

/// Headless Chromium (Debian's `chromium` package; `.ci/run` installs it).
fn chromium() -> Result<PathBuf, Error> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            && out.status.success()
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !path.is_empty() {
                return Ok(PathBuf::from(path));
            }
        }
    }
    Err(Error::Unavailable {
        tool: "chromium".into(),
        reason: "not on PATH (apt-get install chromium)".into(),
    })
}

/// What the browser made of a page: the DOM after its scripts ran, and every console
/// message the page produced (script errors, failed loads, CSP violations, console calls).
struct Rendered {
    dom: String,
    console: Vec<String>,
}

/// Loads `url` in headless Chromium, lets its scripts run for a few seconds of virtual time
/// (fetches complete; timers fire), and returns the resulting DOM.
fn render(browser: &Path, url: &str) -> Rendered {
    let profile = tempdir();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .output()
        .expect("run chromium");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}\n{stderr}",
        out.status
    );
    Rendered {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console: stderr
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(str::to_string)
            .collect(),
    }
}

impl Rendered {
    fn state(&self) -> &str {
        let at = self
            .dom
            .find("<body data-state=\"")
            .unwrap_or_else(|| panic!("no body state in:\n{}", self.dom));
        let rest = &self.dom[at + "<body data-state=\"".len()..];
        &rest[..rest.find('"').unwrap()]
    }

    fn has(&self, attribute: &str, value: &str) -> bool {
        self.dom.contains(&format!("{attribute}=\"{value}\""))
    }

    /// The element opened by `attribute="value"` (up to the end of its row).
    fn row(&self, attribute: &str, value: &str) -> &str {
        let at = self
            .dom
            .find(&format!("{attribute}=\"{value}\""))
            .unwrap_or_else(|| panic!("no {attribute}={value} in:\n{}", self.dom));
        let rest = &self.dom[at..];
        &rest[..rest.find("</tr>").unwrap_or(rest.len())]
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    let r = http.get(url).send().await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_the_api_reports_and_the_grafana_dashboard_reads_real_series() {
    let Some(browser) = or_skip(chromium()) else {
        return;
    };
    let dir = tempdir();
    let devnet = Devnet::start(dir.path(), 3);
    let text = devnet.text();
    let nodes = devnet.nodes();
    assert_eq!(nodes.len(), 3, "{text}");
    // The devnet prints every node's dashboard.
    for (_, api) in &nodes {
        assert!(text.contains(&format!("  {api}/  (node ")), "{text}");
    }
    let (peer0, api0) = nodes[0].clone();
    let http = reqwest::Client::new();

    // A signature made through node 0's API.
    let keys = get(&http, &format!("{api0}/v1/keys")).await;
    let key_id = keys["keys"][0]["key_id"].as_str().unwrap().to_string();
    let out = Command::new(bin())
        .args([
            "keys",
            "sign",
            &key_id,
            "--message",
            "6461736862",
            "--output",
            "json",
        ])
        .args(["--client-key", &devnet.client_key(), "--api", &api0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let session = signed["session_id"].as_str().unwrap().to_string();
    // And gossip on the devnet's topic.
    let out = Command::new(bin())
        .args(["publish", "devnet", "hello dashboard", "--api", &api0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let page = render(&browser, &format!("{api0}/"));
    assert!(
        page.console.is_empty(),
        "console messages: {:#?}",
        page.console
    );
    assert_eq!(page.state(), "live", "{}", page.dom);
    // Every peer the API reports, with its round trip once a ping was answered.
    let peers = get(&http, &format!("{api0}/v1/peers")).await;
    let peers = peers["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{peers:?}");
    for p in peers {
        let id = p["peer_id"].as_str().unwrap();
        assert!(
            page.has("data-peer", id),
            "peer {id} missing:\n{}",
            page.dom
        );
        assert!(p["rtt_ms"].as_f64().is_some(), "{p}");
    }
    // Every roster member in the cluster view, this node among them.
    for (peer, _) in &nodes {
        let row = page.row("data-member", peer);
        let expected = if *peer == peer0 {
            "this node"
        } else {
            "connected"
        };
        assert!(row.contains(expected), "{row}");
    }
    // Every key, with its threshold.
    let keys = get(&http, &format!("{api0}/v1/keys")).await;
    let keys = keys["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for k in keys {
        let row = page.row("data-key", k["key_id"].as_str().unwrap());
        assert!(row.contains(&format!("{} of 3", k["threshold"])), "{row}");
    }
    // The signature's session, completed, in the sessions list; the API lists it too.
    let row = page.row("data-session", &session);
    assert!(
        row.contains("data-protocol=\"frost_sign\"") && row.contains("data-outcome=\"completed\""),
        "{row}"
    );
    let sessions = get(&http, &format!("{api0}/v1/sessions?limit=5")).await;
    assert!(sessions["sessions"].as_array().unwrap().len() <= 5);
    let listed = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session"] == session.as_str())
        .unwrap_or_else(|| panic!("{sessions}"));
    assert_eq!(listed["role"], "coordinator", "{listed}");
    assert_eq!(listed["peers"][0], peer0.as_str(), "{listed}");
    // The devnet's aggregation tasks, with their progress.
    let tasks = get(&http, &format!("{api0}/v1/aggregations")).await;
    let tasks = tasks["tasks"].as_array().unwrap();
    assert!(!tasks.is_empty());
    for t in tasks {
        let row = page.row("data-task", t["task_id"].as_str().unwrap());
        assert!(
            row.contains(&format!("/ {} reports", t["min_reports"])),
            "{row}"
        );
    }
    assert!(page.has("data-topic", "devnet"), "{}", page.dom);

    // The Grafana dashboard: every expression is valid PromQL, and every node series it
    // reads exists in what Prometheus scraped from the devnet's nodes.
    let metrics: Vec<std::net::SocketAddr> = (0..3)
        .map(|i| {
            let log = std::fs::read_to_string(dir.path().join(format!("node-{i}.log"))).unwrap();
            let line = log
                .lines()
                .find(|l| l.contains("metrics listening"))
                .unwrap_or_else(|| panic!("no metrics address in node {i}'s log"));
            line.rsplit("addr=").next().unwrap().trim().parse().unwrap()
        })
        .collect();
    // Scraped as a ServiceMonitor would label them: by namespace and pod.
    let groups: String = metrics
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            format!("    - targets: ['{addr}']\n      labels: {{namespace: 'team-a', pod: 'node-{i}'}}\n")
        })
        .collect();
    let config = format!(
        "- job_name: 'devnet'\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  static_configs:\n{groups}"
    );
    let Some(prometheus) = or_skip(Prometheus::start(&config).await) else {
        return;
    };
    let dashboard = grafana_dashboard();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "{exprs:?}");
    let names = metric_names(&exprs);
    let node_names: Vec<&String> = names
        .iter()
        .filter(|n| !n.starts_with("p2p_mpc_operator_"))
        .collect();
    assert!(node_names.len() >= 15, "{node_names:?}");
    for name in &node_names {
        wait_for(
            &format!("series {name} scraped"),
            Duration::from_secs(30),
            || async {
                let found = prometheus
                    .query(&format!("count({{__name__=\"{name}\"}})"))
                    .await
                    .map_err(|e| e.to_string())?;
                if found.is_empty() {
                    Err("no series".into())
                } else {
                    Ok(())
                }
            },
        )
        .await;
    }
    // Every node expression, with the namespace filter set to the scraped one, returns
    // data (a misspelt label matcher would return none), and every label it groups by is
    // one the series it reads carry.
    for expr in exprs.iter().filter(|e| !e.contains("p2p_mpc_operator_")) {
        let concrete = expr
            .replace("$__rate_interval", "1m")
            .replace("$namespace", "team-a");
        wait_for(
            &format!("data for {expr}"),
            Duration::from_secs(30),
            || async {
                let result = prometheus
                    .query(&concrete)
                    .await
                    .map_err(|e| format!("refused: {e}"))?;
                if result.is_empty() {
                    Err("no data".into())
                } else {
                    Ok(())
                }
            },
        )
        .await;
        let names: Vec<String> = metric_names(std::slice::from_ref(expr))
            .into_iter()
            .collect();
        for label in grouping_labels(expr) {
            let query = format!(
                "count({{__name__=~\"{}\", {label}!=\"\"}})",
                names.join("|")
            );
            let found = prometheus.query(&query).await.unwrap();
            assert!(
                !found.is_empty(),
                "{expr}: no series of {names:?} has label `{label}`"
            );
        }
    }
    // Operator expressions (their series come from the operator's own test) still parse.
    for expr in exprs.iter().filter(|e| e.contains("p2p_mpc_operator_")) {
        let concrete = expr
            .replace("$__rate_interval", "1m")
            .replace("$operator_namespace", "team-a");
        prometheus
            .query(&concrete)
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
    }
}

/// The labels of every `by (...)` clause of an expression.
fn grouping_labels(expr: &str) -> Vec<String> {
    expr.match_indices("by (")
        .filter_map(|(at, _)| {
            let rest = &expr[at + 4..];
            rest.find(')').map(|end| &rest[..end])
        })
        .flat_map(|list| list.split(',').map(|l| l.trim().to_string()))
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn grouping_labels_are_read_off_an_expression() {
    assert_eq!(
        grouping_labels(
            "histogram_quantile(0.5, sum by (le, protocol) (rate(x[1m]))) + sum by (pod) (y)"
        ),
        ["le", "protocol", "pod"]
    );
    let names = metric_names(&["rate(p2p_mpc_a_total{x=\"y\"}[1m]) / libp2p_b".to_string()]);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["libp2p_b", "p2p_mpc_a_total"]
    );
}

fn grafana_dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/p2p-mpc-operator/dashboards/p2p-mpc.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of a Grafana dashboard: panel targets and variable queries.
fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("definition", Value::String(e)) if e.starts_with("label_values(") => {
                        // label_values(<series>, <label>): a Grafana function; its series is PromQL.
                        let inner = &e["label_values(".len()..e.rfind(',').unwrap()];
                        out.push(inner.to_string());
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

/// The metric names the expressions read: identifiers of ours or libp2p's.
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("p2p_mpc_") || w.starts_with("libp2p_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn behind_a_token_the_dashboard_shows_nothing_until_the_token_is_given() {
    let Some(browser) = or_skip(chromium()) else {
        return;
    };
    let dir = tempdir();
    let token_file = write_file(dir.path(), "token", "dash-board-token\n");
    let node = NodeProcess::start(
        "A",
        dir.path(),
        &args(&["--api-token-file", token_file.to_str().unwrap()]),
    )
    .await;
    // The page itself carries no data and is served without the token, with a policy that
    // runs only its own script and forbids framing; the data behind it needs the token.
    let r = node
        .http
        .get(format!("{}/", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(!html.contains(&node.peer_id));
    for path in ["/v1/sessions", "/v1/activity", "/v1/aggregations"] {
        let r = node
            .http
            .get(format!("{}{path}", node.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }

    // Without a token: the login form, and nothing of the node.
    let page = render(&browser, &format!("{}/", node.api));
    assert_eq!(page.state(), "login", "{}", page.dom);
    assert!(!page.dom.contains(&node.peer_id), "{}", page.dom);
    // A wrong token: refused, still nothing.
    let page = render(&browser, &format!("{}/#token=not-the-token", node.api));
    assert_eq!(page.state(), "login", "{}", page.dom);
    assert!(
        page.dom.contains("The API refused this token."),
        "{}",
        page.dom
    );
    assert!(!page.dom.contains(&node.peer_id));
    // The right one: the node's data.
    let page = render(&browser, &format!("{}/#token=dash-board-token", node.api));
    assert_eq!(page.state(), "live", "{}", page.dom);
    assert!(page.dom.contains(&node.peer_id), "{}", page.dom);
    // With the right token from the start, no request failed.
    assert!(
        page.console.is_empty(),
        "console messages: {:#?}",
        page.console
    );
    // The token handed over in the address is gone from the page once taken.
    assert!(!page.dom.contains("dash-board-token"), "{}", page.dom);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_a_peer_chooses_is_shown_as_text_and_foreign_pages_get_nothing_from_an_open_api() {
    use p2p_mpc_node::mpc::wire::{Body, MpcMessage, SessionId, encode};
    let Some(browser) = or_skip(chromium()) else {
        return;
    };
    let dir = tempdir();
    let node = NodeProcess::start("A", dir.path(), &[]).await;
    let a: libp2p::PeerId = node.peer_id.parse().unwrap();

    // A peer opens a transfer to the node and aborts it with markup as its reason.
    let key = libp2p::identity::Keypair::generate_ed25519();
    let hostile = key.public().to_peer_id();
    let peer = common::library_peer(key, &node.tcp_addr, &[], 1 << 20).await;
    node.wait_connected_to(&hostile.to_string(), Duration::from_secs(20))
        .await;
    let session = SessionId::random();
    let markup = "<img src=x onerror=\"document.title='pwned'\"><b>bold</b>";
    for body in [
        Body::TransferInvite {
            bytes: 1 << 20,
            chunks: p2p_mpc_node::mpc::chunks::chunks_of(1 << 20),
        },
        Body::Abort {
            reason: markup.into(),
            blamed: vec![hostile.to_string()],
        },
    ] {
        peer.send_mpc_raw(a, encode(&MpcMessage::new(session, body)))
            .await
            .unwrap();
    }
    let listed = wait_for(
        "the aborted session listed",
        Duration::from_secs(20),
        || async {
            let s = node.get("/v1/sessions").await?;
            s["sessions"]
                .as_array()
                .and_then(|l| {
                    l.iter()
                        .find(|x| x["session"] == session.to_string().as_str())
                })
                .cloned()
                .ok_or_else(|| s.to_string())
        },
    )
    .await;
    assert_eq!(listed["outcome"], "aborted", "{listed}");
    assert!(
        listed["error"].as_str().unwrap().contains(markup),
        "{listed}"
    );

    let page = render(&browser, &format!("{}/", node.api));
    assert_eq!(page.state(), "live", "{}", page.dom);
    let row = page.row("data-session", &session.to_string());
    assert!(
        row.contains("&lt;img src=x onerror=") && row.contains("&lt;b&gt;bold&lt;/b&gt;"),
        "{row}"
    );
    assert!(
        !page.dom.contains("<img") && !page.dom.contains("<b>bold"),
        "{}",
        page.dom
    );
    assert!(
        page.dom.contains("<title>p2p-mpc node</title>"),
        "{}",
        page.dom
    );
    assert!(page.console.is_empty(), "{:#?}", page.console);

    // Without a token, a request that names the node by a DNS name (a rebinding site) or
    // comes from another origin's page is refused; the node's own page is answered.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/status", node.api);
    let origin = node.api.clone();
    for (header, value, code) in [
        ("host", "rebind.example:8080", Some("host_not_allowed")),
        ("origin", "http://evil.example", Some("cross_origin")),
        ("origin", origin.as_str(), None),
    ] {
        let r = http.get(&url).header(header, value).send().await.unwrap();
        match code {
            Some(code) => {
                assert_eq!(r.status().as_u16(), 403, "{header}: {value}");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["code"], code, "{body}");
            }
            None => assert_eq!(r.status().as_u16(), 200, "{header}: {value}"),
        }
    }
}
