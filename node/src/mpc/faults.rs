//! Test-only misbehaviour, switched on by the hidden environment variable
//! `P2P_MPC_TEST_FAULT` (comma-separated). Only a binary built with the cargo feature
//! `test-faults` (the tests and the benchmark suite turn it on) accepts it; any other binary
//! refuses to start when the variable is set, so a release build cannot be made to
//! misbehave. Never documented for users, and announced with a warning at start.

/// The environment variable that turns faults on.
pub const FAULT_ENV: &str = "P2P_MPC_TEST_FAULT";

/// Whether this binary was built with the `test-faults` feature.
pub const COMPILED_IN: bool = cfg!(feature = "test-faults");

/// Refuses a test-only environment variable in a binary built without `test-faults`.
fn refuse_unless_compiled(var: &str, compiled_in: bool) -> Result<(), String> {
    if compiled_in {
        Ok(())
    } else {
        Err(format!(
            "{var} is set, but this binary was built without test faults (cargo feature `test-faults`); unset it"
        ))
    }
}

/// Which faults this node injects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Send a corrupted signature share in signing round 2.
    pub corrupt_signature_share: bool,
    /// Send different DKG round-1 packages to different participants.
    pub equivocate_dkg_round1: bool,
    /// On a signing invite, send forged round-2 messages for that session to the other key
    /// holders (who are not its participants in that session's eyes).
    pub intrude_signing: bool,
    /// After a signature, send the same round-2 request to the signers again (they must
    /// refuse it: their nonces are spent).
    pub replay_sign_round2: bool,
    /// Accept report shares that are not sealed (empty `enc`; the "ciphertext" is the share
    /// followed by 16 zero bytes), so that benchmarks can measure ingest without HPKE.
    /// Destroys the privacy of every such report: never on outside tests and benchmarks.
    pub plaintext_shares: bool,
    /// Coordinate signatures and policy changes without checking the key's policy, and
    /// sign for any coordinator whatever the policy says (a compromised holder: the honest
    /// holders must refuse requests that their own checks refuse).
    pub skip_sign_authorization: bool,
    /// Store a DKG share but never confirm it to the coordinator (the coordinator and this
    /// node must then discard the pending key).
    pub withhold_dkg_stored: bool,
    /// Exit (status 9, as if killed) right after staging a reshare's new share, before
    /// telling anyone: the others must keep the current generation active, and this node
    /// must resolve the staged one after its restart.
    pub crash_after_reshare_stage: bool,
    /// Exit (status 9) right before staging a reshare's new share, after the confirmation
    /// round: the others must not activate the new generation.
    pub crash_before_reshare_stage: bool,
    /// Store a new aggregation task but never confirm it to the coordinator (every node
    /// must then discard the pending task).
    pub withhold_task_stored: bool,
    /// Do not catch up on the keys' policies at start (a holder that stays behind until an
    /// invitation shows it).
    pub no_policy_catch_up_at_start: bool,
    /// On a signing invitation, at once coordinate a signing session of its own with the
    /// authorizations received (a holder front-running the coordinator the clients chose);
    /// the honest holders must refuse it, and the invitation is still answered.
    pub front_run_signing: bool,
    /// Coordinate a policy change by sending it to the other holders as committed at once,
    /// without a quorum's votes (a compromised holder with client approvals of a change
    /// that never committed): the honest holders must refuse it.
    pub commit_without_quorum: bool,
    /// Collect an aggregation task's sum without checking `min_reports`, the proof that a
    /// set was frozen, or the quorum of votes (a compromised collector after a single
    /// client's input): every participant asked to vote or for its share sum must refuse.
    pub collect_ignores_min_reports: bool,
    /// Release a share sum one off in its first value (a compromised opener): the collector
    /// must notice with the share sum of one more participant.
    pub wrong_share_sum: bool,
    /// `aggregate submit` proves one value and shares another (a forging client): the
    /// participants must refuse the report.
    pub forge_report: bool,
    /// A relay of a validated task's reports takes every proof as valid and commits the
    /// report (a compromised relay): every other participant must decide it itself.
    pub skip_proof_check: bool,
    /// Send presignatures to a coordinator and drop their nonces at once (a holder that
    /// restarted without the coordinator noticing): presigned requests find nothing.
    pub forget_presignatures: bool,
    /// A coordinator of a vault get releases without checking the approvals itself (a
    /// compromised coordinator): every holder must refuse on its own.
    pub skip_vault_authorization: bool,
    /// A holder releases a wrong key share of a vault file (sealed and signed properly):
    /// the client must catch it against the commitment.
    pub corrupt_vault_share: bool,
    /// A vault put's coordinator exits (status 3) once every holder prepared, before any
    /// commit: no holder may end up holding the file.
    pub crash_before_vault_commit: bool,
    /// A vault put's coordinator exits (status 3) right after committing itself, before it
    /// tells the others: every holder must end up holding the file.
    pub crash_after_vault_commit: bool,
    /// A file that partitions the MPC network ([`PARTITION_ENV`]), read at every message.
    pub partition_file: Option<std::path::PathBuf>,
    /// A file to which every nonce this node signs with is appended ([`NONCE_LOG_ENV`]).
    pub nonce_log: Option<std::path::PathBuf>,
}

