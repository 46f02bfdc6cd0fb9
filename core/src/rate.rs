//! The block rate R (METHOD.md section 1): how many keys of a block stay softmax anchors.
//! One type from the spec to the kernels; its encodings live here and only here:
//!
//! * as a user writes it (spec YAML, JSON reports): an integer R (1 = softmax, >= 2 =
//!   hybrid) or the word `linear` - this is `Rate`'s serde form;
//! * in task names and object-store paths: [`Rate::word`] (`4`, `linear`, `1`);
//! * on the wire and in the coordinator's records: a `u32` code, 0 = linear
//!   ([`Rate::code`], [`Rate::from_code`], and the [`code`] serde adapter), used only
//!   at those edges;
//! * for people: `Display` (`R4`, `linear`, `softmax`), parsed back by `FromStr`.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Rate R of one block. The derived order is "how much softmax is given up":
/// Softmax < Hybrid(2) < Hybrid(4) < ... < Linear; stage 2 uses it to break ties and
/// tables use it for their column order. `Hybrid(r)` with r < 2 is not a valid value;
/// build rates from numbers with [`Rate::from_code`] or by parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rate {
    Softmax,
    Hybrid(u32),
    Linear,
}

impl Rate {
    /// Decodes the wire code (1 = softmax, 0 = linear, R >= 2 = hybrid).
    pub fn from_code(code: u32) -> Rate {
        match code {
            0 => Rate::Linear,
            1 => Rate::Softmax,
            r => Rate::Hybrid(r),
        }
    }

    /// The wire code; inverse of [`Rate::from_code`] for valid rates.
    pub fn code(self) -> u32 {
        match self {
            Rate::Linear => 0,
            Rate::Softmax => 1,
            Rate::Hybrid(r) => r,
        }
    }

    /// `4`, `linear` or `1`, as task names and object-store paths spell it.
    pub fn word(self) -> String {
        match self {
            Rate::Linear => "linear".to_string(),
            Rate::Softmax => "1".to_string(),
            Rate::Hybrid(r) => r.to_string(),
        }
    }

    /// False only for the unrepresentable `Hybrid(0)` / `Hybrid(1)`.
    pub fn is_valid(self) -> bool {
        !matches!(self, Rate::Hybrid(r) if r < 2)
    }

    /// Number of anchor keys |T_S| among `tokens` keys under the strided rule
    /// (flattened index i with i mod R == 0): ceil(N / R); all N for softmax, none for
    /// linear. (The diagonal pattern has a count that depends on the grid; the cost
    /// model uses the strided count for both, which is within one row of it.)
    pub fn anchors(self, tokens: u64) -> u64 {
        match self {
            Rate::Softmax => tokens,
            Rate::Linear => 0,
            // max(1) only guards the invalid Hybrid(0) against division by zero.
            Rate::Hybrid(r) => tokens.div_ceil(u64::from(r.max(1))),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Softmax => f.write_str("softmax"),
            Rate::Linear => f.write_str("linear"),
            Rate::Hybrid(r) => write!(f, "R{r}"),
        }
    }
}

/// A string that is not a rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid rate {0:?}: expected \"softmax\", \"linear\", \"R<n>\" with n >= 2, or an integer (1 = softmax, 0 = linear)"
)]
pub struct ParseRateError(pub String);

impl FromStr for Rate {
    type Err = ParseRateError;

    /// Accepts the `Display` forms ("softmax", "linear", "R4", case-insensitive) and
    /// the bare code ("4", "1", "0").
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = || ParseRateError(s.to_string());
        if t.eq_ignore_ascii_case("softmax") {
            return Ok(Rate::Softmax);
        }
        if t.eq_ignore_ascii_case("linear") {
            return Ok(Rate::Linear);
        }
        if let Some(n) = t.strip_prefix(['R', 'r']) {
            let r: u32 = n.parse().map_err(|_| err())?;
            // "R1" would silently mean softmax; demand the explicit word instead.
            return if r >= 2 { Ok(Rate::Hybrid(r)) } else { Err(err()) };
        }
        t.parse::<u32>().map(Rate::from_code).map_err(|_| err())
    }
}

