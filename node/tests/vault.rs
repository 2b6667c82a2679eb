//! The vault through the CLI against real nodes: a 100 MiB file put on one node and got
//! back through another with n − k holders dead; a holder with a corrupt fragment and one
//! that releases a wrong key share are caught and blamed, and the file still comes back;
//! approvals are checked by every holder; delete; a coordinator killed before or after its
//! commit leaves either no file or a whole one on every holder.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{NodeProcess, args, bin, identity, tempdir, wait_for};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ROUND_TIMEOUT_MS: &str = "3000";

struct Cluster {
    dir: PathBuf,
    keys: Vec<String>,
    members: String,
    nodes: Vec<Option<NodeProcess>>,
}

impl Cluster {
    /// Nodes named `names`, a roster of all of them, the first node as bootnode of the rest.
    async fn start(dir: &Path, names: &[&str], faults: &[(&str, &str)]) -> Cluster {
        let ids: Vec<(String, libp2p::PeerId)> = names.iter().map(|n| identity(dir, n)).collect();
        let members = ids
            .iter()
            .map(|(_, p)| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            keys: ids.into_iter().map(|(k, _)| k).collect(),
            members,
            nodes: Vec::new(),
        };
        for (i, name) in names.iter().enumerate() {
            let fault = faults.iter().find(|(n, _)| n == name).map(|(_, f)| *f);
            let node = cluster.start_node(i, name, fault).await;
            cluster.nodes.push(Some(node));
        }
        cluster.wait_meshed().await;
        cluster
    }

    async fn start_node(&self, i: usize, name: &str, fault: Option<&str>) -> NodeProcess {
        let mut extra = args(&[
            "--identity-key-path",
            &self.keys[i],
            "--cluster-member",
            &self.members,
        ]);
        // Any other running node is a bootnode (a restarted node listens on a new port).
        if let Some(other) = self
            .nodes
            .iter()
            .enumerate()
            .find_map(|(j, n)| n.as_ref().filter(|_| j != i))
        {
            extra.push("--bootnode".into());
            extra.push(other.tcp_addr.clone());
        }
        let mut env = vec![("P2P_MPC_TEST_ROUND_TIMEOUT_MS", ROUND_TIMEOUT_MS)];
        if let Some(f) = fault {
            env.push(("P2P_MPC_TEST_FAULT", f));
        }
        NodeProcess::start_with_env(name, &self.dir, &extra, &env).await
    }

    async fn wait_meshed(&self) {
        let up: Vec<&NodeProcess> = self.nodes.iter().flatten().collect();
        for a in &up {
            for b in &up {
                if a.peer_id != b.peer_id {
                    a.wait_connected_to(&b.peer_id, Duration::from_secs(30))
                        .await;
                }
            }
        }
    }

