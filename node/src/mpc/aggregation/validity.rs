//! Reports proven valid: Prio3 (the VDAF of DAP, from the `prio` crate) as an I/O-free core.
//!
//! A task whose input type is `count`, `sum` or `histogram` runs Prio3 instead of Shamir
//! sharing. The client splits its measurement into one additive input share per participant
//! together with a share of a fully linear proof (FLP) that the measurement is valid (a count
//! is 0 or 1, a sum lies in [0, 2^bits), a histogram is one-hot). Each participant turns its
//! input share into a verifier share using the task's verify key, which clients never see;
//! the verifier shares of all participants together decide validity without revealing the
//! measurement, and every participant makes that decision itself before it adds the report's
//! output share to its share sum. The output shares are additive shares over [`Field64`],
//! the field of the Shamir mode, so share sums are stored, frozen and voted on alike; the
//! sum opens only with the share sums of all n participants.
//!
//! Instances: `Prio3Count` and `Prio3Sum` as the VDAF draft defines them (Field64, one proof);
//! the histogram is Prio3's histogram circuit over Field64 with three proofs (the draft's
//! multiple-proof option for a smaller field; a private-use algorithm id), so that all three
//! share the field of the share sums.
//!
//! Nothing here sends, stores or waits: the driver hands in bytes and gets bytes or a
//! refusal back.

use prio::codec::{Encode, ParameterizedDecode};
use prio::field::Field64;
use prio::flp::gadgets::{Mul, ParallelSum};
use prio::flp::types::Histogram;
use prio::vdaf::prio3::{
    Prio3, Prio3Count, Prio3InputShare, Prio3PublicShare, Prio3Sum, Prio3VerifierShare,
    Prio3VerifyState, optimal_chunk_length,
};
use prio::vdaf::xof::XofTurboShake128;
use prio::vdaf::{Aggregator, Client, VerifyTransition};
use serde::{Deserialize, Serialize};

/// Bytes of a task's verify key.
pub const VERIFY_KEY_BYTES: usize = 32;
/// Bytes of a report's nonce (its id, 32 hex digits).
pub const NONCE_BYTES: usize = 16;
/// Most bits of a `sum` input: sums are taken mod p ≈ 2^64, so a batch wraps only past
/// 2^32 reports at the largest value.
pub const MAX_SUM_BITS: u8 = 32;
/// Most buckets of a `histogram` input.
pub const MAX_BUCKETS: u32 = 1_000;
/// Most participants of a validated task (every one checks every other's verifier share).
pub const MAX_VALIDATED_PARTICIPANTS: usize = 16;
/// Proofs of the Field64 histogram.
const HISTOGRAM_PROOFS: u8 = 3;
/// The histogram's algorithm id, in the VDAF draft's private-use range.
const HISTOGRAM_ALGORITHM_ID: u32 = 0xFFFF_0004;

type Prio3Histogram64 = Prio3<Histogram<Field64, ParallelSum<Field64, Mul>>, XofTurboShake128, 32>;

/// What a task's reports hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum InputType {
    /// Vectors of field elements, Shamir-shared, unvalidated (any value below the modulus).
    #[default]
    Raw,
    /// One value, 0 or 1.
    Count,
    /// One value in [0, 2^bits).
    Sum { bits: u8 },
    /// A bucket index in [0, buckets): the report adds 1 to that bucket.
    Histogram { buckets: u32 },
}

impl InputType {
    /// Whether reports carry a validity proof (Prio3, n of n).
    pub fn validated(self) -> bool {
        !matches!(self, InputType::Raw)
    }

    /// The name in the API and CLI.
    pub fn name(self) -> &'static str {
        match self {
            InputType::Raw => "raw",
            InputType::Count => "count",
            InputType::Sum { .. } => "sum",
            InputType::Histogram { .. } => "histogram",
        }
    }

    /// The length of the sum vector: 1, or the number of buckets. `None` for raw (the task's
    /// own `length`).
    pub fn output_len(self) -> Option<u32> {
        match self {
            InputType::Raw => None,
            InputType::Count | InputType::Sum { .. } => Some(1),
            InputType::Histogram { buckets } => Some(buckets),
        }
    }

    /// Checks the parameters.
    pub fn check(self) -> Result<(), String> {
        match self {
            InputType::Sum { bits } if bits == 0 || bits > MAX_SUM_BITS => Err(format!(
                "a sum input has 1 to {MAX_SUM_BITS} bits, not {bits}"
            )),
            InputType::Histogram { buckets } if !(2..=MAX_BUCKETS).contains(&buckets) => Err(
                format!("a histogram has 2 to {MAX_BUCKETS} buckets, not {buckets}"),
            ),
            _ => Ok(()),
        }
    }
}

