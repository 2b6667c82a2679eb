//! What MPC peers send each other over `/p2p-mpc/mpc/1`.
//!
//! Every message is a CBOR-encoded [`MpcMessage`] (at most [`MAX_MESSAGE_BYTES`]) carrying a
//! format version, the session id and one [`Body`]. The network service reads it as raw bytes
//! and [`decode`]s it only once the sender is known to be admitted; decoding does not amplify
//! (every list is capped, so a message of N bytes holds about N bytes of heap once decoded). FROST packages
//! travel as the frost crates' own byte encodings, so this envelope does not depend on
//! their serde layout. The response is only an acknowledgement: protocol answers are
//! messages of their own, routed by session id like every other message.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The request-response protocol id of MPC messages.
pub const MPC_PROTOCOL: &str = "/p2p-mpc/mpc/1";
/// Version of the [`MpcMessage`] format this node writes and accepts.
pub const WIRE_VERSION: u8 = 1;
/// Largest accepted encoded message (FROST packages for a few hundred participants fit).
pub const MAX_MESSAGE_BYTES: u64 = 256 * 1024;
/// Largest accepted encoded acknowledgement.
pub const MAX_ACK_BYTES: u64 = 4 * 1024;
/// Most peer ids in one list of a message (participants, blame, echo digests).
pub const MAX_PEERS: usize = 256;
/// Most entries in one list of an aggregation batch message (the relay batches at most this
/// many reports: `aggregation::relay::core::MAX_BATCH` is this constant, so the wire format does
/// not import a protocol).
pub const MAX_BATCH_ITEMS: usize = 512;

/// Encodes a message for the wire.
pub fn encode(message: &MpcMessage) -> Vec<u8> {
    cbor4ii::serde::to_vec(Vec::new(), message).expect("writing CBOR to a Vec cannot fail")
}

/// Decodes a message read from the wire; the error says what was wrong.
pub fn decode(bytes: &[u8]) -> Result<MpcMessage, String> {
    if bytes.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message of {} bytes is over the limit of {MAX_MESSAGE_BYTES}",
            bytes.len()
        ));
    }
    cbor4ii::serde::from_slice(bytes).map_err(|e| format!("malformed MPC message: {e}"))
}

/// Deserializes a list of at most `max` items, refusing longer ones as soon as the item
/// past the cap arrives (nothing is allocated for the rest).
fn bounded<'de, D, T>(d: D, max: usize) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T> {
        max: usize,
        item: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {} items", self.max)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(self.max));
            while let Some(item) = a.next_element()? {
                if out.len() == self.max {
                    return Err(serde::de::Error::custom(format_args!(
                        "list longer than {} items",
                        self.max
                    )));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V {
        max,
        item: std::marker::PhantomData,
    })
}

pub(crate) fn peer_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    bounded(d, MAX_PEERS)
}

fn batch_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    bounded(d, MAX_BATCH_ITEMS)
}

/// The verifier shares of one report, one per participant (empty: the report is dropped).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierSet(#[serde(deserialize_with = "peer_list")] pub Vec<Blob>);

/// A session id: 16 random bytes, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// Parses the 32 hex digits [`Display`](fmt::Display) shows.
    pub fn parse(s: &str) -> Option<Self> {
        hex::decode(s).ok()?.try_into().ok().map(Self)
    }

    /// A fresh random session id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        Self(b)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// Names one pool of presignatures: a coordinator's random choice for one key and holder,
/// new whenever it starts the pool afresh (after a restart, or when it gave up on the old
/// one).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PoolEpoch(pub [u8; 16]);

impl PoolEpoch {
    /// A fresh random epoch.
    pub fn random() -> Self {
        Self(SessionId::random().0)
    }
}

impl fmt::Debug for PoolEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolEpoch({})", hex::encode(self.0))
    }
}