    fn node(&self, i: usize) -> &NodeProcess {
        self.nodes[i].as_ref().expect("running")
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run the CLI")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A client key file and its public key.
fn client_key(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let out = ok(&cli(&["client", "keygen", "--out", path.to_str().unwrap()]));
    let public = out
        .split_whitespace()
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no public key in {out}"))
        .to_string();
    (path.display().to_string(), public)
}

/// `len` bytes that do not repeat in any way the coding could exploit.
fn write_random(path: &Path, len: usize) -> String {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).unwrap();
    hex::encode(Sha256::digest(&data))
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn put(c: &Cluster, i: usize, name: &str, file: &Path, t: u16, client: &str) -> Output {
    cli(&[
        "vault",
        "put",
        name,
        "--file",
        file.to_str().unwrap(),
        "--threshold",
        &t.to_string(),
        "--client",
        client,
        "--member",
        &c.members,
        "--api",
        &c.node(i).api,
    ])
}

fn get(c: &Cluster, i: usize, name: &str, keys: &[&str], out: &Path) -> Output {
    let api = c.node(i).api.clone();
    let mut a = vec![
        "vault",
        "get",
        name,
        "--out",
        out.to_str().unwrap(),
        "--member",
        &c.members,
        "--api",
        &api,
    ];
    for k in keys {
        a.extend(["--client-key", k]);
    }
    cli(&a)
}

async fn files(node: &NodeProcess) -> Vec<Value> {
    node.get("/v1/vault").await.unwrap()["files"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_comes_back_through_another_node_with_a_holder_dead_and_bad_holders_blamed() {
    let dir = tempdir();
    let mut c = Cluster::start(
        dir.path(),
        &["A", "B", "C"],
        &[("C", "corrupt-vault-share")],
    )
    .await;
    let (key, public) = client_key(dir.path(), "client.key");
    let (stranger_key, _) = client_key(dir.path(), "stranger.key");
    let big = dir.path().join("big.bin");
    let digest = write_random(&big, 100 << 20);

    // Put through A, 2 of 3.
    let out = ok(&put(&c, 0, "big.bin", &big, 2, &public));
    assert!(out.contains("stored `big.bin`"), "{out}");
    for i in 0..3 {
        let listed = files(c.node(i)).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["size"], 100 << 20);
    }
    // No node holds the plaintext: fragments are half the ciphertext each, and no 64-byte
    // piece of the file is in any of them.
    let plain = std::fs::read(&big).unwrap();
    for i in 0..3 {
        let fragments = dir
            .path()
            .join(format!("data-{}", ["A", "B", "C"][i]))
            .join("vault/big.bin/fragments");
        let stored = std::fs::read(&fragments).unwrap();
        let len = stored.len();
        assert!(len < (51 << 20) && len > (49 << 20), "{len}");
        for at in [0usize, 1 << 20, 77 << 20] {
            let piece = &plain[at..at + 64];
            assert!(
                !stored.windows(64).any(|w| w == piece),
                "plaintext at {at} found in holder {i}'s fragments"
            );
        }
    }

    // C is down (n − k = 1 dead); got through B.
    c.nodes[2].take();
    let back = dir.path().join("back.bin");
    let out = get(&c, 1, "big.bin", &[&key], &back);
    let stdout = ok(&out);
    assert!(stdout.contains("got `big.bin`"), "{stdout}");
    assert_eq!(sha256_file(&back), digest);

    // Unauthorized: a key that the policy does not list, refused by the coordinator ...
    let err = failed(&get(
        &c,
        1,
        "big.bin",
        &[&stranger_key],
        &dir.path().join("x"),
    ));
    assert!(
        err.contains("403") && err.contains("unlisted_client"),
        "{err}"
    );
    assert!(!dir.path().join("x").exists() && !dir.path().join("x.part").exists());

    // C back (it releases a wrong key share); the fragments of the holder B asks first (the
    // first other holder in the manifest's order) corrupted on disk. Through B: those
    // fragments are caught by their hashes and the third holder's are used; C's share is
    // caught by the client against the commitment and B's and A's are used.
    let restarted = c.start_node(2, "C", Some("corrupt-vault-share")).await;
    c.nodes[2] = Some(restarted);
    c.wait_meshed().await;
    let manifest = c.node(1).get("/v1/vault/big.bin/manifest").await.unwrap();
    let first_other = manifest["manifest"]["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .find(|h| *h != c.node(1).peer_id)
        .unwrap();
    let victim = (0..3).find(|i| c.node(*i).peer_id == first_other).unwrap();
    let fragments = dir.path().join(format!(
        "data-{}/vault/big.bin/fragments",
        ["A", "B", "C"][victim]
    ));
    let mut bytes = std::fs::read(&fragments).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&fragments, &bytes).unwrap();
    let again = dir.path().join("again.bin");
    let out = get(&c, 1, "big.bin", &[&key], &again);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "holder {} released a key share that does not match",
            c.node(2).peer_id
        )),
        "{stderr}"
    );
    assert_eq!(sha256_file(&again), digest);
    let b_log = c.node(1).stderr_lines().join("\n");
    assert!(
        b_log.lines().any(|l| {
            l.contains("returned a fragment that is not the manifest's")
                && l.contains(&c.node(victim).peer_id)
        }),
        "B names the bad fragment's holder"
    );

