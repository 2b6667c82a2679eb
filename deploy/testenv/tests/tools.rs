//! Every tool install.sh provides is there and runs.

use std::process::Command;

use p2p_mpc_testenv::{or_skip, tool};

#[tokio::test]
async fn every_tool_runs_and_reports_its_pinned_version() {
    let cases = [
        ("kube-apiserver", &["--version"][..], "v1.37.2"),
        ("kube-controller-manager", &["--version"][..], "v1.37.2"),
        ("kube-scheduler", &["--version"][..], "v1.37.2"),
        ("kubelet", &["--version"][..], "v1.37.2"),
        ("kube-proxy", &["--version"][..], "v1.37.2"),
        ("kubectl", &["version", "--client"][..], "v1.37.2"),
        ("coredns", &["-version"][..], "CoreDNS-1.12.4"),
        ("etcd", &["--version"][..], "3.7.3"),
        ("helm", &["version", "--short"][..], "v3.22.0"),
        ("kubeconform", &["-v"][..], "v0.8.0"),
        ("jaeger", &["version"][..], ""),
        ("prometheus", &["--version"][..], "version 3.16.0"),
        ("promtool", &["--version"][..], "version 3.16.0"),
    ];
    for (name, args, expected) in cases {
        let Some(path) = or_skip(tool(name).await) else {
            return;
        };
        let out = Command::new(&path)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name} {args:?} failed: {text}");
        assert!(
            text.contains(expected),
            "{name} {args:?} printed {text:?}, expected it to contain {expected:?}"
        );
    }
}