/// The MPC protocol a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// FROST distributed key generation.
    Dkg,
    /// FROST two-round signing.
    Sign,
    /// Creation of a secure-aggregation task (with a confirmation round).
    AggCreate,
    /// Relay of one client report's encrypted shares to their owners.
    AggReport,
    /// Opening the sum of an aggregation task.
    AggCollect,
    /// A transfer test (throwaway bytes, to measure a link).
    Transfer,
    /// A change of a key's signing policy, approved under the current one.
    PolicyChange,
    /// A refill of presignatures: a holder's signing commitments made ahead of time for
    /// one coordinator.
    Presign,
    /// A refresh or reshare of a key's shares (a new generation), or the question whether
    /// one was staged.
    Reshare,
    /// A vault file: a put, a get, a delete, or the question what became of a put.
    Vault,
}

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 10] = [
        Protocol::Dkg,
        Protocol::Sign,
        Protocol::AggCreate,
        Protocol::AggReport,
        Protocol::AggCollect,
        Protocol::Transfer,
        Protocol::PolicyChange,
        Protocol::Presign,
        Protocol::Reshare,
        Protocol::Vault,
    ];

    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Dkg => "frost_dkg",
            Protocol::Sign => "frost_sign",
            Protocol::AggCreate => "agg_create",
            Protocol::AggReport => "agg_report",
            Protocol::AggCollect => "agg_collect",
            Protocol::Transfer => "transfer",
            Protocol::PolicyChange => "policy_change",
            Protocol::Presign => "frost_presign",
            Protocol::Reshare => "frost_reshare",
            Protocol::Vault => "vault",
        }
    }
}

/// One MPC protocol message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MpcMessage {
    /// [`WIRE_VERSION`] of the sender.
    pub version: u8,
    pub session: SessionId,
    pub body: Body,
}

impl MpcMessage {
    /// A message of the current version.
    pub fn new(session: SessionId, body: Body) -> Self {
        Self {
            version: WIRE_VERSION,
            session,
            body,
        }
    }
}

