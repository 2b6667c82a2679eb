//! Keeps `cli.yml` equal to the clap definition of the `p2p-mpc` command line.
//!
//! On a mismatch, run `UPDATE_CLI_YML=1 cargo test -p p2p-mpc-node --test cli_docs` to
//! rewrite `cli.yml` from the code, then review the diff.

use clap::CommandFactory;
use p2p_mpc_node::cli::Cli;
use serde_yaml::{Mapping, Value};

fn describe_arg(arg: &clap::Arg) -> Option<Value> {
    if arg.is_hide_set() {
        return None;
    }
    let mut m = Mapping::new();
    let id = arg.get_id().as_str();
    if id == "help" || id == "version" {
        return None;
    }
    match arg.get_long() {
        Some(long) => m.insert("flag".into(), format!("--{long}").into()),
        None => m.insert(
            "argument".into(),
            arg.get_value_names()
                .map(|v| v[0].to_string())
                .unwrap_or_else(|| id.to_uppercase())
                .into(),
        ),
    };
    if let Some(short) = arg.get_short() {
        m.insert("short".into(), format!("-{short}").into());
    }
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    if takes_value && arg.get_long().is_some() {
        let name = arg
            .get_value_names()
            .map(|v| v[0].to_string())
            .unwrap_or_else(|| id.to_uppercase());
        m.insert("value".into(), name.into());
    }
    let possible: Vec<Value> = arg
        .get_possible_values()
        .iter()
        .filter(|p| !p.is_hide_set())
        .map(|p| p.get_name().into())
        .collect();
    if takes_value && !possible.is_empty() {
        m.insert("values".into(), Value::Sequence(possible));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    if takes_value && !defaults.is_empty() {
        m.insert("default".into(), defaults.join(",").into());
    }
    if !takes_value {
        m.insert("default".into(), "false".into());
    }
    if matches!(arg.get_action(), clap::ArgAction::Append) {
        m.insert("repeatable".into(), true.into());
    }
    if arg.is_required_set() {
        m.insert("required".into(), true.into());
    }
    if let Some(env) = arg.get_env() {
        m.insert("env".into(), env.to_string_lossy().into_owned().into());
    }
    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
    m.insert("help".into(), help.into());
    Some(Value::Mapping(m))
}

fn describe(cmd: &clap::Command) -> Value {
    let mut m = Mapping::new();
    m.insert("name".into(), cmd.get_name().into());
    if let Some(about) = cmd.get_about() {
        m.insert("about".into(), about.to_string().into());
    }
    let args: Vec<Value> = cmd.get_arguments().filter_map(describe_arg).collect();
    if !args.is_empty() {
        m.insert("options".into(), Value::Sequence(args));
    }
    let subs: Vec<Value> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .map(describe)
        .collect();
    if !subs.is_empty() {
        m.insert("subcommands".into(), Value::Sequence(subs));
    }
    Value::Mapping(m)
}

const HEADER: &str =
    "# The p2p-mpc command line: every flag and subcommand, generated from the clap definition.
# A test (node/tests/cli_docs.rs) keeps this file equal to the code; regenerate it with
#   UPDATE_CLI_YML=1 cargo test -p p2p-mpc-node --test cli_docs
# Without a subcommand, `p2p-mpc` runs a node with the options below. Each option with an
# `env` can also be set through that environment variable; a flag wins over the variable,
# and both win over the config file (--config), which wins over the default.
";

#[test]
fn cli_yml_matches_the_clap_definition() {
    let mut cmd = Cli::command();
    cmd.build();
    let generated = describe(&cmd);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli.yml");
    let text = format!("{HEADER}{}", serde_yaml::to_string(&generated).unwrap());
    if std::env::var("UPDATE_CLI_YML").is_ok() {
        std::fs::write(path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let committed_value: Value = serde_yaml::from_str(&committed).unwrap_or(Value::Null);
    assert!(
        committed_value == generated,
        "cli.yml differs from the clap definition; run UPDATE_CLI_YML=1 cargo test -p p2p-mpc-node --test cli_docs and review the diff.\nExpected:\n{text}"
    );
}

#[test]
fn every_node_flag_has_an_environment_variable() {
    let cmd = Cli::command();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let env = arg
            .get_env()
            .unwrap_or_else(|| panic!("--{id} has no environment variable"));
        let long = arg.get_long().unwrap();
        let expected = format!("P2P_MPC_{}", long.to_uppercase().replace('-', "_"));
        assert_eq!(
            env.to_string_lossy(),
            expected,
            "environment variable of --{long}"
        );
    }
}

#[test]
fn help_lists_every_documented_flag() {
    let help = Cli::command().render_long_help().to_string();
    for flag in [
        "--config",
        "--network-port",
        "--topic",
        "--bootnode",
        "--seed-node",
        "--identity-key-path",
        "--metrics-port",
        "--log-level",
        "--enable-jaeger",
        "--jaeger-host",
        "--jaeger-port",
        "--json-trace",
        "--json-trace-file",
        "--listen-address",
        "--ws-port",
        "--api-port",
        "--api-address",
        "--api-token-file",
        "--data-dir",
        "--max-connections",
        "--max-message-size",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
