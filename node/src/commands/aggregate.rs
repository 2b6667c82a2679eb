//! `p2p-mpc aggregate create|submit|collect`: secure-sum tasks through a node's HTTP API.
//! `submit` does the client's cryptography locally: the node it talks to only ever sees
//! shares sealed to each participant.

use std::collections::BTreeSet;
use std::path::Path;

use libp2p::PeerId;
use serde_json::{Value, json};

use crate::api::client::{ApiClient, ClientError, encode_segment};
use crate::cli::{AggregateCommand, OutputFormat};
use crate::mpc::aggregation::client::{
    check_min_threshold, check_pinned, parse_pinned, parse_values, prepare_report_with,
    sign_report, verify_task,
};
use crate::mpc::aggregation::store::TaskInfo;

/// Runs one `aggregate` subcommand against `client` and prints the answer.
pub async fn run(client: ApiClient, command: AggregateCommand) -> Result<(), ClientError> {
    match command {
        AggregateCommand::Create {
            input,
            bits,
            buckets,
            threshold,
            length,
            min_reports,
            participants,
            clients,
            collectors,
            output,
            ..
        } => {
            let mut body = json!({ "min_reports": min_reports });
            if let Some(t) = threshold {
                body["threshold"] = json!(t);
            }
            if let Some(l) = length {
                body["length"] = json!(l);
            }
            body["input"] = match input {
                crate::cli::InputKind::Raw => json!({"type": "raw"}),
                crate::cli::InputKind::Count => json!({"type": "count"}),
                crate::cli::InputKind::Sum => json!({"type": "sum", "bits": bits}),
                crate::cli::InputKind::Histogram => {
                    json!({"type": "histogram", "buckets": buckets})
                }
            };
            if !participants.is_empty() {
                body["participants"] = json!(participants);
            }
            if !clients.is_empty() {
                body["clients"] = json!(clients);
            }
            if !collectors.is_empty() {
                body["collectors"] = json!(collectors);
            }
            let task: Value = client.post("v1/aggregations", &body).await?;
            print(output, &task, || task_table(&task));
        }
        AggregateCommand::Submit {
            task,
            values,
            file,
            member,
            members,
            min_threshold,
            client_key,
            output,
            ..
        } => {
            let pinned = pinned_members(&member, members.as_deref())?;
            let signer = client_key
                .as_deref()
                .map(crate::commands::client::read)
                .transpose()
                .map_err(ClientError::Decode)?;
            let text = match (values, file) {
                (Some(v), _) => v,
                (None, Some(f)) => std::fs::read_to_string(&f).map_err(|e| {
                    ClientError::Decode(format!("cannot read values file {}: {e}", f.display()))
                })?,
                (None, None) => {
                    return Err(ClientError::Decode("give --values or --file".into()));
                }
            };
            let values = parse_values(&text).map_err(ClientError::Decode)?;
            let path = format!("v1/aggregations/{}", encode_segment(&task));
            let info: TaskInfo = client.get(&path).await?;
            if info.params.task_id != task {
                return Err(ClientError::Decode(format!(
                    "the node answered for task {}, not {task}",
                    info.params.task_id
                )));
            }
            verify_task(&info)
                .map_err(|e| ClientError::Decode(format!("refusing to submit: {e}")))?;
            match &pinned {
                Some(members) => check_pinned(&info, members)
                    .map_err(|e| ClientError::Decode(format!("refusing to submit: {e}")))?,
                None => eprintln!(
                    "warning: the participants of task {task} are not pinned (--members FILE or --member PEER_ID): the node you asked named them, and each share is sealed to whoever it named"
                ),
            }
            if let Some(min) = min_threshold {
                check_min_threshold(&info, min)
                    .map_err(|e| ClientError::Decode(format!("refusing to submit: {e}")))?;
            }
            if !info.params.clients.is_empty() && signer.is_none() {
                return Err(ClientError::Decode(format!(
                    "task {task} takes only reports signed by one of its clients: give --client-key FILE"
                )));
            }
            // The test-only `forge-report` fault (test-faults builds): prove one value, share
            // another, so that tests exercise the participants' check of the proof.
            let forge = crate::mpc::faults::Faults::from_env()
                .map_err(ClientError::Decode)?
                .forge_report;
            let report = tokio::task::spawn_blocking(move || {
                let mut report = prepare_report_with(&info, &values, forge)?;
                if let Some(key) = &signer {
                    sign_report(&info, &mut report, key)?;
                }
                Ok::<_, String>(report)
            })
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?
            .map_err(|e| ClientError::Decode(format!("refusing to submit: {e}")))?;
            let body =
                serde_json::to_value(&report).map_err(|e| ClientError::Decode(e.to_string()))?;
            let answer: Value = client.post(&format!("{path}/reports"), &body).await?;
            print(output, &answer, || {
                format!(
                    "task:        {}\nreport id:   {}\naccepted by: {}",
                    text_of(&answer["task_id"]),
                    text_of(&answer["report_id"]),
                    list(&answer["accepted_by"], "\n             ")
                )
            });
        }
        AggregateCommand::Collect {
            task,
            batch,
            client_key,
            output,
            ..
        } => {
            let path = format!("v1/aggregations/{}/collect", encode_segment(&task));
            let mut body = match batch {
                Some(b) => json!({ "batch": b }),
                None => json!({}),
            };
            if let Some(file) = client_key {
                let key = crate::commands::client::read(&file).map_err(ClientError::Decode)?;
                // The authorization names the node and the batch: ask the node for both.
                let status: Value = client.get("v1/status").await?;
                let coordinator: libp2p::PeerId = status["peer_id"]
                    .as_str()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| ClientError::Decode("no peer id in the node's status".into()))?;
                let batch = match batch {
                    Some(b) => b,
                    None => {
                        let view: Value = client
                            .get(&format!("v1/aggregations/{}", encode_segment(&task)))
                            .await?;
                        view["next_collect_batch"].as_u64().ok_or_else(|| {
                            ClientError::Decode("no next_collect_batch in the task".into())
                        })?
                    }
                };
                let auth = crate::mpc::aggregation::collect::core::authorize_collect(
                    &key,
                    &task,
                    batch,
                    &coordinator,
                    crate::mpc::policy::now() + 300,
                );
                body = json!({ "batch": batch, "authorization": auth });
            }
            let answer: Value = client.post(&path, &body).await?;
            print(output, &answer, || {
                let sum = answer["sum"].as_array().cloned().unwrap_or_default();
                let shown: Vec<String> = sum.iter().take(20).map(Value::to_string).collect();
                let more = if sum.len() > 20 {
                    format!(", ... ({} values)", sum.len())
                } else {
                    String::new()
                };
                format!(
                    "task:      {}\nbatch:     {}\nreports:   {}\nsum:       [{}{more}]\nopened by: {}",
                    text_of(&answer["task_id"]),
                    text_of(&answer["batch"]),
                    text_of(&answer["reports"]),
                    shown.join(", "),
                    list(&answer["opened_by"], "\n           ")
                )
            });
        }
    }
    Ok(())
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn list(v: &Value, sep: &str) -> String {
    v.as_array()
        .map(|a| a.iter().map(text_of).collect::<Vec<_>>().join(sep))
        .unwrap_or_default()
}