/// Hidden environment variable naming a file to which the node appends a line (its peer
/// id and the commitments, hex) for every signing nonce it signs with, so that a test can
/// check that no nonce ever signs twice.
pub const NONCE_LOG_ENV: &str = "P2P_MPC_TEST_NONCE_LOG";

/// Hidden environment variable naming a partition file: each line a group of peer ids
/// (separated by white space) that can exchange MPC messages; two peers in no common line
/// cannot (sends fail as unreachable, messages that arrive are dropped). A missing or empty
/// file partitions nothing. The file is read at every message, so a test partitions and
/// heals running nodes by writing it.
pub const PARTITION_ENV: &str = "P2P_MPC_TEST_PARTITION_FILE";

/// Whether the partition file at `path` separates `a` from `b`.
pub fn partitioned(path: &std::path::Path, a: &libp2p::PeerId, b: &libp2p::PeerId) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let (a, b) = (a.to_string(), b.to_string());
    let groups: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|g| !g.is_empty())
        .collect();
    !groups.is_empty()
        && !groups
            .iter()
            .any(|g| g.contains(&a.as_str()) && g.contains(&b.as_str()))
}

impl Faults {
    /// Reads [`FAULT_ENV`]; unknown names are returned as an error.
    /// In a binary without the `test-faults` feature, a set variable is an error.
    pub fn from_env() -> Result<Self, String> {
        let mut faults = match std::env::var_os(FAULT_ENV) {
            Some(v) => {
                refuse_unless_compiled(FAULT_ENV, COMPILED_IN)?;
                Self::parse(&v.to_string_lossy())?
            }
            None => Self::default(),
        };
        if let Some(path) = std::env::var_os(PARTITION_ENV) {
            refuse_unless_compiled(PARTITION_ENV, COMPILED_IN)?;
            faults.partition_file = Some(path.into());
        }
        if let Some(path) = std::env::var_os(NONCE_LOG_ENV) {
            refuse_unless_compiled(NONCE_LOG_ENV, COMPILED_IN)?;
            faults.nonce_log = Some(path.into());
        }
        Ok(faults)
    }

