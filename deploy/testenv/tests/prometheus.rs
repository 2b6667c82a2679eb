//! A real Prometheus scrapes a target served by the test, and promtool checks an exposition.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use p2p_mpc_testenv::{Prometheus, or_skip, port_open, process_alive, promtool, wait_for};

const EXPOSITION: &str = "# HELP testenv_target_requests_total Requests seen by the test target.\n\
# TYPE testenv_target_requests_total counter\n\
testenv_target_requests_total 3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_loopback_target() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test target");
    let target = listener.local_addr().expect("test target address");
    let app = Router::new().route("/metrics", get(|| async { EXPOSITION }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let Some(prometheus) = or_skip(Prometheus::start_scraping(&[target]).await) else {
        return;
    };
    let instance = target.to_string();
    wait_for(
        "up == 1 for the test target",
        Duration::from_secs(60),
        || async {
            let result = prometheus.query("up").await.map_err(|e| e.to_string())?;
            let sample = result
                .iter()
                .find(|s| s["metric"]["instance"] == instance.as_str());
            match sample {
                Some(s) if s["value"][1] == "1" => Ok(()),
                _ => Err(format!("up = {result:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let scraped = prometheus
        .query("testenv_target_requests_total")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        scraped.first().map(|s| s["value"][1].clone()),
        Some("3".into()),
        "{scraped:?}"
    );

    let pid = prometheus.pid();
    let port: u16 = prometheus
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in URL");
    drop(prometheus);
    assert!(
        !process_alive(pid),
        "prometheus (pid {pid}) still running after drop"
    );
    assert!(!port_open(port), "port {port} still open after drop");
    server.abort();
}

#[tokio::test]
async fn promtool_checks_an_exposition() {
    let Some(promtool) = or_skip(promtool().await) else {
        return;
    };
    let check = |text: &'static str| {
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", promtool.display()));
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("writing to promtool");
        child.wait_with_output().expect("promtool output")
    };
    let good = check(EXPOSITION);
    assert!(
        good.status.success(),
        "promtool rejected a valid exposition: {good:?}"
    );
    let bad = check("# TYPE broken counter\nbroken{ 1\n");
    assert!(
        !bad.status.success(),
        "promtool accepted a malformed exposition: {bad:?}"
    );
}