    // Delete needs the client too; then the file is gone everywhere.
    let err = failed(&cli(&[
        "vault",
        "delete",
        "big.bin",
        "--client-key",
        &stranger_key,
        "--api",
        &c.node(0).api,
    ]));
    assert!(err.contains("403"), "{err}");
    let out = ok(&cli(&[
        "vault",
        "delete",
        "big.bin",
        "--client-key",
        &key,
        "--api",
        &c.node(0).api,
    ]));
    assert!(out.contains("deleted `big.bin`"), "{out}");
    for i in 0..3 {
        assert!(files(c.node(i)).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_holder_checks_the_approvals_even_when_the_coordinator_does_not() {
    let dir = tempdir();
    let c = Cluster::start(
        dir.path(),
        &["A", "B", "C"],
        &[("A", "skip-vault-authorization")],
    )
    .await;
    let (_, public) = client_key(dir.path(), "client.key");
    let (stranger_key, _) = client_key(dir.path(), "stranger.key");
    let small = dir.path().join("small.txt");
    std::fs::write(&small, b"only the client may read this").unwrap();
    ok(&put(&c, 0, "small.txt", &small, 2, &public));
    // A releases its own share without a check; B and C refuse, each by its own copy of
    // the policy: fewer than 2 shares, nothing released to the stranger.
    let err = failed(&get(
        &c,
        0,
        "small.txt",
        &[&stranger_key],
        &dir.path().join("x"),
    ));
    assert!(
        err.contains("403") && err.contains("unlisted_client"),
        "{err}"
    );
    for i in [1, 2] {
        assert!(
            err.contains(&c.node(i).peer_id),
            "{} did not refuse: {err}",
            c.node(i).name
        );
    }
    assert!(!dir.path().join("x").exists() && !dir.path().join("x.part").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_around_its_commit_leaves_no_file_or_a_whole_one() {
    let dir = tempdir();
    let (key, public) = client_key(dir.path(), "client.key");
    let data = dir.path().join("data.bin");
    let digest = write_random(&data, 3 << 20);
    for (fault, survives) in [
        ("crash-before-vault-commit", false),
        ("crash-after-vault-commit", true),
    ] {
        let run = dir.path().join(fault);
        std::fs::create_dir_all(&run).unwrap();
        let mut c = Cluster::start(&run, &["A", "B", "C"], &[("A", fault)]).await;
        // A dies (exit 3) in the middle of the put: the client sees the put fail.
        let err = failed(&put(&c, 0, "doc", &data, 2, &public));
        assert!(!err.is_empty());
        c.nodes[0].take();
        // A comes back without the fault and asks the others (or they ask it).
        let restarted = c.start_node(0, "A", None).await;
        c.nodes[0] = Some(restarted);
        c.wait_meshed().await;
        let expect = if survives { 1 } else { 0 };
        for i in 0..3 {
            let node = c.node(i);
            wait_for(
                &format!("{fault}: node {i} settles"),
                Duration::from_secs(60),
                || async {
                    let n = files(node).await.len();
                    let staging = std::fs::read_dir(
                        run.join(format!("data-{}", ["A", "B", "C"][i]))
                            .join("vault/.staging"),
                    )
                    .map(|d| d.count())
                    .unwrap_or(0);
                    if n == expect && staging == 0 {
                        Ok(())
                    } else {
                        Err(format!("{n} files, {staging} staged"))
                    }
                },
            )
            .await;
        }
        if survives {
            let back = run.join("back.bin");
            ok(&get(&c, 2, "doc", &[&key], &back));
            assert_eq!(sha256_file(&back), digest);
        } else {
            // Nothing left behind: the name is free again.
            ok(&put(&c, 1, "doc", &data, 2, &public));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_data_is_wiped_gets_its_fragments_and_key_share_back() {
    let dir = tempdir();
    let mut c = Cluster::start(dir.path(), &["A", "B", "C"], &[]).await;
    let (key, public) = client_key(dir.path(), "client.key");
    let data = dir.path().join("data.bin");
    let digest = write_random(&data, 5 << 20);
    ok(&put(&c, 0, "doc", &data, 2, &public));
    let vault_c = dir.path().join("data-C/vault");
    let fragments_before = std::fs::read(vault_c.join("doc/fragments")).unwrap();

    // C loses everything of the vault.
    c.nodes[2].take();
    std::fs::remove_dir_all(&vault_c).unwrap();
    let restarted = c.start_node(2, "C", None).await;
    c.nodes[2] = Some(restarted);
    c.wait_meshed().await;
    let node_c = c.node(2);
    wait_for("C to repair `doc`", Duration::from_secs(60), || async {
        let n = files(node_c).await.len();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} files"))
        }
    })
    .await;
    assert_eq!(
        std::fs::read(vault_c.join("doc/fragments")).unwrap(),
        fragments_before,
        "C's fragments are rebuilt exactly"
    );
    assert!(
        node_c
            .stderr_lines()
            .iter()
            .any(|l| l.contains("vault file repaired"))
    );

    // A is gone: the file comes back only if C's fragments and key share are whole again.
    c.nodes[0].take();
    let back = dir.path().join("back.bin");
    ok(&get(&c, 1, "doc", &[&key], &back));
    assert_eq!(sha256_file(&back), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_coordinator_in_the_middle_of_a_put_leaves_no_file_anywhere() {
    let dir = tempdir();
    let (_, public) = client_key(dir.path(), "client.key");
    let data = dir.path().join("data.bin");
    write_random(&data, 40 << 20);
    let mut c = Cluster::start(dir.path(), &["A", "B", "C"], &[]).await;
    let mut upload = Command::new(bin())
        .args([
            "vault",
            "put",
            "big",
            "--file",
            data.to_str().unwrap(),
            "--threshold",
            "2",
            "--client",
            &public,
            "--member",
            &c.members,
            "--api",
            &c.node(0).api,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Some fragments are out (each holder has staged some), then A is killed.
    let staged = |i: usize| {
        std::fs::read_dir(
            dir.path()
                .join(format!("data-{}/vault/.staging", ["A", "B", "C"][i])),
        )
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::metadata(e.path().join("fragments")).map_or(0, |m| m.len()))
                .sum::<u64>()
        })
        .unwrap_or(0)
    };
    wait_for("fragments on B", Duration::from_secs(60), || async {
        if staged(1) > 0 {
            Ok(())
        } else {
            Err("none yet".to_string())
        }
    })
    .await;
    c.nodes[0].as_mut().unwrap().kill();
    let status = upload.wait().unwrap();
    assert!(
        !status.success(),
        "the upload cannot succeed without its coordinator"
    );
    c.nodes[0].take();
    let restarted = c.start_node(0, "A", None).await;
    c.nodes[0] = Some(restarted);
    c.wait_meshed().await;
    for i in 0..3 {
        let node = c.node(i);
        wait_for(
            &format!("node {i} has nothing of `big`"),
            Duration::from_secs(60),
            || async {
                let n = files(node).await.len();
                let left = staged(i);
                if n == 0 && left == 0 {
                    Ok(())
                } else {
                    Err(format!("{n} files, {left} staged bytes"))
                }
            },
        )
        .await;
    }
    // The name is free again.
    let small = dir.path().join("small.bin");
    write_random(&small, 1000);
    ok(&put(&c, 1, "big", &small, 2, &public));
}
