//! Bad configuration ends the program with exit code 2 and one clear message naming the
//! file, the key and what was expected; nothing is started.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{bin, tempdir, write_file};

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .args([
            "--api-port",
            "0",
            "--metrics-port",
            "0",
            "--network-port",
            "0",
        ])
        .args([
            "--listen-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run p2p-mpc")
}

/// Runs the node with `yaml` as its config file and checks exit code 2, that stderr holds
/// every one of `expect`, and that nothing was started (no data directory).
fn assert_config_error(yaml: &str, expect: &[&str]) {
    let dir = tempdir();
    let path = write_file(dir.path(), "node.yml", yaml);
    let out = run(dir.path(), &["-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code for {yaml:?}; stderr: {stderr}"
    );
    assert!(
        stderr.contains(path.to_str().unwrap()),
        "names the file: {stderr}"
    );
    for e in expect {
        assert!(stderr.contains(e), "expected {e:?} in: {stderr}");
    }
    assert_eq!(stderr.trim().lines().count(), 1, "one message: {stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing half-started: {stderr}"
    );
}

#[test]
fn missing_config_file() {
    let dir = tempdir();
    let out = run(dir.path(), &["-c", "does-not-exist.yml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("does-not-exist.yml") && stderr.contains("No such file"),
        "{stderr}"
    );
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    assert_config_error(
        "topics: [a, b\nnetwork_port: 1\n",
        &["line 2 column", "line 1 column"],
    );
}

#[test]
fn unknown_key_is_named() {
    assert_config_error(
        "netwrok_port: 4001\n",
        &["unknown field `netwrok_port`", "network_port"],
    );
}

#[test]
fn wrong_type_names_key_and_expectation() {
    assert_config_error(
        "network_port: abc\n",
        &["network_port", "expected u16", "line 1 column"],
    );
    assert_config_error("topics: chat\n", &["topics", "expected a sequence"]);
    assert_config_error(
        "enable_jaeger: maybe\n",
        &["enable_jaeger", "expected a boolean"],
    );
}

#[test]
fn port_out_of_range() {
    assert_config_error(
        "metrics_port: 70000\n",
        &["metrics_port", "70000", "expected u16"],
    );
}

#[test]
fn unknown_log_level() {
    assert_config_error("log_level: verbose\n", &["log_level", "verbose", "`info`"]);
}

#[test]
fn unparsable_multiaddr() {
    assert_config_error(
        "bootnodes:\n  - /ip4/999.1.1.1/tcp/1/p2p/12D3KooWLzVeoBe8Xb4bnRVFzsLuNQhPh9WkZVXqEXHZ1QVDR6VP\n",
        &["bootnodes[0]", "not a valid multiaddr", "expected e.g."],
    );
    assert_config_error(
        "seed_nodes: [garbage]\n",
        &["seed_nodes[0]", "not a valid multiaddr"],
    );
}

#[test]
fn bootnode_without_peer_id() {
    assert_config_error(
        "bootnodes:\n  - /ip4/127.0.0.1/tcp/4001/p2p/12D3KooWLzVeoBe8Xb4bnRVFzsLuNQhPh9WkZVXqEXHZ1QVDR6VP\n  - /ip4/127.0.0.1/tcp/4002\n",
        &["bootnodes[1]", "/p2p/<peer id>"],
    );
}

#[test]
fn bad_cluster_roster() {
    assert_config_error(
        "cluster_members:\n  - 12D3KooWLzVeoBe8Xb4bnRVFzsLuNQhPh9WkZVXqEXHZ1QVDR6VP\n  - nobody\n",
        &["cluster_members[1]", "`nobody` is not a peer id"],
    );
    assert_config_error(
        "cluster_members_file: ./no-such-members\n",
        &["cluster_members_file", "no-such-members"],
    );
    let dir = tempdir();
    write_file(
        dir.path(),
        "members",
        "# ok\n12D3KooWLzVeoBe8Xb4bnRVFzsLuNQhPh9WkZVXqEXHZ1QVDR6VP\n\nnobody-here\n",
    );
    let out = run(dir.path(), &["--cluster-members-file", "members"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("members: line 4") && stderr.contains("nobody-here"),
        "{stderr}"
    );
}

#[test]
fn bad_values_of_the_right_type() {
    assert_config_error("max_message_size: 10\n", &["max_message_size", "1024"]);
    assert_config_error("max_connections: 0\n", &["max_connections", "at least 1"]);
    assert_config_error(
        "mpc_round_timeout: 0\n",
        &["mpc_round_timeout", "from 1 to 600 seconds"],
    );
    for key in [
        "mpc_max_sessions_per_peer",
        "mpc_max_keys_per_creator",
        "mpc_max_tasks_per_creator",
    ] {
        assert_config_error(&format!("{key}: 0\n"), &[key, "must be from 1 to", "not 0"]);
    }
    for key in [
        "mpc_max_held_mib_per_session_peer",
        "mpc_max_held_mib_per_peer",
        "mpc_max_held_mib",
        "mpc_max_reading_mib",
    ] {
        assert_config_error(&format!("{key}: 0\n"), &[key, "must be from 1 to", "MiB"]);
    }
    assert_config_error(
        "mpc_max_held_mib_per_session_peer: 32\n",
        &[
            "mpc_max_held_mib_per_session_peer",
            "mpc_max_held_mib_per_peer (16)",
        ],
    );
    assert_config_error(
        "mpc_max_held_mib_per_peer: 200\n",
        &["mpc_max_held_mib_per_peer", "mpc_max_held_mib (128)"],
    );
    assert_config_error(
        "presign_pool_size: 300\n",
        &["presign_pool_size", "from 0 to 256", "not 300"],
    );
    assert_config_error(
        "presign_pool_size: 4\npresign_low_water: 5\n",
        &["presign_low_water", "presign_pool_size (4)", "not 5"],
    );
    assert_config_error("presign_low_water: 0\n", &["presign_low_water", "not 0"]);
    assert_config_error("topics: [\"\"]\n", &["topics[0]", "must not be empty"]);
    assert_config_error(
        "api_token_file: /nonexistent/token\n",
        &["api_token_file", "/nonexistent/token"],
    );
    assert_config_error(
        "api_tls_cert: /nonexistent/cert.pem\n",
        &["api_tls_cert", "without api_tls_key"],
    );
    assert_config_error(
        "api_tls_key: /nonexistent/key.pem\n",
        &["api_tls_key", "without api_tls_cert"],
    );
    assert_config_error(
        "api_tls_cert: /nonexistent/cert.pem\napi_tls_key: /nonexistent/key.pem\n",
        &["api_tls_cert", "cannot read /nonexistent/cert.pem"],
    );
}

/// A certificate file that holds no certificate and a key file that holds no key are named
/// with what is wrong; the key file's content never appears.
#[test]
fn bad_tls_files_are_named_and_never_echoed() {
    let dir = tempdir();
    let secret = "-----BEGIN NOT A KEY-----\nc2VjcmV0LXNlY3JldA==\n-----END NOT A KEY-----\n";
    let key = write_file(dir.path(), "key.pem", secret);
    let cert = write_file(dir.path(), "cert.pem", "not a certificate\n");
    let start_with_tls = || {
        let flags = [
            "--api-tls-cert",
            cert.to_str().unwrap(),
            "--api-tls-key",
            key.to_str().unwrap(),
        ];
        let out = run(dir.path(), &flags);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        stderr
    };
    let stderr = start_with_tls();
    assert!(
        stderr.contains("api_tls_cert") && stderr.contains("holds no PEM certificate"),
        "{stderr}"
    );
    // A real certificate with a key file that holds no key.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let good = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    std::fs::write(&cert, good.pem()).unwrap();
    let stderr = start_with_tls();
    assert!(stderr.contains("holds no PEM private key"), "{stderr}");
    assert!(
        !stderr.contains("c2VjcmV0"),
        "the key file is not echoed: {stderr}"
    );
}

#[test]
fn bad_topic_rules_name_the_topic() {
    assert_config_error(
        "topics: [a]\ntopic_rules:\n  b: {max_bytes: 10}\n",
        &["topic_rules.b", "`b` is not a joined topic (joined: a)"],
    );
    assert_config_error(
        "topics: [a]\ntopic_rules:\n  a: {content_type: json, schema: missing.json}\n",
        &[
            "topic_rules.a",
            "cannot read the schema file",
            "missing.json",
        ],
    );
    assert_config_error(
        "topics: [a]\ntopic_rules:\n  a: {content_type: xml}\n",
        &["topic_rules", "unknown variant `xml`"],
    );
    assert_config_error(
        "topics: [a]\ntopic_rules:\n  a: {content_type: bytes, max_bytes: 0}\n",
        &["topic_rules.a", "max_bytes must be at least 1"],
    );
    // A schema file next to the config that is not a JSON Schema.
    let dir = tempdir();
    write_file(dir.path(), "bad.json", r#"{"type": "nothing"}"#);
    let path = write_file(
        dir.path(),
        "node.yml",
        "topics: [a]\ntopic_rules:\n  a: {content_type: json, schema: bad.json}\n",
    );
    let out = run(dir.path(), &["-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("topic_rules.a") && stderr.contains("not a valid JSON Schema"),
        "{stderr}"
    );
}

#[test]
fn top_level_must_be_a_mapping() {
    assert_config_error("- a\n- b\n", &["expected a mapping"]);
}

#[test]
fn bad_flags_exit_2() {
    let dir = tempdir();
    for (args, expect) in [
        (vec!["--bootnode", "/ip4/1.2.3.4/tcp/1"], "/p2p/<peer id>"),
        (vec!["--seed-node", "nonsense"], "not a valid multiaddr"),
        (vec!["--log-level", "loud"], "possible values"),
        (vec!["--metrics-port", "70000"], "70000"),
        (vec!["--max-message-size", "5"], "out of range"),
        (vec!["--cluster-member", "not-a-peer"], "is not a peer id"),
    ] {
        let out = Command::new(bin())
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn environment_variables_set_flags_and_lose_to_them() {
    let dir = tempdir();
    // An invalid value from the environment is reported like a flag's.
    let out = Command::new(bin())
        .env("P2P_MPC_LOG_LEVEL", "loud")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loud"));
    // The flag wins over the environment.
    let out = Command::new(bin())
        .env("P2P_MPC_LOG_LEVEL", "loud")
        .args(["--log-level", "info", "-c", "missing.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.yml") && !stderr.contains("loud"),
        "{stderr}"
    );
}

#[test]
fn corrupt_identity_key_is_refused_and_kept() {
    let dir = tempdir();
    let key = write_file(dir.path(), "node.key", "this is not a key");
    let out = run(dir.path(), &["--identity-key-path", key.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(key.to_str().unwrap()) && stderr.contains("not a libp2p"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "this is not a key");
    assert!(!dir.path().join("data").exists());
}

#[test]
fn keygen_and_peer_id_subcommands() {
    let dir = tempdir();
    let key = dir.path().join("sub/dir/id.key");
    let out = Command::new(bin())
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(peer.starts_with("12D3KooW"), "{peer}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let out = Command::new(bin())
        .arg("peer-id")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), peer);

    let before = std::fs::read(&key).unwrap();
    let out = Command::new(bin())
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "an existing key is never overwritten"
    );
}

fn run_ok(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn client_key_subcommands() {
    use p2p_mpc_node::mpc::policy::{Approves, Authorization, SigningPolicy};
    let dir = tempdir();
    let key = dir.path().join("alice.key");
    let key_arg = key.to_str().unwrap();
    let public = run_ok(&["client", "keygen", "--out", key_arg]);
    assert_eq!(public.len(), 64, "{public}");
    assert_eq!(run_ok(&["client", "public-key", key_arg]), public);
    // Never overwritten, and the secret never printed.
    let before = std::fs::read(&key).unwrap();
    let out = Command::new(bin())
        .args(["client", "keygen", "--out", key_arg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not overwritten"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let secret = String::from_utf8(before).unwrap();
    assert!(!public.contains(secret.trim()));

    // An authorization the policy check accepts, for that key id, message and coordinator
    // only.
    let coordinator = libp2p::PeerId::random();
    let signing = |message| Approves::Signing {
        message,
        coordinator,
    };
    let line = run_ok(&[
        "client",
        "authorize",
        "--client-key",
        key_arg,
        "--key-id",
        "k1",
        "--message",
        "68656c6c6f",
        "--coordinator",
        &coordinator.to_string(),
        "--ttl",
        "30",
    ]);
    let auth: Authorization = serde_json::from_str(&line).unwrap();
    assert_eq!(auth.client, public);
    assert_eq!(auth.coordinator, Some(coordinator.to_string()));
    let policy = SigningPolicy {
        clients: vec![public.clone()],
        ..SigningPolicy::open()
    };
    let policy = SigningPolicy {
        open: false,
        ..policy
    }
    .normalized()
    .unwrap();
    let now = p2p_mpc_node::mpc::policy::now();
    assert!(
        policy
            .check(
                "k1",
                signing(b"hello"),
                std::slice::from_ref(&auth),
                now,
                |_| false
            )
            .is_ok()
    );
    assert_eq!(
        policy
            .check(
                "k2",
                signing(b"hello"),
                std::slice::from_ref(&auth),
                now,
                |_| false
            )
            .unwrap_err()
            .rule,
        "invalid_signature"
    );
    let elsewhere = Approves::Signing {
        message: b"hello",
        coordinator: libp2p::PeerId::random(),
    };
    assert_eq!(
        policy
            .check("k1", elsewhere, &[auth], now, |_| false)
            .unwrap_err()
            .rule,
        "wrong_coordinator"
    );

    // Bad input: a corrupt key file, a TTL over 10 minutes, a key without a policy.
    std::fs::write(&key, "nonsense").unwrap();
    let out = Command::new(bin())
        .args(["client", "public-key", key_arg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a client key file"));
    for args in [
        vec![
            "client",
            "authorize",
            "--client-key",
            key_arg,
            "--key-id",
            "k",
            "--message",
            "00",
            "--coordinator",
            &coordinator.to_string(),
            "--ttl",
            "601",
        ],
        vec![
            "client",
            "authorize",
            "--client-key",
            key_arg,
            "--key-id",
            "k",
            "--message",
            "00",
        ],
        vec!["keys", "create", "--threshold", "2"],
        vec![
            "keys",
            "create",
            "--threshold",
            "2",
            "--open",
            "--client",
            &public,
        ],
    ] {
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