/// The payload of a message; each variant belongs to one round of one protocol.
#[derive(Clone, Serialize, Deserialize)]
pub enum Body {
    /// Coordinator → participants: join a DKG.
    DkgInvite {
        key_id: String,
        /// The new key's signature scheme (`ed25519` when absent: invitations of nodes that
        /// made Ed25519 keys only).
        #[serde(default)]
        scheme: super::scheme::Scheme,
        threshold: u16,
        /// Every participant, as peer id strings (coordinator included).
        #[serde(deserialize_with = "peer_list")]
        participants: Vec<String>,
        /// The key's signing policy, canonical JSON ([`super::policy::SigningPolicy`]).
        policy: Blob,
    },
    /// DKG part 1 package (broadcast, echoed).
    DkgRound1 { package: Vec<u8> },
    /// Echo of every round-1 package seen: (peer id, SHA-256 of the package bytes).
    DkgEcho {
        #[serde(deserialize_with = "peer_list")]
        digests: Vec<(String, [u8; 32])>,
    },
    /// DKG part 2 package, addressed to one participant.
    DkgRound2 { package: Vec<u8> },
    /// The group key as derived by the sender, and a digest of its public key package.
    DkgConfirm {
        group_key: Vec<u8>,
        package_digest: [u8; 32],
    },
    /// Participant → coordinator: the key share is stored (pending: not usable yet).
    DkgStored,
    /// A current holder → every other participant: move key `key_id` from the holders
    /// `old` (generation `generation - 1`) to `new`, as generation `generation`, under
    /// the same group key and threshold (a refresh when `new` is `old`). Carries what a
    /// joining holder stores of the key; the confirmation digest binds it.
    ReshareInvite(super::reshare::ReshareInvitation),
    /// The dealing round of a reshare, one participant to another.
    ReshareRound1(super::reshare::core::Round1Message),
    /// A new holder → every other participant: the digest of the new generation it derived.
    ReshareConfirm { digest: [u8; 32] },
    /// A new holder → every other participant: its share of the generation confirmed by
    /// `digest` is staged on disk, with its signed notice of it (the notices of every new
    /// holder together are the certificate that activates the generation).
    ReshareStored {
        digest: [u8; 32],
        notice: super::policy::NodeSignature,
    },
    /// A holder with a staged generation → another new holder: did you stage (or activate)
    /// this generation of this key?
    ReshareStatusRequest {
        key_id: String,
        generation: u64,
        digest: [u8; 32],
        /// The session of the reshare that made it (whether that one still runs there).
        reshare: SessionId,
        /// The generation's holders, sorted (the asker and the asked among them).
        #[serde(deserialize_with = "peer_list")]
        holders: Vec<String>,
    },
    /// The answer: whether a reshare of the key runs here, this node's signed notice when it
    /// has the generation staged or active, and the certificate when it activated it.
    ReshareStatus {
        running: bool,
        #[serde(default)]
        notice: Option<super::policy::NodeSignature>,
        #[serde(default, deserialize_with = "peer_list")]
        certificate: Vec<super::policy::NodeSignature>,
        /// This node's signed statement that it never staged the generation and never will
        /// (the session that made it is over here).
        #[serde(default)]
        abort: Option<super::policy::NodeSignature>,
    },
    /// A participant of a reshare → a dropped holder that took no part: generation
    /// `generation` of `key_id` (confirmed by `digest`) is held by `holders`; ask them, and
    /// remove your share once they all confirm.
    ReshareRetire {
        key_id: String,
        generation: u64,
        digest: [u8; 32],
        #[serde(deserialize_with = "peer_list")]
        holders: Vec<String>,
        /// Every new holder's signed notice that it staged the generation.
        #[serde(deserialize_with = "peer_list")]
        certificate: Vec<super::policy::NodeSignature>,
    },
    /// Coordinator → participants: every participant stored its share; the key is active.
    DkgActive,
    /// Participant → coordinator: the key is active here (the coordinator answers its caller
    /// only once every participant said so, or a round passed).
    DkgActivated,
    /// Coordinator → key holders: send signing commitments for this message, which these
    /// client authorizations approve (each holder checks them against the key's policy).
    SignInvite {
        key_id: String,
        message: Vec<u8>,
        #[serde(default, deserialize_with = "peer_list")]
        authorizations: Vec<super::policy::Authorization>,
        /// The key's policy that the coordinator checked them against; a holder with
        /// another version in force refuses (`policy_version_mismatch`).
        policy: super::policy::PolicyStamp,
        /// The generation of the shares the coordinator signs with; a holder with another
        /// one active refuses (`generation_mismatch`). 0 from nodes before reshares.
        #[serde(default)]
        generation: u64,
    },
    /// Signer → coordinator: round-1 commitments.
    SignCommitments { commitments: Vec<u8> },
    /// Coordinator → chosen signers: the signing package for round 2.
    SignRound2 { signing_package: Vec<u8> },
    /// Signer → coordinator: the signature share.
    SignShare { share: Vec<u8> },
    /// Coordinator → a holder that committed but was not chosen: drop the nonces.
    SignDismissed,
    /// Coordinator → key holders: sign in one round with a presignature. Like
    /// [`Body::SignInvite`], plus the signing package, which holds a set of the holder's
    /// commitments it made ahead of time for this coordinator and pool `epoch`. The holder
    /// checks the request as for an invitation, spends those nonces (whatever the outcome)
    /// and answers [`Body::SignShare`].
    SignPresigned {
        key_id: String,
        message: Vec<u8>,
        #[serde(default, deserialize_with = "peer_list")]
        authorizations: Vec<super::policy::Authorization>,
        policy: super::policy::PolicyStamp,
        /// As in [`Body::SignInvite`].
        #[serde(default)]
        generation: u64,
        epoch: PoolEpoch,
        signing_package: Vec<u8>,
    },
    /// Coordinator → a holder of the key: make `count` signing commitments for this
    /// coordinator's pool `epoch` (a new epoch replaces every earlier one of this
    /// coordinator and key on the holder).
    PresignRequest {
        key_id: String,
        epoch: PoolEpoch,
        count: u16,
    },
    /// Holder → coordinator: the commitments made for `epoch` (at most the holder's own
    /// pool size, fewer when its pool for this coordinator is nearly full).
    PresignCommitments {
        epoch: PoolEpoch,
        #[serde(deserialize_with = "peer_list")]
        commitments: Vec<Vec<u8>>,
    },
    /// Coordinator → participants: store this aggregation task (JSON of its parameters).
    AggTaskInvite { params: Vec<u8> },
    /// Participant → coordinator: parameters accepted; its signed HPKE key.
    AggTaskAccept {
        params_digest: [u8; 32],
        identity_public_key: Vec<u8>,
        hpke_public_key: Vec<u8>,
        signature: Vec<u8>,
    },
    /// Coordinator → participants: everyone accepted; store the task with these keys (JSON)
    /// and, for a validated task, its Prio3 verify key (32 bytes; empty for a raw task).
    AggTaskCommit {
        keys: Vec<u8>,
        #[serde(default)]
        verify_key: Vec<u8>,
    },
    /// Participant → coordinator: the task is stored (pending: takes no reports yet).
    AggTaskStored,
    /// Coordinator → participants: every participant stored the task; it is active.
    AggTaskActive,
    /// Participant → coordinator: the task is active here.
    AggTaskActivated,
    /// A piece of a large payload (an encrypted share, or a share sum being opened).
    AggChunk { index: u32, data: Blob },
    /// Collector → participants: batch `batch` of this task is being opened; freeze it and
    /// say which reports you hold in it.
    AggCollectInvite {
        task_id: String,
        batch: u64,
        /// A collector's signed authorization, for a task that names collectors.
        #[serde(default)]
        authorization: Option<super::policy::Authorization>,
    },
    /// Participant → collector: its report set of the batch; `holds`: its signature that
    /// this set is its frozen set (absent while the batch is not frozen here); `vote`: the
    /// set it voted to open for this batch, if any, signed.
    AggReportSet {
        digest: [u8; 32],
        count: u64,
        /// What counts towards `min_reports` in the set (distinct clients, or reports).
        clients: u64,
        holds: Option<Blob>,
        vote: Option<SignedSet>,
    },
    /// Collector → a participant that froze the set with this digest: send its report ids
    /// (in `AggChunk`s, 32 bytes each, ascending).
    AggIdsRequest { digest: [u8; 32] },
    /// Collector → participants: vote for this report set as the batch's; `holds`: the
    /// signatures of at least t + 1 participants that froze exactly this set. Its report
    /// ids follow in `AggChunk`s (32 bytes each, ascending).
    AggPropose {
        digest: [u8; 32],
        count: u64,
        #[serde(deserialize_with = "peer_list")]
        holds: Vec<(u16, Blob)>,
    },
    /// Participant → collector: its vote in force for the batch (signed), or why it gives none.
    AggVote {
        vote: Option<SignedSet>,
        refusal: String,
    },
    /// Collector → participants that answered: send (`send_sum`) the share sum of this
    /// report set in chunks, or nothing (not chosen, or the collect was refused);
    /// `certificate`: the signed votes for the set of a quorum of participants.
    AggOpen {
        digest: [u8; 32],
        count: u64,
        send_sum: bool,
        #[serde(deserialize_with = "peer_list")]
        certificate: Vec<(u16, Blob)>,
    },
    /// Sender → receiver: a transfer test of `bytes` throwaway bytes in `chunks` chunks follows.
    TransferInvite { bytes: u64, chunks: u32 },
    /// A piece of a transfer test.
    TransferChunk { index: u32, data: Blob },
    /// Receiver → sender: every chunk arrived; the bytes counted.
    TransferDone { bytes: u64 },
    /// Relay → owner: the owner's sealed share of each report of a batch (a lone report is
    /// a batch of one). `streamed`: the task's shares are too long for one message, so the
    /// batch holds one report whose ciphertext is left empty here and follows in `AggChunk`s.
    AggBatchInvite {
        task_id: String,
        #[serde(deserialize_with = "batch_list")]
        shares: Vec<BatchShare>,
        #[serde(default)]
        streamed: bool,
    },
    /// Owner → relay: per share of the batch, accepted (`None`) or why not (code, message);
    /// `batch`: the task batch the owner takes reports into.
    /// On a validated task, `verifiers` holds the owner's Prio3 verifier share of each
    /// report (empty for a refused one).
    AggBatchVerdict {
        #[serde(deserialize_with = "batch_list")]
        rejected: Vec<Option<(String, String)>>,
        batch: u64,
        #[serde(default, deserialize_with = "batch_list")]
        verifiers: Vec<Blob>,
    },
    /// Relay → owners: per report of the batch, add the share (`true`) or drop it; the
    /// added ones go to task batch `batch`. On a validated task, `verifiers` holds every
    /// participant's verifier share of each committed report (each owner decides the proof
    /// itself before it adds anything).
    AggBatchCommit {
        #[serde(deserialize_with = "batch_list")]
        commits: Vec<bool>,
        batch: u64,
        #[serde(default, deserialize_with = "batch_list")]
        verifiers: Vec<VerifierSet>,
    },
    /// Owner → relay: the committed shares of the batch are in the persisted sum.
    AggBatchStored,
    /// Coordinator → key holders: prepare to replace the key's policy `current` with `policy`
    /// (canonical JSON, version `current.version + 1`), which these client approvals
    /// approve: vote for this change and no other of that version.
    PolicyPrepare {
        key_id: String,
        current: super::policy::PolicyStamp,
        policy: Blob,
        #[serde(default, deserialize_with = "peer_list")]
        authorizations: Vec<super::policy::Authorization>,
    },
    /// Holder → coordinator: prepared, with the holder's signed vote for the change.
    PolicyPrepared { vote: super::policy::PolicyVote },
    /// Coordinator → key holders: a quorum prepared; this change is committed, and the
    /// record carries the quorum's votes. Every holder checks the record (approvals and
    /// votes) against its own policy before it applies it; sent in the prepare session to
    /// those in it, as an invitation to the others.
    PolicyCommit {
        key_id: String,
        record: super::policy::PolicyChangeRecord,
    },
    /// Holder → coordinator: the key's policy here is now at this version.
    PolicyCommitted { version: u64 },
    /// Holder → holder: send the committed changes of the key's policy after this version.
    PolicySyncRequest { key_id: String, after_version: u64 },
    /// Answer to a sync request: the next committed changes, oldest first (none: nothing
    /// newer here).
    PolicySyncRecords {
        #[serde(deserialize_with = "peer_list")]
        records: Vec<super::policy::PolicyChangeRecord>,
    },
    /// Coordinator → a holder: its HPKE key, for a client to seal a key share to.
    VaultKeysRequest,
    /// Holder → coordinator: its HPKE key, signed by its identity key.
    VaultKeys {
        key: super::aggregation::store::ParticipantKey,
    },
    /// Coordinator → holders: a put of a vault file (`plan`: JSON of
    /// [`super::vault::Plan`]) and the holder's key share, sealed to it by the client.
    VaultPutInvite {
        plan: Blob,
        share: super::vault::store::SealedShare,
    },
    /// Holder → coordinator: staged, send the fragments.
    VaultReady,
    /// Coordinator ↔ holder: one fragment of stripe `stripe` (a put's, or a get's answer).
    VaultFragment { stripe: u64, data: Blob },
    /// Holder → coordinator: this many stripes stored.
    VaultProgress { stripes: u64 },
    /// Coordinator → holders: the manifest (JSON) with every fragment's hash; prepare.
    VaultPrepare { manifest: Blob },
    /// Holder → coordinator: prepared (synced); it commits when told.
    VaultPrepared,
    /// Coordinator → holders: every holder is prepared; commit.
    VaultCommit,
    /// Holder → coordinator: committed.
    VaultCommitted,
    /// A holder → the others: what became of this put?
    VaultStatusRequest { name: String, file_id: String },
    /// Holder → asker: committed, prepared, running or absent here.
    VaultStatus { state: super::vault::PutState },
    /// Coordinator → holders: release your key share of `file_id` to `recipient`, as
    /// these approvals of the file's clients ask, and serve your fragments.
    VaultGetInvite {
        name: String,
        file_id: String,
        recipient: Blob,
        #[serde(default, deserialize_with = "peer_list")]
        authorizations: Vec<super::policy::Authorization>,
    },
    /// Holder → coordinator: its key share, sealed to the recipient and signed.
    VaultReleased { share: super::vault::ReleasedShare },
    /// Coordinator → holder: send your fragments of stripes `from`..`from + count`.
    VaultFragmentsRequest { from: u64, count: u32 },
    /// Coordinator → holders: the get is over.
    VaultDone,
    /// Coordinator → holders: delete `file_id`, as these approvals ask.
    VaultDeleteInvite {
        name: String,
        file_id: String,
        #[serde(default, deserialize_with = "peer_list")]
        authorizations: Vec<super::policy::Authorization>,
    },
    /// Holder → coordinator: deleted.
    VaultDeleted,
    /// A holder → another: which files that name me as a holder do you hold (by name,
    /// after `after`)?
    VaultListRequest { after: Option<String> },
    /// The answer: (name, file id), at most [`super::vault::repair::LIST_PAGE`].
    VaultList {
        #[serde(deserialize_with = "peer_list")]
        files: Vec<(String, String)>,
    },
    /// A holder → another: the manifest of this file.
    VaultManifestRequest { name: String, file_id: String },
    /// The manifest (JSON).
    VaultManifestAnswer { manifest: Blob },
    /// A holder that lost this file → `helpers` (threshold of its holders): help me rebuild
    /// my key share and fragments.
    VaultRepairInvite {
        name: String,
        file_id: String,
        #[serde(deserialize_with = "peer_list")]
        helpers: Vec<String>,
    },
    /// Helper → helper: a repair delta (part 1 of the repairable threshold scheme), with
    /// the digest of the helper set it was made for (session, file, repaired holder,
    /// helpers): a helper sums only deltas of its own set.
    VaultDelta { delta: Blob, helpers: [u8; 32] },
    /// Helper → the holder being repaired: the sum of its deltas (part 2).
    VaultSigma { sigma: Blob },
    /// The sender gives up on the session, naming the participants it blames (peer ids), if any.
    Abort {
        reason: String,
        #[serde(default, deserialize_with = "peer_list")]
        blamed: Vec<String>,
    },
}

