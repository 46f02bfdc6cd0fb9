//! The select stage, which runs inside the coordinator: turn the distill tasks' results
//! into the stage-1 table and apply the spec's rule (knapsack, layout or homogeneous)
//! from `surgery_core::select`. Pure: spec and task records in, choice out.

use crate::model::{Stage, TaskParams, TaskRecord, TaskState};
use std::collections::BTreeMap;
use surgery_core::cost;
use surgery_core::rate::Rate;
use surgery_core::results;
use surgery_core::select::{self, Candidate, SelectionInput, describe_layout};
use surgery_core::spec::{CostSource, JobSpec, SelectionRule};

#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    /// (block, rate) for every block.
    pub layout: Vec<(u32, Rate)>,
    pub metrics: BTreeMap<String, f64>,
    /// One line for the event log.
    pub summary: String,
}

pub fn select(spec: &JobSpec, tasks: &[TaskRecord]) -> Result<Chosen, String> {
    let shape = spec.model_shape();
    let fmap = spec.surgery.feature_map.shape();
    let tokens = spec.tokens();
    let rule = spec.surgery.selection.rule();
    let cost_source = match &rule {
        SelectionRule::Knapsack(k) => k.cost,
        // Layout and homogeneous rules do not trade cost; report FLOPs.
        _ => CostSource::Flops,
    };

    let mut softmax_measured: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut candidates = Vec::new();
    for task in tasks.iter().filter(|t| t.stage == Stage::Distill) {
        let TaskParams::Distill { block, rate } = task.params else {
            continue;
        };
        if task.state != TaskState::Succeeded {
            return Err(format!("{} has not succeeded", task.id));
        }
        let metrics = &task.result.as_ref().map(|r| r.metrics.clone()).unwrap_or_default();
        let metric = |name: &str| {
            metrics
                .get(name)
                .copied()
                .ok_or_else(|| format!("{} reported no `{name}` metric", task.id))
        };
        let error = metric(results::HELDOUT_ERROR)?;
        let cost = match cost_source {
            CostSource::Flops => cost::attention_flops(&shape, &fmap, tokens, rate),
            CostSource::Measured => {
                softmax_measured
                    .entry(block)
                    .or_default()
                    .push(metric(results::SOFTMAX_ATTENTION_MS)?);
                metric(results::ATTENTION_MS)?
            }
        };
        candidates.push(Candidate {
            block,
            rate,
            error,
            cost,
        });
    }

    let softmax_flops = cost::attention_flops(&shape, &fmap, tokens, Rate::Softmax);
    let softmax_cost: Vec<f64> = (0..shape.layers)
        .map(|block| match cost_source {
            CostSource::Flops => Ok(softmax_flops),
            CostSource::Measured => softmax_measured
                .get(&block)
                .map(|v| v.iter().sum::<f64>() / v.len() as f64)
                .or_else(|| mean_of_all(&softmax_measured))
                .ok_or_else(|| "no distill task measured softmax attention time".to_string()),
        })
        .collect::<Result<_, String>>()?;
    let input = SelectionInput {
        blocks: shape.layers,
        softmax_cost,
        candidates,
    };

    let (selection, budget) = match &rule {
        SelectionRule::Knapsack(k) => {
            let budget = k.budget * input.softmax_total();
            (select::knapsack(&input, budget), budget)
        }
        SelectionRule::Homogeneous(h) => (select::homogeneous(&input, h.rate, h.blocks), input.softmax_total()),
        SelectionRule::Layout(entries) => {
            let layout: Vec<(u32, Rate)> = entries
                .iter()
                .flat_map(|e| e.blocks.iter().map(move |b| (*b, e.rate)))
                .collect();
            (select::explicit(&input, &layout), input.softmax_total())
        }
    };
    let softmax_total = input.softmax_total();
    let selection = selection.map_err(|e| match e {
        // The distillation is done and sound: only the budget was wrong.
        select::SelectError::Infeasible { minimum, .. } => format!(
            "{e}; the smallest feasible budget is {:.3} of softmax: fork this job with a larger \
             surgery.selection.knapsack.budget (`surgeryctl fork <this job> -f spec.yaml`), which reuses its \
             capture and distillation",
            // Rounded up, so the budget it names is feasible.
            ((minimum / softmax_total).min(1.0) * 1000.0).ceil() / 1000.0
        ),
        e => e.to_string(),
    })?;
    let unit = match cost_source {
        CostSource::Flops => "FLOPs",
        CostSource::Measured => "ms",
    };
    let layout: Vec<(u32, Rate)> = (0u32..).zip(selection.rates.iter().copied()).collect();
    let summary = format!(
        "selected {} (attention cost {:.3} of softmax in {unit}, total error {:.4})",
        describe_layout(&layout, None),
        selection.total_cost / softmax_total,
        selection.total_error
    );
    let metrics = BTreeMap::from([
        (results::TOTAL_ERROR.to_string(), selection.total_error),
        (results::TOTAL_COST.to_string(), selection.total_cost),
        (results::SOFTMAX_COST.to_string(), softmax_total),
        (results::BUDGET.to_string(), budget),
    ]);
    Ok(Chosen {
        layout,
        metrics,
        summary,
    })
}