/// A refused report share: (code, message), as relay verdicts carry them.
pub type Refusal = (String, String);

fn refusal(code: &str, message: impl Into<String>) -> Refusal {
    (code.to_string(), message.into())
}

/// A participant's verification state of one report, between its verifier share and the
/// decision.
#[derive(Clone, Debug)]
pub struct Verifying(Prio3VerifyState<Field64, 32>);

/// A Prio3 instance of one of the input types.
#[derive(Clone, Debug)]
enum Vdaf {
    Count(Prio3Count),
    Sum(Prio3Sum),
    Histogram(Prio3Histogram64),
}

/// The Prio3 instance of a validated task, and the sizes of what it sends.
#[derive(Clone, Debug)]
pub struct Validator {
    input: InputType,
    vdaf: Vdaf,
    /// Bytes of every participant's report share (the longest, the first participant's;
    /// the others are padded to it so that every sealed share of a task has one size).
    share_bytes: usize,
    /// Bytes of one verifier share.
    verifier_bytes: usize,
}

/// Calls `$body` with `$v` bound to the instance, whatever its type.
macro_rules! with_vdaf {
    ($self:expr, $v:ident => $body:expr) => {
        match &$self.vdaf {
            Vdaf::Count($v) => $body,
            Vdaf::Sum($v) => $body,
            Vdaf::Histogram($v) => $body,
        }
    };
}

/// The application context of a task's reports: binds every share and proof to the task.
pub fn context(task_id: &str) -> Vec<u8> {
    format!("p2p-mpc aggregation v1 task {task_id}").into_bytes()
}

/// The nonce of a report: its id (32 lowercase hex digits) as bytes.
pub fn nonce(report_id: &str) -> Result<[u8; NONCE_BYTES], String> {
    let bytes = hex::decode(report_id).map_err(|_| "a report id is 32 hex digits".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "a report id is 32 hex digits".to_string())
}

impl Validator {
    /// The instance for `input` among `participants` nodes; `None` for raw.
    pub fn new(input: InputType, participants: usize) -> Result<Option<Self>, String> {
        if input == InputType::Raw {
            return Ok(None);
        }
        input.check()?;
        let n = u8::try_from(participants)
            .map_err(|_| format!("{participants} participants are too many for Prio3"))?;
        let err = |e: prio::vdaf::VdafError| format!("Prio3 {}: {e}", input.name());
        if !(2..=MAX_VALIDATED_PARTICIPANTS).contains(&participants) {
            return Err(format!(
                "a validated task has 2 to {MAX_VALIDATED_PARTICIPANTS} participants, not {participants}"
            ));
        }
        let vdaf = match input {
            InputType::Raw => return Ok(None),
            InputType::Count => Vdaf::Count(Prio3::new_count(n).map_err(err)?),
            InputType::Sum { bits } => {
                Vdaf::Sum(Prio3::new_sum(n, (1u64 << bits) - 1).map_err(err)?)
            }
            InputType::Histogram { buckets } => {
                let len = buckets as usize;
                let typ = Histogram::new(len, optimal_chunk_length(len))
                    .map_err(|e| format!("Prio3 histogram: {e}"))?;
                Vdaf::Histogram(
                    Prio3::new(n, HISTOGRAM_PROOFS, HISTOGRAM_ALGORITHM_ID, typ).map_err(err)?,
                )
            }
        };
        let mut v = Validator {
            input,
            vdaf,
            share_bytes: 0,
            verifier_bytes: 0,
        };
        // The sizes, from one report of 0 (every report of the task has the same).
        let probe = "00000000000000000000000000000000";
        let shares = v.frame_shares("size probe", probe, 0, None)?;
        v.share_bytes = shares.iter().map(Vec::len).max().unwrap_or(0);
        let (_, verifier) = v
            .start(&[0; VERIFY_KEY_BYTES], "size probe", probe, 0, &shares[0])
            .map_err(|(_, m)| m)?;
        v.verifier_bytes = verifier.len();
        Ok(Some(v))
    }