/// A report set of a task batch with a participant's signature over it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSet {
    pub digest: [u8; 32],
    pub count: u64,
    pub signature: Blob,
}

/// One owner's sealed share of one report, in a batch invite.
#[derive(Clone, Serialize, Deserialize)]
pub struct BatchShare {
    pub report_id: String,
    pub encapped_key: Blob,
    pub ciphertext: Blob,
    /// The client's signature of this share (its index in the task's clients, the
    /// signature), when the task names clients.
    #[serde(default)]
    pub client: Option<(u16, Blob)>,
}

/// Bytes that travel as one CBOR byte string (a `Vec<u8>` alone would be an array of
/// integers, up to twice as large).
/// Shared and cheap to clone: one payload is cut into chunks without copying, and a message
/// retried after a full inbox is not copied again.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob(pub bytes::Bytes);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(bytes::Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v.into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Blob, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Blob(out.into()))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl Body {
    /// The protocol this body belongs to (`None` for protocol-neutral messages).
    pub fn protocol(&self) -> Option<Protocol> {
        match self {
            Body::DkgInvite { .. }
            | Body::DkgRound1 { .. }
            | Body::DkgEcho { .. }
            | Body::DkgRound2 { .. }
            | Body::DkgConfirm { .. }
            | Body::DkgStored
            | Body::DkgActive
            | Body::DkgActivated => Some(Protocol::Dkg),
            Body::SignInvite { .. }
            | Body::SignCommitments { .. }
            | Body::SignRound2 { .. }
            | Body::SignShare { .. }
            | Body::SignDismissed
            | Body::SignPresigned { .. } => Some(Protocol::Sign),
            Body::PresignRequest { .. } | Body::PresignCommitments { .. } => {
                Some(Protocol::Presign)
            }
            Body::AggTaskInvite { .. }
            | Body::AggTaskAccept { .. }
            | Body::AggTaskCommit { .. }
            | Body::AggTaskStored
            | Body::AggTaskActive
            | Body::AggTaskActivated => Some(Protocol::AggCreate),
            Body::AggBatchInvite { .. }
            | Body::AggBatchVerdict { .. }
            | Body::AggBatchCommit { .. }
            | Body::AggBatchStored => Some(Protocol::AggReport),
            Body::AggCollectInvite { .. }
            | Body::AggReportSet { .. }
            | Body::AggIdsRequest { .. }
            | Body::AggPropose { .. }
            | Body::AggVote { .. }
            | Body::AggOpen { .. } => Some(Protocol::AggCollect),
            Body::TransferInvite { .. }
            | Body::TransferChunk { .. }
            | Body::TransferDone { .. } => Some(Protocol::Transfer),
            Body::PolicyPrepare { .. }
            | Body::PolicyPrepared { .. }
            | Body::PolicyCommit { .. }
            | Body::PolicyCommitted { .. }
            | Body::PolicySyncRequest { .. }
            | Body::PolicySyncRecords { .. } => Some(Protocol::PolicyChange),
            Body::ReshareInvite(_)
            | Body::ReshareRound1(_)
            | Body::ReshareConfirm { .. }
            | Body::ReshareStored { .. }
            | Body::ReshareStatusRequest { .. }
            | Body::ReshareStatus { .. }
            | Body::ReshareRetire { .. } => Some(Protocol::Reshare),
            Body::VaultKeysRequest
            | Body::VaultKeys { .. }
            | Body::VaultPutInvite { .. }
            | Body::VaultReady
            | Body::VaultFragment { .. }
            | Body::VaultProgress { .. }
            | Body::VaultPrepare { .. }
            | Body::VaultPrepared
            | Body::VaultCommit
            | Body::VaultCommitted
            | Body::VaultStatusRequest { .. }
            | Body::VaultStatus { .. }
            | Body::VaultGetInvite { .. }
            | Body::VaultReleased { .. }
            | Body::VaultFragmentsRequest { .. }
            | Body::VaultDone
            | Body::VaultDeleteInvite { .. }
            | Body::VaultDeleted
            | Body::VaultListRequest { .. }
            | Body::VaultList { .. }
            | Body::VaultManifestRequest { .. }
            | Body::VaultManifestAnswer { .. }
            | Body::VaultRepairInvite { .. }
            | Body::VaultDelta { .. }
            | Body::VaultSigma { .. } => Some(Protocol::Vault),
            // Chunks belong to whichever aggregation session carries them.
            Body::AggChunk { .. } => None,
            Body::Abort { .. } => None,
        }
    }

    /// A short name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::DkgInvite { .. } => "dkg invite",
            Body::DkgRound1 { .. } => "dkg round 1",
            Body::DkgEcho { .. } => "dkg echo",
            Body::DkgRound2 { .. } => "dkg round 2",
            Body::DkgConfirm { .. } => "dkg confirmation",
            Body::DkgStored => "dkg stored",
            Body::DkgActive => "dkg active",
            Body::DkgActivated => "dkg activated",
            Body::SignInvite { .. } => "sign invite",
            Body::SignCommitments { .. } => "sign round 1",
            Body::SignRound2 { .. } => "sign round 2 request",
            Body::SignShare { .. } => "sign round 2 share",
            Body::SignDismissed => "sign dismissed",
            Body::SignPresigned { .. } => "sign presigned",
            Body::PresignRequest { .. } => "presign request",
            Body::PresignCommitments { .. } => "presign commitments",
            Body::AggTaskInvite { .. } => "aggregation task invite",
            Body::AggTaskAccept { .. } => "aggregation task accept",
            Body::AggTaskCommit { .. } => "aggregation task commit",
            Body::AggTaskStored => "aggregation task stored",
            Body::AggTaskActive => "aggregation task active",
            Body::AggTaskActivated => "aggregation task activated",
            Body::AggChunk { .. } => "aggregation chunk",
            Body::AggBatchInvite { .. } => "aggregation batch invite",
            Body::AggBatchVerdict { .. } => "aggregation batch verdict",
            Body::AggBatchCommit { .. } => "aggregation batch commit",
            Body::AggBatchStored => "aggregation batch stored",
            Body::AggCollectInvite { .. } => "aggregation collect invite",
            Body::AggReportSet { .. } => "aggregation report set",
            Body::AggIdsRequest { .. } => "aggregation ids request",
            Body::AggPropose { .. } => "aggregation proposal",
            Body::AggVote { .. } => "aggregation vote",
            Body::AggOpen { .. } => "aggregation open",
            Body::TransferInvite { .. } => "transfer invite",
            Body::TransferChunk { .. } => "transfer chunk",
            Body::TransferDone { .. } => "transfer done",
            Body::PolicyPrepare { .. } => "policy prepare",
            Body::PolicyPrepared { .. } => "policy prepared",
            Body::PolicyCommit { .. } => "policy commit",
            Body::PolicyCommitted { .. } => "policy committed",
            Body::PolicySyncRequest { .. } => "policy sync request",
            Body::PolicySyncRecords { .. } => "policy sync records",
            Body::ReshareInvite(_) => "reshare invite",
            Body::ReshareRound1(_) => "reshare round 1",
            Body::ReshareConfirm { .. } => "reshare confirmation",
            Body::ReshareStored { .. } => "reshare stored",
            Body::ReshareStatusRequest { .. } => "reshare status request",
            Body::ReshareStatus { .. } => "reshare status",
            Body::ReshareRetire { .. } => "reshare retire",
            Body::VaultKeysRequest => "vault keys request",
            Body::VaultKeys { .. } => "vault keys",
            Body::VaultPutInvite { .. } => "vault put invite",
            Body::VaultReady => "vault ready",
            Body::VaultFragment { .. } => "vault fragment",
            Body::VaultProgress { .. } => "vault progress",
            Body::VaultPrepare { .. } => "vault prepare",
            Body::VaultPrepared => "vault prepared",
            Body::VaultCommit => "vault commit",
            Body::VaultCommitted => "vault committed",
            Body::VaultStatusRequest { .. } => "vault status request",
            Body::VaultStatus { .. } => "vault status",
            Body::VaultGetInvite { .. } => "vault get invite",
            Body::VaultReleased { .. } => "vault released share",
            Body::VaultFragmentsRequest { .. } => "vault fragments request",
            Body::VaultDone => "vault done",
            Body::VaultDeleteInvite { .. } => "vault delete invite",
            Body::VaultDeleted => "vault deleted",
            Body::VaultListRequest { .. } => "vault list request",
            Body::VaultList { .. } => "vault list",
            Body::VaultManifestRequest { .. } => "vault manifest request",
            Body::VaultManifestAnswer { .. } => "vault manifest",
            Body::VaultRepairInvite { .. } => "vault repair invite",
            Body::VaultDelta { .. } => "vault repair delta",
            Body::VaultSigma { .. } => "vault repair sigma",
            Body::Abort { .. } => "abort",
        }
    }

    /// Whether this message opens a session at its receiver.
    pub fn is_invite(&self) -> bool {
        matches!(
            self,
            Body::DkgInvite { .. }
                | Body::SignInvite { .. }
                | Body::SignPresigned { .. }
                | Body::PresignRequest { .. }
                | Body::AggTaskInvite { .. }
                | Body::AggBatchInvite { .. }
                | Body::AggCollectInvite { .. }
                | Body::TransferInvite { .. }
                | Body::PolicyPrepare { .. }
                | Body::PolicyCommit { .. }
                | Body::PolicySyncRequest { .. }
                | Body::ReshareInvite(_)
                | Body::ReshareStatusRequest { .. }
                | Body::ReshareRetire { .. }
                | Body::VaultKeysRequest
                | Body::VaultPutInvite { .. }
                | Body::VaultStatusRequest { .. }
                | Body::VaultGetInvite { .. }
                | Body::VaultDeleteInvite { .. }
                | Body::VaultListRequest { .. }
                | Body::VaultManifestRequest { .. }
                | Body::VaultRepairInvite { .. }
        )
    }
}