fn mean_of_all(measured: &BTreeMap<u32, Vec<f64>>) -> Option<f64> {
    let all: Vec<f64> = measured.values().flatten().copied().collect();
    (!all.is_empty()).then(|| all.iter().sum::<f64>() / all.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskResult;
    use crate::planner::plan;
    use surgery_core::spec::SelectionSpec;

    /// The tiny config with `surgery.selection` set to `selection` (a YAML mapping that
    /// names one rule), validated as a submitted spec is. The key is set in the parsed
    /// document, not found by text, so editing the config's comments cannot make these
    /// tests run the unchanged selection.
    fn tiny(selection: &str) -> JobSpec {
        let mut doc: serde_yaml::Value = serde_yaml::from_str(include_str!("../../configs/tiny.yaml")).unwrap();
        let wanted: serde_yaml::Value = serde_yaml::from_str(selection).unwrap();
        doc["surgery"]["selection"] = wanted;
        let spec = JobSpec::parse(&serde_yaml::to_string(&doc).unwrap()).unwrap();
        assert_eq!(
            spec.surgery.selection,
            serde_yaml::from_str::<SelectionSpec>(selection).unwrap(),
            "the selection under test"
        );
        spec
    }

    /// Marks every distill task succeeded with error = block + 10 / rate (so higher rates
    /// and later blocks are worse) and measured times.
    fn distilled(spec: &JobSpec) -> Vec<TaskRecord> {
        let mut tasks = plan(&"j".to_string(), spec, 0);
        for task in tasks.iter_mut() {
            if let TaskParams::Distill { block, rate } = task.params {
                task.state = TaskState::Succeeded;
                let r = if rate == Rate::Linear {
                    1000.0
                } else {
                    rate.code() as f64
                };
                task.result = Some(TaskResult {
                    metrics: BTreeMap::from([
                        (results::HELDOUT_ERROR.into(), block as f64 + r / 10.0),
                        (results::ATTENTION_MS.into(), 10.0 / r + 3.0),
                        (results::SOFTMAX_ATTENTION_MS.into(), 11.0),
                    ]),
                    ..TaskResult::default()
                });
            }
        }
        tasks
    }

    #[test]
    fn knapsack_over_flops_meets_the_budget() {
        let spec = tiny("knapsack: {budget: 0.8, cost: flops}");
        let chosen = select(&spec, &distilled(&spec)).unwrap();
        assert_eq!(chosen.layout.len(), 2);
        let cost = chosen.metrics[results::TOTAL_COST];
        let budget = chosen.metrics[results::BUDGET];
        assert!(cost <= budget, "{cost} > {budget}");
        assert!(
            chosen.layout.iter().any(|(_, r)| *r != Rate::Softmax),
            "a 0.8 budget must convert something"
        );
        assert!(chosen.summary.starts_with("selected "), "{}", chosen.summary);
    }

    #[test]
    fn measured_costs_come_from_the_distill_results() {
        let spec = tiny("knapsack: {budget: 0.6, cost: measured}");
        let chosen = select(&spec, &distilled(&spec)).unwrap();
        assert_eq!(chosen.metrics[results::SOFTMAX_COST], 22.0);
        assert!(chosen.metrics[results::TOTAL_COST] <= 0.6 * 22.0);
    }

    #[test]
    fn missing_metric_is_named() {
        let spec = tiny("knapsack: {budget: 0.6, cost: measured}");
        let mut tasks = distilled(&spec);
        let t = tasks.iter_mut().find(|t| t.stage == Stage::Distill).unwrap();
        t.result.as_mut().unwrap().metrics.remove(results::ATTENTION_MS);
        let err = select(&spec, &tasks).unwrap_err();
        assert_eq!(err, "distill/block-00/rate-2 reported no `attention_ms` metric");
    }

    #[test]
    fn infeasible_budget_is_a_clear_failure() {
        let spec = tiny("knapsack: {budget: 0.01, cost: flops}");
        let err = select(&spec, &distilled(&spec)).unwrap_err();
        assert!(err.contains("infeasible"), "{err}");
        // It says what to do: fork with a budget that is feasible.
        assert!(err.contains("surgeryctl fork"), "{err}");
        let named: f64 = err
            .split("smallest feasible budget is ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no budget named: {err}"));
        let feasible = tiny(&format!("knapsack: {{budget: {named}, cost: flops}}"));
        assert!(select(&feasible, &distilled(&feasible)).is_ok(), "budget {named}");
        let below = tiny(&format!("knapsack: {{budget: {}, cost: flops}}", named - 0.002));
        assert!(select(&below, &distilled(&below)).is_err(), "budget {}", named - 0.002);
    }

    #[test]
    fn layout_and_homogeneous_rules() {
        let spec = tiny("layout: [{blocks: [1], rate: linear}]");
        let chosen = select(&spec, &distilled(&spec)).unwrap();
        assert_eq!(chosen.layout, vec![(0, Rate::Softmax), (1, Rate::Linear)]);
        assert_eq!(
            chosen.summary.split(" (").next().unwrap(),
            "selected block 1 at linear; 1 softmax"
        );

        let spec = tiny("homogeneous: {rate: 4, blocks: 1}");
        let chosen = select(&spec, &distilled(&spec)).unwrap();
        // Block 0 has the lower error at R4.
        assert_eq!(chosen.layout, vec![(0, Rate::Hybrid(4)), (1, Rate::Softmax)]);
    }
}
