//! `p2p-mpc vault ...`: the client side of the vault. The file key is made, shared and
//! used here only: a put seals the file and each holder's key share before anything leaves
//! this process; a get opens the released shares with a key made for the request, checks
//! each against the manifest's commitment and opens the file here.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use libp2p::PeerId;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::client::{ApiClient, ClientError, encode_segment};
use crate::api::vault::{GetRequest, REQUEST_HEADER};
use crate::cli::{OutputFormat, VaultCommand};
use crate::commands::aggregate::pinned_members;
use crate::log_limit::echo;
use crate::mpc::aggregation::encryption::{self, EncryptionKey};
use crate::mpc::aggregation::store::ParticipantKey;
use crate::mpc::policy::{self, Approves, Authorization, SigningPolicy};
use crate::mpc::vault::core::{
    self, FileKey, Manifest, SEGMENT_BYTES, TAG_BYTES, VaultPolicy, sealed_len,
};
use crate::mpc::vault::store::SealedShare;
use crate::mpc::vault::{
    GetHeader, PutRequest, RELEASE_INFO, SHARE_INFO, check_key, release_aad, released_bytes,
    share_aad,
};

fn decode(message: impl Into<String>) -> ClientError {
    ClientError::Decode(message.into())
}

/// Runs one `vault` subcommand against `client`.
pub async fn run(client: ApiClient, command: VaultCommand) -> Result<(), ClientError> {
    match command {
        VaultCommand::Put {
            name,
            file,
            threshold,
            clients,
            approvals,
            holders,
            member,
            members,
            ..
        } => {
            let pins = pinned_members(&member, members.as_deref())?;
            let holders = chosen_holders(holders, pins)?;
            put(
                &client, &name, &file, threshold, clients, approvals, holders,
            )
            .await
        }
        VaultCommand::Get {
            name,
            client_keys,
            out,
            member,
            members,
            file_id,
            ..
        } => {
            let pins = pinned_members(&member, members.as_deref())?.ok_or_else(|| {
                decode("name the peers you trust (--members FILE or --member PEER_ID): every holder of the file and every signer of a released share must be one of them, or the node you ask could make up both")
            })?;
            get(
                &client,
                &name,
                &client_keys,
                &out,
                &pins,
                file_id.as_deref(),
            )
            .await
        }
        VaultCommand::Delete {
            name, client_keys, ..
        } => {
            core::check_name(&name).map_err(decode)?;
            let (file_id, _) = manifest(&client, &name).await?;
            let id = hex32(&file_id)?;
            let authorizations =
                approvals(&client_keys, &name, Approves::VaultDelete { file_id: id })?;
            let answer: Value = client
                .delete(
                    &format!("v1/vault/{}", encode_segment(&name)),
                    &json!({ "file_id": file_id, "authorizations": authorizations }),
                )
                .await?;
            println!(
                "deleted `{name}` ({file_id}) on {}",
                answer["deleted_on"]
                    .as_array()
                    .map(|a| a.len())
                    .unwrap_or(0)
            );
            if let Some(left) = answer["not_deleted"].as_array().filter(|a| !a.is_empty()) {
                for entry in left {
                    eprintln!("  not deleted on {}: {}", entry[0], entry[1]);
                }
            }
            Ok(())
        }
        VaultCommand::List { output, .. } => {
            let list: Value = client.get("v1/vault").await?;
            match output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                ),
                OutputFormat::Table => {
                    let files = list["files"].as_array().cloned().unwrap_or_default();
                    if files.is_empty() {
                        println!(
                            "no vault files on this node (store one with `p2p-mpc vault put`)"
                        );
                    }
                    for f in files {
                        println!(
                            "{}  {} bytes  {}-of-{}  {}",
                            f["name"].as_str().unwrap_or(""),
                            f["size"],
                            f["threshold"],
                            f["holders"].as_array().map_or(0, Vec::len),
                            f["file_id"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

/// The holders of a put: `--holders` (each pinned, when pins are given), else the pinned
/// peers. Never the node's choice.
fn chosen_holders(
    holders: Vec<String>,
    pins: Option<std::collections::BTreeSet<PeerId>>,
) -> Result<Vec<PeerId>, ClientError> {
    let listed =
        crate::mpc::parse_peers(&holders).map_err(|e| decode(format!("--holders: {e}")))?;
    match (listed.is_empty(), pins) {
        (false, Some(pins)) => {
            if let Some(p) = listed.iter().find(|p| !pins.contains(p)) {
                return Err(decode(format!(
                    "--holders: {p} is not one of the peers you trust (--member/--members)"
                )));
            }
            Ok(listed)
        }
        (false, None) => Ok(listed),
        (true, Some(pins)) => Ok(pins.into_iter().collect()),
        (true, None) => Err(decode(
            "name the holders (--holders) or the peers you trust (--members FILE or --member PEER_ID): the node must not choose whom your key shares are sealed to",
        )),
    }
}

fn hex32(s: &str) -> Result<[u8; 32], ClientError> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| decode(format!("`{s}` is not 32 bytes of hex")))
}

/// The manifest of `name` on the node, checked against its own id.
async fn manifest(client: &ApiClient, name: &str) -> Result<(String, Manifest), ClientError> {
    let answer: Value = client
        .get(&format!("v1/vault/{}/manifest", encode_segment(name)))
        .await?;
    let file_id = answer["file_id"].as_str().unwrap_or_default().to_string();
    let manifest: Manifest = serde_json::from_value(answer["manifest"].clone())
        .map_err(|e| decode(format!("the manifest: {e}")))?;
    manifest.check().map_err(decode)?;
    if manifest.file_id() != file_id {
        return Err(decode(format!(
            "the node gave file id {file_id} for a manifest whose id is {}",
            manifest.file_id()
        )));
    }
    Ok((file_id, manifest))
}

/// One approval of `what` per client key file, valid for five minutes.
fn approvals(
    files: &[PathBuf],
    name: &str,
    what: Approves<'_>,
) -> Result<Vec<Authorization>, ClientError> {
    files
        .iter()
        .map(|f| {
            let key = crate::commands::client::read(f).map_err(decode)?;
            Ok(policy::approve(&key, name, what, policy::now() + 300))
        })
        .collect()
}

/// Prints progress to stderr at most once a second, and at the end.
struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Self {
        let now = Instant::now();
        Self {
            what,
            total,
            done: 0,
            started: now,
            last: now,
        }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed().as_secs_f64() >= 1.0 {
            self.last = Instant::now();
            self.print();
        }
    }

    fn print(&self) {
        let mib = self.done as f64 / 1048576.0;
        let rate = mib / self.started.elapsed().as_secs_f64().max(1e-3);
        let pct = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        eprintln!(
            "  {} {mib:.1} MiB of {:.1} MiB ({pct:.0} %), {rate:.1} MiB/s",
            self.what,
            self.total as f64 / 1048576.0
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn put(
    client: &ApiClient,
    name: &str,
    file: &Path,
    threshold: u16,
    clients: Vec<String>,
    approvals: Option<u16>,
    peers: Vec<PeerId>,
) -> Result<(), ClientError> {
    core::check_name(name).map_err(decode)?;
    let (clients, approvals) =
        SigningPolicy::client_set(&clients, "--client", approvals, "--approvals")
            .map_err(decode)?;
    if threshold < 2 || threshold as usize > peers.len() {
        return Err(decode(format!(
            "--threshold {threshold}: from 2 (with 1, a single holder could read the file) to the number of holders ({})",
            peers.len()
        )));
    }
    let size = std::fs::metadata(file)
        .map_err(|e| decode(format!("{}: {e}", file.display())))?
        .len();
    let list = peers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let keys: Value = client
        .get(&format!("v1/holder-keys?holders={list}"))
        .await?;
    let keys: Vec<ParticipantKey> = serde_json::from_value(keys["holders"].clone())
        .map_err(|e| decode(format!("the holders' keys: {e}")))?;
    // Exactly the chosen holders, each key signed by its holder: the node passing them on
    // cannot slip in a key of its own.
    if keys.len() != peers.len() {
        return Err(decode("the node returned keys of other holders than asked"));
    }
    for (peer, k) in peers.iter().zip(&keys) {
        check_key(peer, k).map_err(decode)?;
    }
    let key = FileKey::generate();
    let (shares, commitment) = key.split(threshold, &peers).map_err(decode)?;
    let mut sealer = key.sealer();
    let ciphertext_bytes = sealed_len(size);
    let mut put_id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut put_id);
    let mut request = PutRequest {
        holders: peers.iter().map(ToString::to_string).collect(),
        threshold,
        policy: VaultPolicy { clients, approvals },
        ciphertext_bytes,
        nonce_prefix: hex::encode(sealer.prefix()),
        commitment: hex::encode(commitment),
        put_id: hex::encode(put_id),
        shares: Vec::new(),
    };
    // The terms every share is bound to: a node that changes any of them (the policy, the
    // holders, ...) has shares that do not open.
    let terms = core::Terms {
        name,
        holders: &request.holders,
        threshold,
        policy: &request.policy,
        ciphertext_bytes,
        nonce_prefix: &request.nonce_prefix,
        commitment: &request.commitment,
        put_id: &request.put_id,
    };
    let mut sealed = Vec::new();
    for ((peer, k), share) in peers.iter().zip(&keys).zip(&shares) {
        let hpke = hex::decode(&k.hpke_public_key).map_err(|e| decode(e.to_string()))?;
        let (enc, ct) = encryption::seal_with(SHARE_INFO, &hpke, share, &share_aad(&terms, peer))
            .map_err(decode)?;
        sealed.push(SealedShare {
            enc: hex::encode(enc),
            ciphertext: hex::encode(ct),
        });
    }
    request.shares = sealed;
    let header = serde_json::to_vec(&request).expect("a header encodes");
    let mut frame = (header.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&header);

    // The file, read and sealed segment by segment as the upload takes it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let file_path = file.to_path_buf();
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let result: Result<String, String> = async {
            let mut f = tokio::fs::File::open(&file_path)
                .await
                .map_err(|e| format!("{}: {e}", file_path.display()))?;
            let mut progress = Progress::new("sent", size);
            let mut hash = Sha256::new();
            let mut left = size;
            loop {
                let take = left.min(SEGMENT_BYTES as u64) as usize;
                let mut segment = vec![0u8; take];
                f.read_exact(&mut segment).await.map_err(|e| {
                    format!("{}: {e} (did it change while read?)", file_path.display())
                })?;
                left -= take as u64;
                let last = left == 0;
                let out = sealer.seal(&segment, last)?;
                hash.update(&out);
                progress.add(take as u64);
                if tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return Err("the upload stopped".into());
                }
                if last {
                    progress.print();
                    return Ok(hex::encode(hash.finalize()));
                }
            }
        }
        .await;
        if let Err(e) = &result {
            let _ = tx.send(Err(std::io::Error::other(e.clone()))).await;
        }
        result
    });
    let first = futures::stream::iter([Ok::<Bytes, std::io::Error>(Bytes::from(frame))]);
    let rest =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
    let body =
        http_body_util::StreamBody::new(first.chain(rest).map(|r| r.map(hyper::body::Frame::data)));
    eprintln!(
        "storing `{name}`: {size} bytes sealed here, key shared {threshold}-of-{} to the holders",
        peers.len()
    );
    let answer = client
        .stream(
            "PUT",
            &format!("v1/vault/{}", encode_segment(name)),
            &[("content-type", "application/octet-stream".into())],
            body,
        )
        .await;
    let read = reader.await.unwrap_or_else(|e| Err(e.to_string()));
    let answer = answer?;
    let sent_sha256 = read.map_err(decode)?;
    let bytes = answer
        .collect()
        .await
        .map_err(|e| decode(e.to_string()))?
        .to_bytes();
    let result: Value = serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()))?;
    let manifest: Manifest = serde_json::from_value(result["manifest"].clone())
        .map_err(|e| decode(format!("the stored manifest: {e}")))?;
    // The node stored what this client sent, on the terms it sent: the same bytes, holders,
    // threshold, policy, commitment and put id.
    if manifest.name != name
        || manifest.holders != request.holders
        || manifest.threshold != threshold
        || manifest.policy != request.policy
        || manifest.commitment != request.commitment
        || manifest.nonce_prefix != request.nonce_prefix
        || manifest.put_id != request.put_id
        || manifest.ciphertext_bytes != ciphertext_bytes
        || manifest.ciphertext_sha256 != sent_sha256
        || manifest.file_id() != result["file_id"].as_str().unwrap_or_default()
    {
        return Err(decode(
            "the node's manifest is not of the file this client sealed",
        ));
    }
    println!("stored `{name}`");
    println!("  file id:   {}", manifest.file_id());
    println!("  size:      {size} bytes ({ciphertext_bytes} sealed)");
    println!(
        "  holders:   {} ({threshold} rebuild it)",
        manifest.holders.join(", ")
    );
    if let Some(u) = result["unconfirmed"].as_array().filter(|u| !u.is_empty()) {
        eprintln!("  not yet confirmed by: {u:?} (they commit when they next ask)");
    }
    Ok(())
}