    /// Bytes of each participant's report share (before sealing).
    pub fn share_bytes(&self) -> usize {
        self.share_bytes
    }

    /// Bytes of one verifier share.
    pub fn verifier_bytes(&self) -> usize {
        self.verifier_bytes
    }

    /// Splits `value` (a count's 0 or 1, a sum's value, a histogram's bucket) into one
    /// report share per participant, each `len || public share || len || input share`
    /// (lengths u32, big-endian) padded with zeros to [`share_bytes`](Self::share_bytes).
    pub fn shard(
        &self,
        task_id: &str,
        report_id: &str,
        value: u64,
    ) -> Result<Vec<Vec<u8>>, String> {
        self.shard_forged(task_id, report_id, value, None)
    }

    /// Like [`shard`](Self::shard), then adds `delta` to element `index` of the first
    /// participant's measurement share: the proof stays the one made for `value`, the shares
    /// now add up to another measurement. Tests use it (the `forge-report` fault) to make
    /// reports that only the participants' check can refuse.
    pub fn shard_forged(
        &self,
        task_id: &str,
        report_id: &str,
        value: u64,
        forge: Option<(usize, u64)>,
    ) -> Result<Vec<Vec<u8>>, String> {
        let mut shares = self.frame_shares(task_id, report_id, value, forge)?;
        for s in &mut shares {
            s.resize(self.share_bytes, 0);
        }
        Ok(shares)
    }

    /// The framed shares, unpadded.
    fn frame_shares(
        &self,
        task_id: &str,
        report_id: &str,
        value: u64,
        forge: Option<(usize, u64)>,
    ) -> Result<Vec<Vec<u8>>, String> {
        let ctx = context(task_id);
        let nonce = nonce(report_id)?;
        let bad = |e: prio::vdaf::VdafError| format!("cannot make the report: {e}");
        match self.input {
            InputType::Count if value > 1 => {
                return Err(format!("a count is 0 or 1, not {value}"));
            }
            InputType::Sum { bits } if value >> bits != 0 => {
                return Err(format!(
                    "{value} does not fit in {bits} bits (a sum value is 0 to {})",
                    (1u64 << bits) - 1
                ));
            }
            InputType::Histogram { buckets } if value >= u64::from(buckets) => {
                return Err(format!(
                    "bucket {value} does not exist: the histogram has buckets 0 to {}",
                    buckets - 1
                ));
            }
            _ => {}
        }
        let measurement = measurement_of(self, value)?;
        with_vdaf!(self, v => {
            let (public, mut inputs) = shard_any(v, &ctx, &measurement, &nonce).map_err(bad)?;
            if let Some((index, delta)) = forge {
                match inputs.first_mut() {
                    Some(Prio3InputShare::Leader { measurement_share, .. })
                        if index < measurement_share.len() =>
                    {
                        measurement_share[index] += Field64::from(delta);
                    }
                    _ => return Err("no measurement element to forge".into()),
                }
            }
            let public = public.get_encoded().map_err(|e| e.to_string())?;
            inputs
                .iter()
                .map(|input| {
                    let input = input.get_encoded().map_err(|e| e.to_string())?;
                    let mut out = Vec::with_capacity(8 + public.len() + input.len());
                    out.extend_from_slice(&(public.len() as u32).to_be_bytes());
                    out.extend_from_slice(&public);
                    out.extend_from_slice(&(input.len() as u32).to_be_bytes());
                    out.extend_from_slice(&input);
                    Ok(out)
                })
                .collect()
        })
    }

    /// Participant `agg_id` starts verifying its report share: its verification state and its
    /// verifier share (bytes, for every other participant), or why the share is refused.
    pub fn start(
        &self,
        verify_key: &[u8; VERIFY_KEY_BYTES],
        task_id: &str,
        report_id: &str,
        agg_id: usize,
        share: &[u8],
    ) -> Result<(Verifying, Vec<u8>), Refusal> {
        let ctx = context(task_id);
        let nonce = nonce(report_id).map_err(|m| refusal("malformed_report", m))?;
        let malformed = |m: String| refusal("malformed_report", m);
        let (public, input) = split_share(share).map_err(malformed)?;
        with_vdaf!(self, v => {
            let public = Prio3PublicShare::get_decoded_with_param(v, public)
                .map_err(|e| malformed(format!("the report's public share does not decode: {e}")))?;
            let input = Prio3InputShare::get_decoded_with_param(&(v, agg_id), input)
                .map_err(|e| malformed(format!("the report's input share (with its proof share) does not decode: {e}")))?;
            let (state, share) = v
                .verify_init(verify_key, &ctx, agg_id, &(), &nonce, &public, &input)
                .map_err(|e| refusal("invalid_report", format!("the report's proof cannot be checked: {e}")))?;
            let bytes = share.get_encoded().map_err(|e| malformed(e.to_string()))?;
            Ok((Verifying(state), bytes))
        })
    }

