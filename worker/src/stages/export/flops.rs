//! The FLOP part of export's report: per block and in total, the student's attention and
//! whole-model forward FLOPs against the teacher's, from the cost model at the spec's
//! size. A pure function of the spec and the rates.

use serde::Serialize;
use surgery_core::cost;
use surgery_core::rate::Rate;
use surgery_core::spec::JobSpec;

/// One block's rate and attention FLOPs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockFlops {
    pub block: usize,
    /// The rate's wire code (1 = softmax, 0 = linear).
    pub rate: u32,
    pub rate_name: String,
    pub attention_flops: f64,
}

/// The teacher's and the student's FLOPs, and the fraction the student saves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Saving {
    pub teacher: f64,
    pub student: f64,
    pub saved_fraction: f64,
}

impl Saving {
    fn new(teacher: f64, student: f64) -> Saving {
        Saving {
            teacher,
            student,
            saved_fraction: 1.0 - student / teacher,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlopReport {
    pub blocks: Vec<BlockFlops>,
    pub attention_flops: Saving,
    pub model_forward_flops: Saving,
}

/// The FLOPs of a student with `rates[b]` at block b, at the spec's model and video size.
pub fn flop_report(spec: &JobSpec, rates: &[Rate]) -> FlopReport {
    let shape = spec.model_shape();
    let fmap = spec.surgery.feature_map.shape();
    let tokens = spec.tokens();
    let attention = |rate: Rate| cost::attention_flops(&shape, &fmap, tokens, rate);
    let blocks: Vec<BlockFlops> = rates
        .iter()
        .enumerate()
        .map(|(block, rate)| BlockFlops {
            block,
            rate: rate.code(),
            rate_name: rate.to_string(),
            attention_flops: attention(*rate),
        })
        .collect();
    let attention_student: f64 = blocks.iter().map(|b| b.attention_flops).sum();
    let attention_teacher = attention(Rate::Softmax) * f64::from(shape.layers);
    FlopReport {
        blocks,
        attention_flops: Saving::new(attention_teacher, attention_student),
        model_forward_flops: Saving::new(
            cost::softmax_model_forward_flops(&shape, tokens),
            cost::model_forward_flops(&shape, &fmap, tokens, rates),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> JobSpec {
        JobSpec::parse(include_str!("../../../../configs/tiny.yaml")).unwrap()
    }

    #[test]
    fn an_all_softmax_student_saves_nothing() {
        let spec = tiny();
        let report = flop_report(&spec, &[Rate::Softmax, Rate::Softmax]);
        assert_eq!(report.attention_flops.saved_fraction, 0.0);
        assert_eq!(report.model_forward_flops.saved_fraction, 0.0);
        assert_eq!(report.attention_flops.teacher, report.attention_flops.student);
        assert_eq!(report.blocks.len(), 2);
        assert_eq!(report.blocks[1].rate_name, "softmax");
    }

    #[test]
    fn per_block_figures_add_up_to_the_totals() {
        let spec = tiny();
        let rates = [Rate::Hybrid(2), Rate::Linear];
        let report = flop_report(&spec, &rates);
        let (shape, fmap, tokens) = (spec.model_shape(), spec.surgery.feature_map.shape(), spec.tokens());
        for (b, rate) in rates.iter().enumerate() {
            let block = &report.blocks[b];
            assert_eq!(
                (block.block, block.rate, block.rate_name.clone()),
                (b, rate.code(), rate.to_string())
            );
            assert_eq!(
                block.attention_flops,
                cost::attention_flops(&shape, &fmap, tokens, *rate)
            );
        }
        let sum: f64 = report.blocks.iter().map(|b| b.attention_flops).sum();
        assert_eq!(report.attention_flops.student, sum);
        let a = report.attention_flops;
        assert_eq!(a.saved_fraction, 1.0 - a.student / a.teacher);
        assert_eq!(
            report.model_forward_flops.student,
            cost::model_forward_flops(&shape, &fmap, tokens, &rates)
        );
        // The report's JSON keeps export's field names.
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["blocks"][1]["rate"], 0);
        assert_eq!(json["blocks"][1]["rate_name"], "linear");
        assert!(json["model_forward_flops"]["saved_fraction"].is_f64());
    }
}