    /// Parses a comma-separated list of fault names.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut f = Self::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "corrupt-signature-share" => f.corrupt_signature_share = true,
                "equivocate-dkg-round1" => f.equivocate_dkg_round1 = true,
                "intrude-signing" => f.intrude_signing = true,
                "replay-sign-round2" => f.replay_sign_round2 = true,
                "plaintext-shares" => f.plaintext_shares = true,
                "skip-sign-authorization" => f.skip_sign_authorization = true,
                "withhold-dkg-stored" => f.withhold_dkg_stored = true,
                "crash-after-reshare-stage" => f.crash_after_reshare_stage = true,
                "crash-before-reshare-stage" => f.crash_before_reshare_stage = true,
                "withhold-task-stored" => f.withhold_task_stored = true,
                "no-policy-catch-up-at-start" => f.no_policy_catch_up_at_start = true,
                "front-run-signing" => f.front_run_signing = true,
                "commit-without-quorum" => f.commit_without_quorum = true,
                "forge-report" => f.forge_report = true,
                "skip-proof-check" => f.skip_proof_check = true,
                "collect-ignores-min-reports" => f.collect_ignores_min_reports = true,
                "wrong-share-sum" => f.wrong_share_sum = true,
                "forget-presignatures" => f.forget_presignatures = true,
                "skip-vault-authorization" => f.skip_vault_authorization = true,
                "corrupt-vault-share" => f.corrupt_vault_share = true,
                "crash-before-vault-commit" => f.crash_before_vault_commit = true,
                "crash-after-vault-commit" => f.crash_after_vault_commit = true,
                other => return Err(format!("{FAULT_ENV}: unknown fault `{other}`")),
            }
        }
        Ok(f)
    }

    /// Whether any fault is on.
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// Hidden environment variable that shortens the round deadline (milliseconds), so that
/// tests of dead participants do not wait the full default.
pub const ROUND_TIMEOUT_ENV: &str = "P2P_MPC_TEST_ROUND_TIMEOUT_MS";

/// The round deadline from [`ROUND_TIMEOUT_ENV`], if set and valid (100 ms to 10 min).
/// Like [`FAULT_ENV`], only a `test-faults` binary accepts it.
pub fn round_timeout_from_env() -> Result<Option<std::time::Duration>, String> {
    let Some(v) = std::env::var_os(ROUND_TIMEOUT_ENV) else {
        return Ok(None);
    };
    refuse_unless_compiled(ROUND_TIMEOUT_ENV, COMPILED_IN)?;
    let v = v.to_string_lossy();
    match v.trim().parse::<u64>() {
        Ok(ms) if (100..=600_000).contains(&ms) => Ok(Some(std::time::Duration::from_millis(ms))),
        _ => Err(format!(
            "{ROUND_TIMEOUT_ENV}: `{v}` is not a number of milliseconds from 100 to 600000"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_without_the_feature_refuses_test_variables() {
        let err = refuse_unless_compiled(FAULT_ENV, false).unwrap_err();
        assert!(
            err.contains(FAULT_ENV) && err.contains("test-faults"),
            "{err}"
        );
        assert!(refuse_unless_compiled(FAULT_ENV, true).is_ok());
    }

    #[test]
    fn a_partition_file_separates_peers_in_no_common_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("partition");
        let p: Vec<libp2p::PeerId> = (0..3).map(|_| libp2p::PeerId::random()).collect();
        assert!(!partitioned(&file, &p[0], &p[1]), "no file: no partition");
        std::fs::write(&file, format!("{} {}\n\n{}\n", p[0], p[1], p[2])).unwrap();
        assert!(!partitioned(&file, &p[0], &p[1]));
        assert!(partitioned(&file, &p[1], &p[2]));
        std::fs::write(&file, "").unwrap();
        assert!(!partitioned(&file, &p[1], &p[2]), "healed");
    }

    #[test]
    fn fault_names_parse_and_unknown_ones_are_refused() {
        let f = Faults::parse("intrude-signing, plaintext-shares").unwrap();
        assert!(f.intrude_signing && f.plaintext_shares && !f.corrupt_signature_share);
        assert!(Faults::parse("").unwrap() == Faults::default());
        let err = Faults::parse("no-such-fault").unwrap_err();
        assert!(err.contains("no-such-fault"), "{err}");
    }
}
