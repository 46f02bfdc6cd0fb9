//! A rate as a user writes it: an integer R (1 = softmax, >= 2 = hybrid) or the word
//! `linear` (no anchors).

use crate::cost::Rate;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CandidateRate(pub Rate);

impl Serialize for CandidateRate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Rate::Linear => serializer.serialize_str("linear"),
            Rate::Softmax => serializer.serialize_u32(1),
            Rate::Hybrid(r) => serializer.serialize_u32(r),
        }
    }
}

impl<'de> Deserialize<'de> for CandidateRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RateVisitor;
        impl Visitor<'_> for RateVisitor {
            type Value = CandidateRate;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate: a positive integer (1 = softmax) or `linear`")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CandidateRate, E> {
                match v {
                    0 => Err(E::custom("rate 0 is not a rate; write `linear` for no anchors")),
                    1 => Ok(CandidateRate(Rate::Softmax)),
                    r if r <= u32::MAX as u64 => Ok(CandidateRate(Rate::Hybrid(r as u32))),
                    r => Err(E::custom(format!("rate {r} is too large"))),
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CandidateRate, E> {
                if v < 0 {
                    return Err(E::custom(format!("rate {v} is negative")));
                }
                self.visit_u64(v as u64)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<CandidateRate, E> {
                match v {
                    "linear" | "inf" => Ok(CandidateRate(Rate::Linear)),
                    "softmax" => Ok(CandidateRate(Rate::Softmax)),
                    other => Err(E::custom(format!(
                        "unknown rate `{other}`; expected a positive integer or `linear`"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(RateVisitor)
    }
}
