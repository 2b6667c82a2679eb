//! Test-only misbehaviour, switched on by the hidden environment variable
//! `P2P_MPC_TEST_FAULT` (comma-separated). Always compiled in (integration tests run the
//! real binary), never documented for users, and announced with a warning at start.

/// The environment variable that turns faults on.
pub const FAULT_ENV: &str = "P2P_MPC_TEST_FAULT";

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
}

impl Faults {
    /// Reads [`FAULT_ENV`]; unknown names are returned as an error.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(FAULT_ENV) {
            Ok(v) => Self::parse(&v),
            Err(_) => Ok(Self::default()),
        }
    }

    /// Parses a comma-separated list of fault names.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut f = Self::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "corrupt-signature-share" => f.corrupt_signature_share = true,
                "equivocate-dkg-round1" => f.equivocate_dkg_round1 = true,
                "intrude-signing" => f.intrude_signing = true,
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