fn print(output: OutputFormat, json: &Value, table: impl FnOnce() -> String) {
    match output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(json).unwrap_or_default())
        }
        OutputFormat::Table => println!("{}", table()),
    }
}

fn task_table(task: &Value) -> String {
    let keys = task["keys"].as_array().cloned().unwrap_or_default();
    let input = match task["input"]["type"].as_str() {
        None | Some("raw") => "raw (unvalidated vectors, Shamir-shared)".to_string(),
        Some("sum") => format!(
            "sum of {} bits (each report proven valid; Prio3, all participants open)",
            text_of(&task["input"]["bits"])
        ),
        Some("histogram") => format!(
            "histogram of {} buckets (each report proven valid; Prio3, all participants open)",
            text_of(&task["input"]["buckets"])
        ),
        Some(other) => {
            format!("{other} (each report proven valid; Prio3, all participants open)")
        }
    };
    let mut out = format!(
        "task id:     {}\ninput:       {input}\nthreshold:   {} (any {} of {} nodes open the sum)\nlength:      {}\nmin reports: {}\nmodulus:     {}\n{:<54}  HPKE PUBLIC KEY\n",
        text_of(&task["task_id"]),
        text_of(&task["threshold"]),
        task["threshold"].as_u64().unwrap_or(0) + 1,
        keys.len(),
        text_of(&task["length"]),
        text_of(&task["min_reports"]),
        text_of(&task["modulus"]),
        "PARTICIPANT",
    );
    for k in &keys {
        out.push_str(&format!(
            "{:<54}  {}\n",
            text_of(&k["peer_id"]),
            text_of(&k["hpke_public_key"])
        ));
    }
    out.trim_end().to_string()
}

/// The peers a client pins: `--member` ids and those of the `--members` file (none given:
/// `None`, nothing pinned). An error names the flag, or the file and line.
pub(crate) fn pinned_members(
    list: &[String],
    file: Option<&Path>,
) -> Result<Option<BTreeSet<PeerId>>, ClientError> {
    if list.is_empty() && file.is_none() {
        return Ok(None);
    }
    let mut members = list
        .iter()
        .map(|s| {
            s.trim()
                .parse::<PeerId>()
                .map_err(|e| ClientError::Decode(format!("--member: `{s}` is not a peer id ({e})")))
        })
        .collect::<Result<BTreeSet<PeerId>, _>>()?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Decode(format!("cannot read members file {}: {e}", path.display()))
        })?;
        let from_file = parse_pinned(&text)
            .map_err(|e| ClientError::Decode(format!("{}: {e}", path.display())))?;
        if from_file.is_empty() {
            return Err(ClientError::Decode(format!(
                "members file {} lists no peer id",
                path.display()
            )));
        }
        members.extend(from_file);
    }
    Ok(Some(members))
}
