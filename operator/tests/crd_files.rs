//! The committed CRD files equal what `p2p-mpc-operator crd` prints.
//! Regenerate with `UPDATE_CRD=1 cargo test -p p2p-mpc-operator --test crd_files`.

use std::path::Path;

const FILES: [&str; 2] = [
    "deploy/crd/mpcclusters.p2p-mpc.dev.yaml",
    "charts/p2p-mpc-operator/crds/mpcclusters.p2p-mpc.dev.yaml",
];

#[test]
fn committed_crd_files_match_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let generated = p2p_mpc_operator::crd_yaml();
    for file in FILES {
        let path = root.join(file);
        if std::env::var("UPDATE_CRD").is_ok() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{file} differs from `p2p-mpc-operator crd`; run UPDATE_CRD=1 cargo test -p p2p-mpc-operator --test crd_files"
        );
    }
}

#[test]
fn crd_command_prints_the_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2p-mpc-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        p2p_mpc_operator::crd_yaml()
    );
}