// Package bytes are not secret (secret shares never travel in the clear: round-2 DKG packages
// ride on noise-encrypted connections), but they are long; show only kinds and sizes.
impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind())
    }
}

/// The receiver's acknowledgement of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MpcAck {
    /// Routed to its session (or buffered until the session is known).
    Accepted,
    /// Refused, with the reason (not a participant, finished session, bad version, ...).
    Rejected(String),
    /// The key's policy, as this holder holds it, refuses the request: `rule` is the
    /// policy rule's stable code (the API's `rule`), `reason` what was wrong.
    Refused { rule: String, reason: String },
    /// Not now (a queue or a cap is full): the same message may be sent again shortly.
    Busy(String),
    /// The session is over on the receiver's side (finished or aborted there): nothing of
    /// it is taken any more; an `Abort` with the reason may be on its way.
    Finished(String),
}

/// Longest reason an acknowledgement carries, in bytes (acks are read up to
/// [`MAX_ACK_BYTES`]); longer ones are cut at a character boundary.
pub const MAX_ACK_REASON: usize = 1024;

impl MpcAck {
    /// A policy refusal, its reason bounded.
    pub fn refused(rule: &str, reason: &str) -> Self {
        MpcAck::Refused {
            rule: cut_text(rule, 64),
            reason: cut_text(reason, MAX_ACK_REASON),
        }
    }

