//! Shamir sharing of vectors over a prime field, and the share arithmetic nodes do.
//!
//! The field is `prio`'s [`Field64`]: GF(p) with p = 2^64 − 2^32 + 1 (the "Goldilocks"
//! prime), from the ISRG/Divvi Up `prio` crate that implements the IETF DAP/VDAF drafts. Its
//! constant-time Montgomery arithmetic, inversion and uniform sampling are used as they are;
//! this module only evaluates and interpolates polynomials with them (Horner's rule and
//! Lagrange at zero). Values are integers `0 <= v < p`; a value at or above `p` is refused,
//! never reduced, so that a sum is never silently wrapped on input. Sums themselves are
//! computed mod p (a sum of more than p reports' values wraps, as in any field-based scheme).
//!
//! Degree-`t` polynomials, participant `i` (0-based, in sorted peer id order) holds the
//! evaluation at `x = i + 1`: any `t + 1` shares reconstruct, any `t` are uniformly random.
//!
//! These are pure functions, so benchmarks can call them: [`split`], [`add_assign`],
//! [`reconstruct`], [`encode`], [`decode`].

use prio::field::{Field64, FieldElement, FieldElementWithInteger};
use rand10::{CryptoRng, RngExt};

/// The field every aggregation uses.
pub type Field = Field64;
/// Its prime modulus, 2^64 − 2^32 + 1.
pub const MODULUS: u64 = 18_446_744_069_414_584_321;
/// Bytes of one encoded element (little-endian).
pub const ELEMENT_BYTES: usize = 8;

/// A malformed vector or share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error(
        "value {value} at position {index} is outside the field: values must be below {MODULUS}"
    )]
    OutOfField { index: usize, value: u64 },
    #[error("expected {expected} values, got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("{0}")]
    Parameters(String),
}

/// Converts plain integers to field elements, refusing any value `>= MODULUS`.
pub fn to_field(values: &[u64]) -> Result<Vec<Field>, ShareError> {
    values
        .iter()
        .enumerate()
        .map(|(index, &value)| {
            if value >= MODULUS {
                Err(ShareError::OutOfField { index, value })
            } else {
                Ok(Field::from(value))
            }
        })
        .collect()
}

/// Field elements as plain integers.
pub fn to_integers(values: &[Field]) -> Vec<u64> {
    values.iter().map(|v| u64::from(*v)).collect()
}

/// Splits `values` into `shares` Shamir shares of threshold `threshold` (polynomial degree):
/// share `i` is the evaluation at `x = i + 1`. Needs `1 <= threshold < shares`.
pub fn split<R: CryptoRng + ?Sized>(
    values: &[Field],
    threshold: usize,
    shares: usize,
    rng: &mut R,
) -> Result<Vec<Vec<Field>>, ShareError> {
    if threshold == 0 || threshold >= shares {
        return Err(ShareError::Parameters(format!(
            "threshold {threshold} must be at least 1 and below the number of shares ({shares})"
        )));
    }
    let xs: Vec<Field> = (1..=shares as u64).map(Field::from).collect();
    let mut out = vec![Vec::with_capacity(values.len()); shares];
    let mut coefficients = vec![Field::zero(); threshold];
    for value in values {
        for c in coefficients.iter_mut() {
            *c = rng.random();
        }
        for (share, x) in out.iter_mut().zip(&xs) {
            // Horner: ((c_t x + c_{t-1}) x + ... + c_1) x + value.
            let mut acc = Field::zero();
            for c in coefficients.iter().rev() {
                acc = (acc + *c) * *x;
            }
            share.push(acc + *value);
        }
    }
    Ok(out)
}

/// Adds `share` into `sum` element-wise.
pub fn add_assign(sum: &mut [Field], share: &[Field]) -> Result<(), ShareError> {
    if sum.len() != share.len() {
        return Err(ShareError::WrongLength {
            expected: sum.len(),
            got: share.len(),
        });
    }
    for (s, v) in sum.iter_mut().zip(share) {
        *s += *v;
    }
    Ok(())
}

/// Reconstructs the shared vector from shares at the given 0-based participant indexes
/// (x = index + 1), by Lagrange interpolation at zero. Needs at least `threshold + 1` of them
/// (the caller checks the count; with fewer, the result is meaningless).
pub fn reconstruct(shares: &[(usize, Vec<Field>)]) -> Result<Vec<Field>, ShareError> {
    interpolate_at(shares, Field::zero())
}

