//! `p2p-mpc keys create|list|show|set-policy|refresh|reshare|sign`: threshold keys through a
//! node's HTTP API (`convert-legacy` works offline, in `main`).

use serde_json::{Value, json};

use crate::api::client::{ApiClient, ClientError, encode_segment};
use crate::cli::{KeysCommand, OutputFormat};

/// Runs one `keys` subcommand against `client` and prints the answer.
pub async fn run(client: ApiClient, command: KeysCommand) -> Result<(), ClientError> {
    match command {
        KeysCommand::Create {
            threshold,
            scheme,
            participants,
            policy,
            output,
            ..
        } => {
            let mut body = json!({ "scheme": scheme.name(), "threshold": threshold, "policy": policy_json(&policy) });
            if !participants.is_empty() {
                body["participants"] = json!(participants);
            }
            let key: Value = client.post("v1/keys", &body).await?;
            print(output, &key, || key_table(std::slice::from_ref(&key)));
        }
        KeysCommand::List { output, .. } => {
            let list: Value = client.get("v1/keys").await?;
            let keys = list["keys"].as_array().cloned().unwrap_or_default();
            print(output, &list, || {
                if keys.is_empty() {
                    "no keys on this node (create one with `p2p-mpc keys create --threshold T`)"
                        .to_string()
                } else {
                    key_table(&keys)
                }
            });
        }
        KeysCommand::Show {
            key_id,
            network,
            output,
            ..
        } => {
            let mut path = format!("v1/keys/{}", encode_segment(&key_id));
            if let Some(network) = network {
                path.push_str(&format!("?network={}", network.name()));
            }
            let key: Value = client.get(&path).await?;
            print(output, &key, || key_details(&key));
        }
        KeysCommand::SetPolicy {
            key_id,
            policy,
            authorize,
            output,
            ..
        } => {
            let new_policy: crate::mpc::policy::SigningPolicy =
                serde_json::from_value(policy_json(&policy))
                    .map_err(|e| ClientError::Decode(e.to_string()))?;
            let new_policy = new_policy.normalized().map_err(ClientError::Decode)?;
            // The approvals name the policy in force, as this node shows it: a change
            // approved against another policy is refused by every holder.
            let key_path = format!("v1/keys/{}", encode_segment(&key_id));
            let info: Value = client.get(&key_path).await?;
            let current: crate::mpc::policy::SigningPolicy =
                serde_json::from_value(info["policy"].clone())
                    .map_err(|e| ClientError::Decode(format!("the key's current policy: {e}")))?;
            let version = info["policy_version"].as_u64().unwrap_or(0);
            let what = crate::mpc::policy::Approves::PolicyChange {
                current: current.stamp(version),
                new: new_policy.digest(),
            };
            let authorizations =
                crate::commands::client::approve_with_files(&authorize, &key_id, what)
                    .map_err(ClientError::Decode)?;
            let path = format!("v1/keys/{}/policy", encode_segment(&key_id));
            let answer: Value = client
                .post(
                    &path,
                    &json!({ "policy": new_policy, "authorizations": authorizations }),
                )
                .await?;
            print(output, &answer, || {
                let mut out = format!(
                    "key id: {}\npolicy: {} (version {})\ncommitted on: {}",
                    text(&answer["key_id"]),
                    policy_label(&answer["policy"]),
                    answer["policy_version"],
                    list(&answer["committed_on"])
                );
                let lagging = list(&answer["lagging"]);
                if !lagging.is_empty() {
                    out.push_str(&format!(
                        "\nlagging (will catch up; they refuse to sign until then): {lagging}"
                    ));
                }
                out
            });
        }
        KeysCommand::Refresh {
            key_id,
            authorize,
            output,
            ..
        } => {
            let key = reshare(&client, &key_id, None, &authorize).await?;
            print(output, &key, || key_details(&key));
        }
        KeysCommand::Reshare {
            key_id,
            holders,
            authorize,
            output,
            ..
        } => {
            let key = reshare(&client, &key_id, Some(holders), &authorize).await?;
            print(output, &key, || key_details(&key));
        }
        KeysCommand::ConvertLegacy { .. } => {
            return Err(ClientError::Decode(
                "`keys convert-legacy` works on a data directory, not through the API".into(),
            ));
        }
        KeysCommand::Sign {
            key_id,
            message,
            authorize,
            output,
            ..
        } => {
            let message = message.trim().to_string();
            let bytes = hex::decode(&message).map_err(|_| {
                ClientError::Decode(format!(
                    "--message must be hex (e.g. 68656c6c6f for \"hello\"), got `{message}`"
                ))
            })?;
            // Authorizations name the node that coordinates the request: the one called.
            let authorizations = if authorize.client_keys.is_empty() {
                vec![]
            } else {
                let status: Value = client.get("v1/status").await?;
                let coordinator = status["peer_id"]
                    .as_str()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| {
                        ClientError::Decode(format!(
                            "the node's status names no peer id to authorize: {status}"
                        ))
                    })?;
                crate::commands::client::authorize_with_files(
                    &authorize,
                    &key_id,
                    coordinator,
                    &bytes,
                )
                .map_err(ClientError::Decode)?
            };
            let path = format!("v1/keys/{}/sign", encode_segment(&key_id));
            let answer: Value = client
                .post(
                    &path,
                    &json!({ "message": message, "authorizations": authorizations }),
                )
                .await?;
            print(output, &answer, || {
                let signers = answer["signers"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("\n            ")
                    })
                    .unwrap_or_default();
                format!(
                    "key id:     {}\npublic key: {}\nsignature:  {}\nsigners:    {}",
                    text(&answer["key_id"]),
                    text(&answer["public_key"]),
                    text(&answer["signature"]),
                    signers
                )
            });
        }
    }
    Ok(())
}