async fn get(
    client: &ApiClient,
    name: &str,
    client_keys: &[PathBuf],
    out: &Path,
    pins: &std::collections::BTreeSet<PeerId>,
    pinned_id: Option<&str>,
) -> Result<(), ClientError> {
    core::check_name(name).map_err(decode)?;
    if out.exists() {
        return Err(decode(format!("{} exists; not overwritten", out.display())));
    }
    let (file_id, manifest) = manifest(client, name).await?;
    if let Some(pinned) = pinned_id
        && pinned.to_ascii_lowercase() != file_id
    {
        return Err(decode(format!(
            "the node holds `{name}` as file {file_id}, not {pinned} (--file-id)"
        )));
    }
    // Holders the client trusts only: a node cannot make up a file with holders (and
    // signed shares) of its own.
    let holders = manifest.holder_ids().map_err(decode)?;
    if let Some(stranger) = holders.iter().find(|h| !pins.contains(h)) {
        return Err(decode(format!(
            "the file's holders include {stranger}, which is not one of the peers you trust (--member/--members)"
        )));
    }
    let recipient = EncryptionKey::ephemeral();
    let recipient_key: [u8; 32] = recipient
        .public_key()
        .try_into()
        .map_err(|_| decode("an X25519 key is 32 bytes"))?;
    let what = Approves::VaultGet {
        file_id: hex32(&file_id)?,
        recipient: recipient_key,
    };
    let request = GetRequest {
        file_id: file_id.clone(),
        recipient: hex::encode(recipient_key),
        authorizations: approvals(client_keys, name, what)?,
    };
    let header_value = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&request).expect("encodes"))
    };
    let mut body = client
        .stream(
            "GET",
            &format!("v1/vault/{}", encode_segment(name)),
            &[(REQUEST_HEADER, header_value)],
            http_body_util::Empty::<Bytes>::new(),
        )
        .await?;
    let mut buf: Vec<u8> = Vec::new();
    let mut next = async || -> Result<Option<Bytes>, ClientError> {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| decode(format!("the download broke off: {e}")))?;
            if let Ok(data) = frame.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    };
    // The header: its length, then JSON.
    while buf.len() < 4 {
        buf.extend_from_slice(
            &next()
                .await?
                .ok_or_else(|| decode("the answer ended early"))?,
        );
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len > crate::api::vault::MAX_HEADER_BYTES {
        return Err(decode("the answer's header is too long"));
    }
    while buf.len() < 4 + len {
        buf.extend_from_slice(
            &next()
                .await?
                .ok_or_else(|| decode("the answer ended early"))?,
        );
    }
    let rest = buf.split_off(4 + len);
    let header: GetHeader = serde_json::from_slice(&buf[4..])
        .map_err(|e| decode(format!("the answer's header: {e}")))?;
    if header.file_id != file_id || header.manifest != manifest {
        return Err(decode(
            "the node answered with another file than the one approved",
        ));
    }
    // Each released share: signed by its holder, for this file and recipient, opened here;
    // one per holder.
    let mut shares: Vec<(PeerId, [u8; 32])> = Vec::new();
    for released in &header.shares {
        let bytes = released_bytes(&file_id, &recipient_key, &released.share);
        let signer = match released.signature.verify_bytes(&bytes, "released share") {
            Ok(p)
                if p.to_string() == released.holder
                    && holders.contains(&p)
                    && !shares.iter().any(|(q, _)| *q == p) =>
            {
                p
            }
            Ok(p) => {
                eprintln!(
                    "  ignored a share signed by {p} under the name {}",
                    echo(&released.holder)
                );
                continue;
            }
            Err(e) => {
                eprintln!("  ignored a share: {e}");
                continue;
            }
        };
        let enc = hex::decode(&released.share.enc).map_err(|e| decode(e.to_string()))?;
        let ct = hex::decode(&released.share.ciphertext).map_err(|e| decode(e.to_string()))?;
        match recipient.open_with(
            RELEASE_INFO,
            &enc,
            &ct,
            &release_aad(&file_id, &signer, &recipient_key),
        ) {
            Ok(share) => match <[u8; 32]>::try_from(share.as_slice()) {
                Ok(share) => shares.push((signer, share)),
                Err(_) => eprintln!("  holder {signer} released a share that is not 32 bytes"),
            },
            Err(e) => eprintln!("  holder {signer}'s share does not open: {e}"),
        }
    }
    for (holder, why) in &header.missing {
        eprintln!("  holder {} released nothing: {}", echo(holder), echo(why));
    }
    let commitment = hex::decode(&manifest.commitment).map_err(|e| decode(e.to_string()))?;
    let (key, blamed) = core::recover(&commitment, manifest.threshold, &shares)
        .map_err(|e| decode(e.to_string()))?;
    for peer in &blamed {
        eprintln!(
            "  holder {peer} released a key share that does not match the commitment: blamed, not used"
        );
    }
    let prefix = manifest.prefix().map_err(decode)?;
    let mut opener = key.opener(&prefix);

    // The ciphertext, opened segment by segment into OUT.part.
    let part = PathBuf::from(format!("{}.part", out.display()));
    // A stale part of an earlier attempt is replaced; the plaintext is readable by its owner
    // only.
    let _ = std::fs::remove_file(&part);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&part)
        .map_err(|e| decode(format!("{}: {e}", part.display())))?;
    let outcome: Result<u64, ClientError> = async {
        let total = manifest.ciphertext_bytes;
        let mut progress = Progress::new("received", total);
        let mut hash = Sha256::new();
        let mut pending: Vec<u8> = rest;
        let mut seen = pending.len() as u64;
        if seen > total {
            return Err(decode("the node sent more bytes than the file has"));
        }
        progress.add(seen);
        let mut written = 0u64;
        let sealed_segment = (SEGMENT_BYTES + TAG_BYTES) as u64;
        let segments = total.div_ceil(sealed_segment).max(1);
        for i in 0..segments {
            let last = i + 1 == segments;
            let len = if last {
                total - i * sealed_segment
            } else {
                sealed_segment
            } as usize;
            while pending.len() < len {
                match next().await? {
                    Some(chunk) => {
                        seen += chunk.len() as u64;
                        if seen > total {
                            return Err(decode("the node sent more bytes than the file has"));
                        }
                        progress.add(chunk.len() as u64);
                        pending.extend_from_slice(&chunk);
                    }
                    None => {
                        return Err(decode(format!(
                            "the download ended after {seen} of {total} sealed bytes (the node could not rebuild the rest; see its log)"
                        )));
                    }
                }
            }
            let segment: Vec<u8> = pending.drain(..len).collect();
            hash.update(&segment);
            let plain = opener.open(&segment, last).map_err(decode)?;
            f.write_all(&plain).map_err(|e| decode(e.to_string()))?;
            written += plain.len() as u64;
        }
        if hex::encode(hash.finalize()) != manifest.ciphertext_sha256 {
            return Err(decode("the ciphertext's hash is not the manifest's"));
        }
        f.sync_all().map_err(|e| decode(e.to_string()))?;
        progress.print();
        Ok(written)
    }
    .await;
    match outcome {
        Ok(written) => {
            std::fs::hard_link(&part, out)
                .and_then(|()| std::fs::remove_file(&part))
                .map_err(|e| decode(format!("{}: {e}", out.display())))?;
            println!("got `{name}` ({written} bytes) into {}", out.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}