/// The user's form: an integer (1 = softmax) or `linear`.
impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Rate::Linear => serializer.serialize_str("linear"),
            Rate::Softmax => serializer.serialize_u32(1),
            Rate::Hybrid(r) => serializer.serialize_u32(r),
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RateVisitor;
        impl Visitor<'_> for RateVisitor {
            type Value = Rate;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate: a positive integer (1 = softmax) or `linear`")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Rate, E> {
                match v {
                    0 => Err(E::custom("rate 0 is not a rate; write `linear` for no anchors")),
                    1 => Ok(Rate::Softmax),
                    r if r <= u64::from(u32::MAX) => Ok(Rate::Hybrid(r as u32)),
                    r => Err(E::custom(format!("rate {r} is too large"))),
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Rate, E> {
                if v < 0 {
                    return Err(E::custom(format!("rate {v} is negative")));
                }
                self.visit_u64(v as u64)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
                match v {
                    "linear" | "inf" => Ok(Rate::Linear),
                    "softmax" => Ok(Rate::Softmax),
                    other => Err(E::custom(format!(
                        "unknown rate `{other}`; expected a positive integer or `linear`"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(RateVisitor)
    }
}

/// Serde adapter for records that store the wire code (`#[serde(with = "rate::code")]`):
/// the coordinator's store keeps the encoding its earlier versions wrote.
pub mod code {
    use super::Rate;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rate: &Rate, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(rate.code())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
        u32::deserialize(deserializer).map(Rate::from_code)
    }
}

/// [`code`] for a list of `(block, rate)` pairs.
pub mod code_pairs {
    use super::Rate;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(pairs: &Option<Vec<(u32, Rate)>>, serializer: S) -> Result<S::Ok, S::Error> {
        pairs
            .as_ref()
            .map(|list| list.iter().map(|(b, r)| (*b, r.code())).collect::<Vec<_>>())
            .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<(u32, Rate)>>, D::Error> {
        let coded = Option::<Vec<(u32, u32)>>::deserialize(deserializer)?;
        Ok(coded.map(|list| list.into_iter().map(|(b, c)| (b, Rate::from_code(c))).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_roundtrip() {
        assert_eq!(Rate::from_code(0), Rate::Linear);
        assert_eq!(Rate::from_code(1), Rate::Softmax);
        assert_eq!(Rate::from_code(2), Rate::Hybrid(2));
        for r in [0u32, 1, 2, 4, 8, 16, 32] {
            assert_eq!(Rate::from_code(r).code(), r);
            assert!(Rate::from_code(r).is_valid());
        }
        assert!(!Rate::Hybrid(1).is_valid());
        assert!(!Rate::Hybrid(0).is_valid());
    }

    #[test]
    fn serde_is_the_users_form() {
        let rates = vec![Rate::Softmax, Rate::Hybrid(2), Rate::Hybrid(16), Rate::Linear];
        let j = serde_json::to_string(&rates).unwrap();
        assert_eq!(j, r#"[1,2,16,"linear"]"#);
        let back: Vec<Rate> = serde_json::from_str(&j).unwrap();
        assert_eq!(back, rates);
        let err = serde_json::from_str::<Rate>("0").unwrap_err().to_string();
        assert!(err.contains("write `linear`"), "{err}");
        assert!(serde_json::from_str::<Rate>("-1").is_err());
        assert!(serde_json::from_str::<Rate>("\"R2\"").is_err());
    }

    #[test]
    fn code_adapter_keeps_the_stored_encoding() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Record {
            #[serde(with = "code")]
            rate: Rate,
            #[serde(with = "code_pairs")]
            layout: Option<Vec<(u32, Rate)>>,
        }
        let record = Record {
            rate: Rate::Linear,
            layout: Some(vec![(0, Rate::Softmax), (1, Rate::Hybrid(4)), (2, Rate::Linear)]),
        };
        let j = serde_json::to_string(&record).unwrap();
        assert_eq!(j, r#"{"rate":0,"layout":[[0,1],[1,4],[2,0]]}"#);
        assert_eq!(serde_json::from_str::<Record>(&j).unwrap(), record);
    }

    #[test]
    fn words_and_display() {
        assert_eq!(Rate::Hybrid(4).word(), "4");
        assert_eq!(Rate::Linear.word(), "linear");
        assert_eq!(Rate::Softmax.word(), "1");
        assert_eq!(Rate::Softmax.to_string(), "softmax");
        assert_eq!(Rate::Hybrid(2).to_string(), "R2");
        assert_eq!(Rate::Linear.to_string(), "linear");
        for r in [Rate::Softmax, Rate::Hybrid(2), Rate::Hybrid(32), Rate::Linear] {
            assert_eq!(r.to_string().parse::<Rate>().unwrap(), r);
            assert_eq!(r.word().parse::<Rate>().unwrap(), r);
        }
        assert_eq!("r8".parse::<Rate>().unwrap(), Rate::Hybrid(8));
        assert!("R1".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }
}