    /// A refusal, its reason bounded.
    pub fn rejected(reason: &str) -> Self {
        MpcAck::Rejected(cut_text(reason, MAX_ACK_REASON))
    }

    /// A transient refusal, its reason bounded.
    pub fn busy(reason: &str) -> Self {
        MpcAck::Busy(cut_text(reason, MAX_ACK_REASON))
    }

    /// The refusal of a message of a session that is over here, its reason bounded.
    pub fn finished(reason: &str) -> Self {
        MpcAck::Finished(cut_text(reason, MAX_ACK_REASON))
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
pub(crate) fn cut_text(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_distinct_hex() {
        let a = SessionId::random();
        let b = SessionId::random();
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
    }

    #[test]
    fn blobs_are_cbor_byte_strings() {
        let body = Body::AggChunk {
            index: 0,
            data: Blob(vec![200; 1000].into()),
        };
        let out = cbor4ii::serde::to_vec(Vec::new(), &MpcMessage::new(SessionId::random(), body))
            .unwrap();
        assert!(out.len() < 1100, "{} bytes", out.len());
        let back: MpcMessage = cbor4ii::serde::from_slice(&out).unwrap();
        assert!(matches!(back.body, Body::AggChunk { data, .. } if data.0[..] == [200; 1000]));
    }

    #[test]
    fn acks_are_cut_to_fit_the_ack_limit_and_round_trip() {
        // Two-byte characters, so a cut in the middle of one would be possible.
        let long = "é".repeat(4 * MAX_ACK_REASON);
        for ack in [
            MpcAck::refused(&"r".repeat(500), &long),
            MpcAck::rejected(&long),
            MpcAck::busy(&long),
            MpcAck::finished(&long),
        ] {
            let bytes = cbor4ii::serde::to_vec(Vec::new(), &ack).unwrap();
            assert!(bytes.len() as u64 <= MAX_ACK_BYTES, "{} bytes", bytes.len());
            let back: MpcAck = cbor4ii::serde::from_slice(&bytes).unwrap();
            assert_eq!(back, ack);
            let reason = match &back {
                MpcAck::Refused { rule, reason } => {
                    assert_eq!(rule.len(), 64);
                    reason
                }
                MpcAck::Rejected(reason) | MpcAck::Busy(reason) | MpcAck::Finished(reason) => {
                    reason
                }
                MpcAck::Accepted => unreachable!(),
            };
            assert!(reason.len() <= MAX_ACK_REASON && reason.len() >= MAX_ACK_REASON - 1);
            assert!(reason.chars().all(|c| c == 'é'));
        }
    }

    #[test]
    fn debug_hides_package_bytes() {
        let b = Body::DkgRound2 {
            package: vec![7; 64],
        };
        assert_eq!(format!("{b:?}"), "dkg round 2");
    }
}