/// Refreshes (`holders` none) or reshares `key_id` through the node, approving it with the
/// client key files given: the approvals name the generation made (the key's current one,
/// as this node shows it, plus one) and the new holder set.
async fn reshare(
    client: &ApiClient,
    key_id: &str,
    holders: Option<Vec<String>>,
    authorize: &crate::cli::AuthorizeArgs,
) -> Result<Value, ClientError> {
    let key_path = format!("v1/keys/{}", encode_segment(key_id));
    let info: Value = client.get(&key_path).await?;
    let set = match &holders {
        Some(list) => list.clone(),
        None => info["participants"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let peers = crate::mpc::parse_peers(&set)
        .map_err(|e| ClientError::Decode(format!("--holders: {e}")))?;
    let generation = info["generation"].as_u64().unwrap_or(0) + 1;
    let what = crate::mpc::policy::Approves::Reshare {
        generation,
        holders: crate::mpc::policy::holders_digest(&peers),
    };
    let authorizations = crate::commands::client::approve_with_files(authorize, key_id, what)
        .map_err(ClientError::Decode)?;
    match holders {
        None => {
            let path = format!("v1/keys/{}/refresh", encode_segment(key_id));
            client
                .post(&path, &json!({ "authorizations": authorizations }))
                .await
        }
        Some(list) => {
            let path = format!("v1/keys/{}/reshare", encode_segment(key_id));
            client
                .post(
                    &path,
                    &json!({ "holders": list, "authorizations": authorizations }),
                )
                .await
        }
    }
}

/// The JSON policy that the flags describe.
fn policy_json(p: &crate::cli::PolicyArgs) -> Value {
    let mut policy = if p.open {
        json!({ "open": true })
    } else {
        json!({ "clients": p.clients })
    };
    if let Some(k) = p.approvals {
        policy["approvals"] = json!(k);
    }
    if let Some(n) = p.max_message_bytes {
        policy["max_message_bytes"] = json!(n);
    }
    if let Some(prefix) = &p.message_prefix {
        policy["message_prefix"] = json!(prefix);
    }
    if let Some(n) = p.max_signatures_per_minute {
        policy["max_signatures_per_minute"] = json!(n);
    }
    if !p.admins.is_empty() {
        policy["admins"] = json!(p.admins);
    }
    if let Some(k) = p.admin_approvals {
        policy["admin_approvals"] = json!(k);
    }
    if let Some(rule) = &p.reshare {
        policy["reshare"] = json!(rule);
    }
    policy
}

/// `open`, `legacy-open` or `K-of-N clients`, from a key's JSON policy.
/// A JSON list of strings, comma-separated.
fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn policy_label(p: &Value) -> String {
    let label = signing_label(p);
    if p["reshare"] == json!("roster") {
        format!("{label}; reshared to the roster")
    } else {
        label
    }
}

fn signing_label(p: &Value) -> String {
    if p["legacy"] == json!(true) {
        return "legacy-open".into();
    }
    if p["open"] == json!(true) {
        return match p["admins"].as_array() {
            Some(a) if !a.is_empty() => {
                format!(
                    "open ({}-of-{} admins)",
                    text(&p["admin_approvals"]),
                    a.len()
                )
            }
            _ => "open (fixed)".into(),
        };
    }
    let n = p["clients"].as_array().map(Vec::len).unwrap_or(0);
    format!("{}-of-{n} clients", text(&p["approvals"]))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print(output: OutputFormat, json: &Value, table: impl FnOnce() -> String) {
    match output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(json).unwrap_or_default())
        }
        OutputFormat::Table => println!("{}", table()),
    }
}

/// One key, a field per line.
fn key_details(k: &Value) -> String {
    let n = k["participants"].as_array().map(Vec::len).unwrap_or(0);
    let mut rows = vec![
        ("key id".to_string(), text(&k["key_id"])),
        ("scheme".to_string(), text(&k["scheme"])),
        (
            "threshold".to_string(),
            format!("{} of {n}", text(&k["threshold"])),
        ),
        ("participants".to_string(), list(&k["participants"])),
        ("generation".to_string(), text(&k["generation"])),
        ("public key".to_string(), text(&k["public_key"])),
    ];
    if !k["internal_key"].is_null() {
        rows.push(("internal key".into(), text(&k["internal_key"])));
    }
    if !k["address"].is_null() {
        rows.push((
            format!("address ({})", text(&k["network"])),
            text(&k["address"]),
        ));
    }
    rows.push(("status".into(), text(&k["status"])));
    rows.push((
        "policy".into(),
        format!(
            "{} (version {})",
            policy_label(&k["policy"]),
            text(&k["policy_version"])
        ),
    ));
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(name, value)| format!("{name:<width$}  {value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A table of keys: id, threshold/participants, public key, status, policy.
pub fn key_table(keys: &[Value]) -> String {
    let mut out = format!(
        "{:<32}  {:<12}  {:>5}  {:<64}  {:<6}  {}\n",
        "KEY ID", "SCHEME", "T/N", "PUBLIC KEY", "STATUS", "POLICY"
    );
    for k in keys {
        let n = k["participants"].as_array().map(Vec::len).unwrap_or(0);
        out.push_str(&format!(
            "{:<32}  {:<12}  {:>5}  {:<64}  {:<6}  {}\n",
            text(&k["key_id"]),
            text(&k["scheme"]),
            format!("{}/{n}", text(&k["threshold"])),
            text(&k["public_key"]),
            text(&k["status"]),
            policy_label(&k["policy"]),
        ));
    }
    out.trim_end().to_string()
}