/// Opens a sum from the share sums of `threshold + 1` or more participants: the first
/// `threshold + 1` give the sum; every further one must lie on the same polynomial (else
/// some participant sent a wrong share sum, and nothing is returned). Returns the sum and
/// whether a further share sum checked it.
pub fn open_checked(
    shares: &[(usize, Vec<Field>)],
    threshold: usize,
) -> Result<(Vec<Field>, bool), ShareError> {
    if shares.len() <= threshold {
        return Err(ShareError::Parameters(format!(
            "{} share sums cannot open a sum of threshold {threshold}",
            shares.len()
        )));
    }
    let (base, extra) = shares.split_at(threshold + 1);
    for (index, sum) in extra {
        let expected = interpolate_at(base, Field::from(*index as u64 + 1))?;
        if expected != *sum {
            return Err(ShareError::Parameters(format!(
                "the share sums disagree: the one of participant index {index} does not lie on the polynomial of the others; some participant sent a wrong share sum"
            )));
        }
    }
    Ok((reconstruct(base)?, !extra.is_empty()))
}

/// Adds additive shares (a validated task's Prio3 share sums): exactly one from each of the
/// `n` participants.
pub fn add_all(shares: &[(usize, Vec<Field>)], n: usize) -> Result<Vec<Field>, ShareError> {
    let mut indexes: Vec<usize> = shares.iter().map(|(i, _)| *i).collect();
    indexes.sort_unstable();
    indexes.dedup();
    if shares.len() != n || indexes.len() != n {
        return Err(ShareError::Parameters(format!(
            "additive shares open only with one share sum from each of the {n} participants; got {} from {} participants",
            shares.len(),
            indexes.len()
        )));
    }
    let mut sum = shares[0].1.clone();
    for (_, s) in &shares[1..] {
        add_assign(&mut sum, s)?;
    }
    Ok(sum)
}

/// The shared polynomial, through the given shares, evaluated at `x`.
fn interpolate_at(shares: &[(usize, Vec<Field>)], x: Field) -> Result<Vec<Field>, ShareError> {
    let Some((_, first)) = shares.first() else {
        return Err(ShareError::Parameters(
            "no shares to reconstruct from".into(),
        ));
    };
    let len = first.len();
    let xs: Vec<Field> = shares
        .iter()
        .map(|(i, _)| Field::from(*i as u64 + 1))
        .collect();
    for (a, (i, s)) in shares.iter().enumerate() {
        if s.len() != len {
            return Err(ShareError::WrongLength {
                expected: len,
                got: s.len(),
            });
        }
        if shares[..a].iter().any(|(j, _)| j == i) {
            return Err(ShareError::Parameters(format!(
                "participant index {i} appears twice"
            )));
        }
    }
    // lambda_j = prod_{m != j} (x - x_m) / (x_j - x_m)
    let lambdas: Vec<Field> = (0..xs.len())
        .map(|j| {
            let mut num = Field::one();
            let mut den = Field::one();
            for (m, xm) in xs.iter().enumerate() {
                if m != j {
                    num *= x - *xm;
                    den *= xs[j] - *xm;
                }
            }
            num * den.inv()
        })
        .collect();
    let mut out = vec![Field::zero(); len];
    for ((_, share), lambda) in shares.iter().zip(&lambdas) {
        for (o, v) in out.iter_mut().zip(share) {
            *o += *v * *lambda;
        }
    }
    Ok(out)
}

/// Encodes a vector as little-endian 8-byte elements.
pub fn encode(values: &[Field]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * ELEMENT_BYTES);
    for v in values {
        out.extend_from_slice(&u64::from(*v).to_le_bytes());
    }
    out
}

/// Decodes [`encode`]d bytes holding exactly `expected` elements, each below the modulus.
pub fn decode(bytes: &[u8], expected: usize) -> Result<Vec<Field>, ShareError> {
    if bytes.len() != expected * ELEMENT_BYTES {
        return Err(ShareError::WrongLength {
            expected,
            got: bytes.len() / ELEMENT_BYTES,
        });
    }
    bytes
        .chunks_exact(ELEMENT_BYTES)
        .enumerate()
        .map(|(index, chunk)| {
            let mut b = [0u8; ELEMENT_BYTES];
            b.copy_from_slice(chunk);
            let value = u64::from_le_bytes(b);
            if value >= MODULUS {
                Err(ShareError::OutOfField { index, value })
            } else {
                Ok(Field::from(value))
            }
        })
        .collect()
}