    /// Decides one report from the verifier shares of every participant (in participant
    /// order, this node's own among them): its output share if the proof holds, else why
    /// the report is refused. Every participant calls this itself.
    pub fn finish(
        &self,
        task_id: &str,
        state: Verifying,
        verifier_shares: &[Vec<u8>],
    ) -> Result<Vec<Field64>, Refusal> {
        let ctx = context(task_id);
        let n = with_vdaf!(self, v => prio::vdaf::Vdaf::num_aggregators(v));
        if verifier_shares.len() != n {
            return Err(refusal(
                "malformed_report",
                format!(
                    "{} verifier shares for {n} participants",
                    verifier_shares.len()
                ),
            ));
        }
        let shares = verifier_shares
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Prio3VerifierShare::get_decoded_with_param(&state.0, b).map_err(|e| {
                    refusal(
                        "malformed_report",
                        format!("participant {i}'s verifier share does not decode: {e}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let invalid = |e: prio::vdaf::VdafError| {
            refusal(
                "invalid_report",
                format!("the report's validity proof does not hold: {e}"),
            )
        };
        with_vdaf!(self, v => {
            let message = v.verifier_shares_to_message(&ctx, &(), shares).map_err(invalid)?;
            match v.verify_next(&ctx, state.0, message).map_err(invalid)? {
                VerifyTransition::Finish(output) => Ok(output.as_ref().to_vec()),
                VerifyTransition::Continue(..) => Err(refusal(
                    "invalid_report",
                    "Prio3 asked for another round".to_string(),
                )),
            }
        })
    }
}

/// The measurement of `value` for the instance.
enum Measurement {
    Count(bool),
    Sum(u64),
    Histogram(usize),
}

fn measurement_of(v: &Validator, value: u64) -> Result<Measurement, String> {
    Ok(match v.vdaf {
        Vdaf::Count(_) => Measurement::Count(value == 1),
        Vdaf::Sum(_) => Measurement::Sum(value),
        Vdaf::Histogram(_) => Measurement::Histogram(
            usize::try_from(value).map_err(|_| format!("bucket {value} is out of range"))?,
        ),
    })
}

/// Shards with whichever measurement type the instance takes.
fn shard_any<V>(
    v: &V,
    ctx: &[u8],
    m: &Measurement,
    nonce: &[u8; NONCE_BYTES],
) -> Result<(V::PublicShare, Vec<V::InputShare>), prio::vdaf::VdafError>
where
    V: Client<NONCE_BYTES> + AsMeasurement,
{
    let m = V::measurement(m).ok_or_else(|| {
        prio::vdaf::VdafError::Uncategorized("measurement of another input type".into())
    })?;
    v.shard(ctx, &m, nonce)
}

/// Picks the measurement of an instance's own type.
trait AsMeasurement: prio::vdaf::Vdaf {
    fn measurement(m: &Measurement) -> Option<Self::Measurement>;
}

impl AsMeasurement for Prio3Count {
    fn measurement(m: &Measurement) -> Option<bool> {
        match m {
            Measurement::Count(b) => Some(*b),
            _ => None,
        }
    }
}

impl AsMeasurement for Prio3Sum {
    fn measurement(m: &Measurement) -> Option<u64> {
        match m {
            Measurement::Sum(s) => Some(*s),
            _ => None,
        }
    }
}

impl AsMeasurement for Prio3Histogram64 {
    fn measurement(m: &Measurement) -> Option<usize> {
        match m {
            Measurement::Histogram(b) => Some(*b),
            _ => None,
        }
    }
}

/// Splits a report share into its public share and input share; the padding after them
/// must be zeros.
fn split_share(share: &[u8]) -> Result<(&[u8], &[u8]), String> {
    fn part<'a>(bytes: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("the report share ends before the length of its {what}"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > rest.len() {
            return Err(format!(
                "the report share announces a {len}-byte {what} but holds {} bytes after its length",
                rest.len()
            ));
        }
        Ok(rest.split_at(len))
    }
    let (public, rest) = part(share, "public share")?;
    let (input, padding) = part(rest, "input share")?;
    if padding.iter().any(|b| *b != 0) {
        return Err("the report share's padding is not zeros".into());
    }
    Ok((public, input))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = "task-1";
    const KEY: [u8; 32] = [7; 32];

    fn rid(i: u8) -> String {
        hex::encode([i; 16])
    }

    /// Runs every participant's checks on one report: the output shares, or the first
    /// participant's refusal (all must agree).
    fn verify(
        v: &Validator,
        report: &str,
        shares: &[Vec<u8>],
    ) -> Result<Vec<Vec<Field64>>, Refusal> {
        let mut states = Vec::new();
        let mut verifier = Vec::new();
        for (i, s) in shares.iter().enumerate() {
            let (state, share) = v.start(&KEY, TASK, report, i, s)?;
            states.push(state);
            verifier.push(share);
        }
        let outcomes: Vec<_> = states
            .into_iter()
            .map(|st| v.finish(TASK, st, &verifier))
            .collect();
        let refused = outcomes.iter().filter(|o| o.is_err()).count();
        assert!(
            refused == 0 || refused == outcomes.len(),
            "participants disagree"
        );
        outcomes.into_iter().collect()
    }

    /// Honest reports of `values` (report ids 0, 1, ...), each checked by every participant.
    fn honest(v: &Validator, values: &[u64]) -> Vec<Vec<Vec<Field64>>> {
        values
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let r = rid(i as u8);
                verify(v, &r, &v.shard(TASK, &r, *x).unwrap()).unwrap()
            })
            .collect()
    }

    fn total(outputs: &[Vec<Vec<Field64>>]) -> Vec<u64> {
        let len = outputs[0][0].len();
        let mut sum = vec![Field64::from(0u64); len];
        for report in outputs {
            for share in report {
                for (s, x) in sum.iter_mut().zip(share) {
                    *s += *x;
                }
            }
        }
        sum.iter().map(|x| u64::from(*x)).collect()
    }

    #[test]
    fn honest_reports_sum_and_forged_ones_are_refused_by_every_participant() {
        for n in [2usize, 3, 5] {
            let v = Validator::new(InputType::Sum { bits: 8 }, n)
                .unwrap()
                .unwrap();
            assert_eq!(total(&honest(&v, &[3, 255, 0, 17])), vec![275]);
            // 256 does not fit in 8 bits: the client refuses to prove it ...
            assert!(v.shard(TASK, &rid(9), 256).is_err());
            // ... and shares that add up to 256, proven for 0, are refused by the participants.
            let r = rid(10);
            let forged = v.shard_forged(TASK, &r, 0, Some((0, 256))).unwrap();
            let (code, _) = verify(&v, &r, &forged).unwrap_err();
            assert_eq!(code, "invalid_report");
        }
    }

    #[test]
    fn a_proof_made_for_another_value_is_refused() {
        let v = Validator::new(InputType::Sum { bits: 8 }, 3)
            .unwrap()
            .unwrap();
        let r = rid(1);
        let a = v.shard(TASK, &r, 5).unwrap();
        let b = v.shard(TASK, &r, 6).unwrap();
        // The first participant's share of 6 (its proof share made for 6), the others of 5.
        let mixed = vec![b[0].clone(), a[1].clone(), a[2].clone()];
        assert_eq!(verify(&v, &r, &mixed).unwrap_err().0, "invalid_report");
        // The verify key matters: a participant that checks with another key (its query
        // randomness differs) makes the proof fail for everyone.
        let mut states = Vec::new();
        let mut shares = Vec::new();
        for (i, s) in a.iter().enumerate() {
            let key = if i == 1 { [8; 32] } else { KEY };
            let (state, share) = v.start(&key, TASK, &r, i, s).unwrap();
            states.push(state);
            shares.push(share);
        }
        for state in states {
            assert_eq!(
                v.finish(TASK, state, &shares).unwrap_err().0,
                "invalid_report"
            );
        }
    }

    #[test]
    fn counts_and_histograms() {
        let count = Validator::new(InputType::Count, 3).unwrap().unwrap();
        assert_eq!(total(&honest(&count, &[1, 0, 1])), vec![2]);
        assert!(count.shard(TASK, &rid(5), 2).is_err());
        let forged = count.shard_forged(TASK, &rid(6), 1, Some((0, 1))).unwrap();
        assert_eq!(
            verify(&count, &rid(6), &forged).unwrap_err().0,
            "invalid_report"
        );

        let hist = Validator::new(InputType::Histogram { buckets: 4 }, 3)
            .unwrap()
            .unwrap();
        assert_eq!(total(&honest(&hist, &[0, 3, 3, 1])), vec![1, 1, 0, 2]);
        assert!(hist.shard(TASK, &rid(7), 4).is_err());
        // Two ones: bucket 0 proven, bucket 2 added to the shares.
        let two = hist.shard_forged(TASK, &rid(8), 0, Some((2, 1))).unwrap();
        assert_eq!(
            verify(&hist, &rid(8), &two).unwrap_err().0,
            "invalid_report"
        );
    }

    #[test]
    fn malformed_shares_are_refused_with_a_reason() {
        let v = Validator::new(InputType::Sum { bits: 8 }, 3)
            .unwrap()
            .unwrap();
        let r = rid(1);
        let shares = v.shard(TASK, &r, 5).unwrap();
        let start = |b: &[u8], i: usize| v.start(&KEY, TASK, &r, i, b).unwrap_err();
        // The first participant's share is the longest (no padding): any cut breaks it.
        let s = &shares[0];
        for cut in [0, 3, 4, 9, s.len() / 2, s.len() - 1] {
            let (code, message) = start(&s[..cut], 0);
            assert_eq!(code, "malformed_report", "{message}");
        }
        for (i, s) in shares.iter().enumerate() {
            assert_eq!(s.len(), v.share_bytes());
            let mut long = s.clone();
            long.push(1);
            assert_eq!(start(&long, i).0, "malformed_report", "nonzero padding");
        }
        let random: Vec<u8> = (0..shares[0].len()).map(|i| (i * 31 % 251) as u8).collect();
        assert!(v.start(&KEY, TASK, &r, 0, &random).is_err());
        // Verifier shares: wrong count, truncated, random.
        let (state, mine) = v.start(&KEY, TASK, &r, 0, &shares[0]).unwrap();
        let all: Vec<Vec<u8>> = (0..3)
            .map(|i| v.start(&KEY, TASK, &r, i, &shares[i]).unwrap().1)
            .collect();
        assert_eq!(
            v.finish(TASK, state.clone(), std::slice::from_ref(&mine))
                .unwrap_err()
                .0,
            "malformed_report"
        );
        let mut cut = all.clone();
        cut[1].pop();
        assert_eq!(
            v.finish(TASK, state.clone(), &cut).unwrap_err().0,
            "malformed_report"
        );
        let mut garbage = all.clone();
        garbage[2] = vec![0x55; all[2].len()];
        assert!(v.finish(TASK, state.clone(), &garbage).is_err());
        assert!(v.finish(TASK, state, &all).is_ok());
    }

    #[test]
    fn input_types_parse_and_check() {
        let parse = |s: &str| serde_json::from_str::<InputType>(s);
        assert_eq!(parse(r#"{"type":"count"}"#).unwrap(), InputType::Count);
        assert_eq!(
            parse(r#"{"type":"sum","bits":8}"#).unwrap(),
            InputType::Sum { bits: 8 }
        );
        assert_eq!(
            parse(r#"{"type":"histogram","buckets":10}"#).unwrap(),
            InputType::Histogram { buckets: 10 }
        );
        assert!(parse(r#"{"type":"sum"}"#).is_err());
        assert!(parse(r#"{"type":"vote"}"#).is_err());
        assert!(InputType::Sum { bits: 0 }.check().is_err());
        assert!(InputType::Sum { bits: 33 }.check().is_err());
        assert!(InputType::Sum { bits: 32 }.check().is_ok());
        assert!(InputType::Histogram { buckets: 1 }.check().is_err());
        assert_eq!(InputType::Histogram { buckets: 7 }.output_len(), Some(7));
        assert!(Validator::new(InputType::Raw, 3).unwrap().is_none());
    }
}
