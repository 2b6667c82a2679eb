//! `p2p-mpc devnet`: starts, meshes, runs its demo, serves the printed APIs, stops on Ctrl-C.

mod common;

use std::process::Command;
use std::time::Duration;

use common::devnet::Devnet;
use common::{bin, tempdir};

#[test]
fn devnet_runs_its_demo_and_stops_on_ctrl_c() {
    let dir = tempdir();
    let mut devnet = Devnet::start(dir.path(), 3);
    let text = devnet.text();
    assert!(
        text.contains("ed25519 signature")
            && text.contains("secp256k1-tr signature")
            && text
                .matches("verified against the group public key")
                .count()
                == 2
            && text.contains("P2TR address (regtest): bcrt1p")
            && text.contains("the sum matches")
            && text.contains("tried to count 5 with a forged proof: refused")
            && text.contains("the count matches"),
        "{text}"
    );
    assert_eq!(text.matches("  node ").count(), 3, "{text}");
    let api = text
        .lines()
        .find(|l| l.contains("keys list --api"))
        .and_then(|l| l.split_whitespace().last())
        .expect("a `keys list` hint")
        .to_string();

    // The printed command works.
    let out = Command::new(bin())
        .args(["keys", "list", "--output", "json", "--api", &api])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // One key of each scheme.
    let keys = list["keys"].as_array().unwrap();
    let mut schemes: Vec<&str> = keys.iter().map(|k| k["scheme"].as_str().unwrap()).collect();
    schemes.sort();
    assert_eq!(schemes, ["ed25519", "secp256k1-tr"], "{list}");

    // The demo keys have a policy: signing without the client key is refused by the node...
    let key_id = list["keys"][0]["key_id"].as_str().unwrap().to_string();
    assert_eq!(list["keys"][0]["policy"]["approvals"], 1, "{list}");
    let out = Command::new(bin())
        .args([
            "keys",
            "sign",
            &key_id,
            "--message",
            "68656c6c6f",
            "--api",
            &api,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403") && err.contains("too_few_approvals"),
        "{err}"
    );
    // ...and works with the client key the devnet made and printed, in both output formats.
    let client_key = devnet.client_key();
    assert!(std::path::Path::new(&client_key).exists(), "{client_key}");
    for key in keys {
        let key_id = key["key_id"].as_str().unwrap();
        let out = Command::new(bin())
            .args([
                "keys",
                "sign",
                key_id,
                "--message",
                "68656c6c6f",
                "--client-key",
                &client_key,
                "--api",
                &api,
            ])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            table.contains("signature:") && table.contains(key_id),
            "{table}"
        );
    }
    let out = Command::new(bin())
        .args(["keys", "list", "--api", &api])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("KEY ID")
            && table.contains("secp256k1-tr")
            && table.contains("active")
            && table.contains("1-of-1 clients"),
        "{table}"
    );
    // `keys show`: one key, with the P2TR address the devnet printed for a secp256k1-tr key.
    let secp = keys.iter().find(|k| k["scheme"] == "secp256k1-tr").unwrap();
    let secp_id = secp["key_id"].as_str().unwrap();
    let printed = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("P2TR address (regtest): "))
        .expect("the devnet prints the regtest address")
        .to_string();
    let show = |args: &[&str]| {
        Command::new(bin())
            .args(["keys", "show"])
            .args(args)
            .args(["--api", &api])
            .output()
            .unwrap()
    };
    let out = show(&[secp_id, "--network", "regtest"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |name: &str| {
        table
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name:?} row in:\n{table}"))
            .to_string()
    };
    assert_eq!(row("address (regtest)"), printed);
    assert_eq!(row("public key"), secp["public_key"].as_str().unwrap());
    assert_eq!(row("internal key"), secp["internal_key"].as_str().unwrap());
    assert_eq!(row("policy"), "1-of-1 clients (version 0)");
    assert_eq!(row("threshold"), format!("{} of 3", secp["threshold"]));
    let out = show(&[secp_id, "--output", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["public_key"], secp["public_key"], "{json}");
    assert!(json["address"].is_null(), "no network, no address: {json}");
    // An Ed25519 key has no address (the node says so), an unknown network is refused before
    // any request, and so is an unknown key.
    let ed = keys.iter().find(|k| k["scheme"] == "ed25519").unwrap();
    let out = show(&[ed["key_id"].as_str().unwrap(), "--network", "regtest"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("400") && err.contains("only secp256k1-tr keys"),
        "{err}"
    );
    let out = show(&[secp_id, "--network", "mars"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("unknown Bitcoin network `mars`")
            && err.contains("regtest"),
        "{err}"
    );
    let out = show(&["no-such-key"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("404"), "{err}");

    let out = Command::new(bin())
        .args([
            "keys",
            "sign",
            &key_id,
            "--message",
            "not-hex",
            "--api",
            &api,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hex"));

    let status = devnet
        .interrupt_and_wait(Duration::from_secs(15))
        .expect("devnet stops within 15 s of Ctrl-C");
    assert!(status.success(), "{status}");
    // Its nodes are gone: the API no longer answers.
    let out = Command::new(bin())
        .args(["keys", "list", "--api", &api])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