/// The modulus as the field library states it (checked against [`MODULUS`] in tests).
pub fn field_modulus() -> u64 {
    Field::modulus()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> rand10::rngs::ThreadRng {
        rand10::rng()
    }

    #[test]
    fn modulus_matches_the_library() {
        assert_eq!(field_modulus(), MODULUS);
    }

    #[test]
    fn any_t_plus_one_shares_reconstruct_the_sum() {
        let (t, n, len) = (2, 5, 50);
        let a = to_field(&(0..len as u64).collect::<Vec<_>>()).unwrap();
        let b = to_field(&vec![MODULUS - 1; len]).unwrap();
        let sa = split(&a, t, n, &mut rng()).unwrap();
        let sb = split(&b, t, n, &mut rng()).unwrap();
        let mut sums = sa.clone();
        for (s, share) in sums.iter_mut().zip(&sb) {
            add_assign(s, share).unwrap();
        }
        let expected: Vec<u64> = (0..len as u64)
            .map(|i| (i + MODULUS - 1) % MODULUS)
            .collect();
        for subset in [[0, 1, 2], [1, 3, 4], [4, 2, 0]] {
            let picked: Vec<(usize, Vec<Field>)> =
                subset.iter().map(|&i| (i, sums[i].clone())).collect();
            assert_eq!(to_integers(&reconstruct(&picked).unwrap()), expected);
        }
        // t + 2 share sums: the extra one checks the others; a wrong one is caught.
        let four: Vec<(usize, Vec<Field>)> =
            [3, 0, 4, 1].iter().map(|&i| (i, sums[i].clone())).collect();
        let (sum, checked) = open_checked(&four, t).unwrap();
        assert_eq!((to_integers(&sum), checked), (expected.clone(), true));
        let (_, checked) = open_checked(&four[..3], t).unwrap();
        assert!(!checked);
        assert!(open_checked(&four[..2], t).is_err());
        for wrong in 0..4 {
            let mut bad = four.clone();
            bad[wrong].1[7] += Field::one();
            let e = open_checked(&bad, t).unwrap_err();
            assert!(e.to_string().contains("share sums disagree"), "{e}");
        }
    }

    /// Privacy of the sharing: for any t share sums the nodes hold, and any other inputs of
    /// the same length, there is a degree-t sharing of those other inputs that gives exactly
    /// the same t shares. So t nodes' view is consistent with any inputs at all.
    #[test]
    fn any_t_shares_are_consistent_with_other_inputs() {
        let (t, n, len) = (2, 5, 20);
        let secret = to_field(&vec![42; len]).unwrap();
        let other = to_field(&vec![7; len]).unwrap();
        let shares = split(&secret, t, n, &mut rng()).unwrap();
        for colluders in [[0usize, 1], [2, 4], [1, 3]] {
            // Interpolate the polynomial through (0, other) and the colluders' points: it has
            // degree <= t, so it is a valid sharing of `other`; evaluate it at every x.
            let mut points: Vec<(usize, Vec<Field>)> =
                colluders.iter().map(|&i| (i, shares[i].clone())).collect();
            let alt = share_with_fixed_points(&other, &mut points, n);
            for &i in &colluders {
                assert_eq!(alt[i], shares[i], "colluder {i} sees the same share");
            }
            let all: Vec<(usize, Vec<Field>)> =
                [0, 1, 2].iter().map(|&i| (i, alt[i].clone())).collect();
            assert_eq!(reconstruct(&all).unwrap(), other);
        }
    }

    /// Evaluations at x = 1..=n of the degree-t polynomial (per element) through (0, secret)
    /// and the given points.
    fn share_with_fixed_points(
        secret: &[Field],
        points: &mut [(usize, Vec<Field>)],
        n: usize,
    ) -> Vec<Vec<Field>> {
        let mut xs: Vec<Field> = vec![Field::zero()];
        xs.extend(points.iter().map(|(i, _)| Field::from(*i as u64 + 1)));
        (0..n)
            .map(|target| {
                let x = Field::from(target as u64 + 1);
                (0..secret.len())
                    .map(|e| {
                        let ys: Vec<Field> = std::iter::once(secret[e])
                            .chain(points.iter().map(|(_, s)| s[e]))
                            .collect();
                        let mut acc = Field::zero();
                        for j in 0..xs.len() {
                            let mut l = Field::one();
                            for m in 0..xs.len() {
                                if m != j {
                                    l *= (x - xs[m]) * (xs[j] - xs[m]).inv();
                                }
                            }
                            acc += ys[j] * l;
                        }
                        acc
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn out_of_field_values_are_refused_not_wrapped() {
        assert_eq!(
            to_field(&[1, MODULUS]).unwrap_err(),
            ShareError::OutOfField {
                index: 1,
                value: MODULUS
            }
        );
        let mut bytes = encode(&to_field(&[1, 2]).unwrap());
        bytes[8..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(&bytes, 2),
            Err(ShareError::OutOfField { index: 1, .. })
        ));
        assert!(matches!(
            decode(&bytes, 3),
            Err(ShareError::WrongLength { expected: 3, .. })
        ));
    }
}
