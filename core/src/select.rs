//! Stage 2 of METHOD.md: choosing one rate per block from the stage-1 table. It owns
//! the selection problem's input (`SelectionInput`: per-block softmax cost plus the
//! distilled (block, rate, error, cost) candidates), its validation, and three pure
//! ways to turn it into a `Selection`: the exact cost-aware multiple-choice knapsack
//! (`knapsack`), and the paper's two baselines, the homogeneous rule (`homogeneous`)
//! and a given layout (`explicit`). Costs are in whatever unit the caller chose (FLOPs
//! from `crate::cost` or measured milliseconds); only sums and comparisons are used.
//! Totals are always summed in block order starting from 0.0, so the same layout gets
//! bit-identical totals from every function here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rate::Rate;

/// One distilled (block, rate) pair from stage 1: its held-out distillation error and
/// its cost. Softmax is never a candidate; it is implicit (error 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub block: u32,
    pub rate: Rate,
    pub error: f64,
    pub cost: f64,
}

/// The whole stage-1 table as stage 2 sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionInput {
    pub blocks: u32,
    /// Cost of block i left as softmax (error 0), one entry per block.
    pub softmax_cost: Vec<f64>,
    pub candidates: Vec<Candidate>,
}

impl SelectionInput {
    /// Cost of the all-softmax model, the reference a fractional budget is taken of.
    pub fn softmax_total(&self) -> f64 {
        self.softmax_cost.iter().fold(0.0, |acc, &c| acc + c)
    }
}

/// One rate per block and what that layout costs and loses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// `rates[i]` is block i's rate.
    pub rates: Vec<Rate>,
    pub total_error: f64,
    pub total_cost: f64,
}

impl Selection {
    /// The non-softmax blocks as (block, rate), in block order.
    pub fn converted(&self) -> Vec<(u32, Rate)> {
        self.rates
            .iter()
            .enumerate()
            .filter(|(_, r)| **r != Rate::Softmax)
            .map(|(b, &r)| (b as u32, r))
            .collect()
    }
}

/// A layout in words: `blocks 0,3 at R2; block 5 at linear; 27 softmax`. Softmax blocks
/// are counted, not listed (they are most of the model); with `layers`, blocks the
/// layout leaves out count as softmax too. The one description the coordinator's event
/// log, `surgeryctl` and reports share.
pub fn describe_layout(layout: &[(u32, Rate)], layers: Option<u32>) -> String {
    let mut by_rate: std::collections::BTreeMap<Rate, Vec<u32>> = std::collections::BTreeMap::new();
    let listed: std::collections::BTreeSet<u32> = layout.iter().map(|(block, _)| *block).collect();
    let mut softmax = 0u32;
    for &(block, rate) in layout {
        if rate == Rate::Softmax {
            softmax += 1;
        } else {
            by_rate.entry(rate).or_default().push(block);
        }
    }
    if let Some(layers) = layers {
        softmax += (0..layers).filter(|block| !listed.contains(block)).count() as u32;
    }
    let mut parts: Vec<String> = by_rate
        .into_iter()
        .map(|(rate, mut blocks)| {
            blocks.sort_unstable();
            let list = blocks.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let noun = if blocks.len() == 1 { "block" } else { "blocks" };
            format!("{noun} {list} at {rate}")
        })
        .collect();
    if softmax > 0 || parts.is_empty() {
        parts.push(format!("{softmax} softmax"));
    }
    parts.join("; ")
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectError {
    #[error("invalid selection input: {0}")]
    InvalidInput(String),
    #[error("budget {budget} is infeasible: even every block at its cheapest rate costs {minimum}")]
    Infeasible { budget: f64, minimum: f64 },
    #[error("cannot convert {count} blocks to {rate}: only {available} blocks have a candidate at {rate}")]
    NotEnoughCandidates { rate: Rate, count: u32, available: u32 },
    #[error("block {block} at {rate} is not in the stage-1 table")]
    MissingCandidate { block: u32, rate: Rate },
}

/// One choice for one block, softmax included.
#[derive(Debug, Clone, Copy)]
struct Opt {
    rate: Rate,
    error: f64,
    cost: f64,
}

fn check_value(what: &str, v: f64) -> Result<(), SelectError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(SelectError::InvalidInput(format!(
            "{what} is {v}; it must be finite and non-negative"
        )))
    }
}

/// Validate the input and list each block's options, sorted by `Rate`'s order
/// (softmax first). That order is what the tie-breaks below rely on.
fn options(input: &SelectionInput) -> Result<Vec<Vec<Opt>>, SelectError> {
    let blocks = input.blocks as usize;
    if input.softmax_cost.len() != blocks {
        return Err(SelectError::InvalidInput(format!(
            "{} softmax costs for {} blocks",
            input.softmax_cost.len(),
            blocks
        )));
    }
    let mut opts: Vec<Vec<Opt>> = Vec::with_capacity(blocks);
    for (b, &cost) in input.softmax_cost.iter().enumerate() {
        check_value(&format!("softmax cost of block {b}"), cost)?;
        opts.push(vec![Opt {
            rate: Rate::Softmax,
            error: 0.0,
            cost,
        }]);
    }
    for c in &input.candidates {
        let name = format!("candidate (block {}, {})", c.block, c.rate);
        if c.block >= input.blocks {
            return Err(SelectError::InvalidInput(format!(
                "{name}: block out of range (the model has {} blocks)",
                input.blocks
            )));
        }
        if !c.rate.is_valid() {
            return Err(SelectError::InvalidInput(format!("{name}: a hybrid rate must be >= 2")));
        }
        if c.rate == Rate::Softmax {
            // Softmax comes from `softmax_cost`; a second, possibly different entry
            // would be ambiguous.
            return Err(SelectError::InvalidInput(format!(
                "{name}: softmax is implicit (error 0, cost from softmax_cost), not a candidate"
            )));
        }
        check_value(&format!("{name}: error"), c.error)?;
        check_value(&format!("{name}: cost"), c.cost)?;
        let list = &mut opts[c.block as usize];
        if list.iter().any(|o| o.rate == c.rate) {
            return Err(SelectError::InvalidInput(format!("{name}: duplicate")));
        }
        list.push(Opt {
            rate: c.rate,
            error: c.error,
            cost: c.cost,
        });
    }
    for list in &mut opts {
        list.sort_by_key(|o| o.rate);
    }
    Ok(opts)
}

/// Totals of a layout given as one option index per block, summed in block order.
fn evaluate(opts: &[Vec<Opt>], choice: &[usize]) -> Selection {
    let mut sel = Selection {
        rates: Vec::with_capacity(opts.len()),
        total_error: 0.0,
        total_cost: 0.0,
    };
    for (list, &i) in opts.iter().zip(choice) {
        let o = list[i];
        sel.rates.push(o.rate);
        sel.total_error += o.error;
        sel.total_cost += o.cost;
    }
    sel
}

/// A partial layout of the first k blocks in the knapsack DP.
struct State {
    cost: f64,
    error: f64,
    choice: Vec<usize>,
}

/// The exact cost-aware selection: exactly one rate per block, minimising the total
/// error subject to total cost <= `budget` (absolute, same unit as the costs).
///
/// Method: dynamic programming over blocks that keeps the Pareto frontier of partial
/// layouts in (cost, error). A partial layout dominated in both (no cheaper, no more
/// accurate) can never complete to something better than the same completion of the
/// one dominating it, and floating-point addition is monotone, so pruning it is exact
/// for real-valued costs; no cost axis is discretised. Partial layouts that cannot be
/// completed within the budget even with the cheapest remaining rates are dropped too.
/// The frontier is small in practice (bounded by the number of distinct costs; with
/// FLOP costs, which repeat across blocks, a few thousand at 30 blocks x 4 rates).
///
/// Tie-break, deterministic: minimum total error, then minimum total cost, then the
/// layout that gives up least softmax, compared block by block from block 0 in the
/// order softmax < R2 < R4 < ... < linear. (Ties are decided on the totals as summed
/// in block order.)
pub fn knapsack(input: &SelectionInput, budget: f64) -> Result<Selection, SelectError> {
    if budget.is_nan() {
        return Err(SelectError::InvalidInput("budget is NaN".into()));
    }
    let opts = options(input)?;
    let cheapest: Vec<f64> = opts
        .iter()
        .map(|l| l.iter().map(|o| o.cost).fold(f64::INFINITY, f64::min))
        .collect();
    let minimum = cheapest.iter().fold(0.0, |acc, &c| acc + c);
    if minimum > budget {
        return Err(SelectError::Infeasible { budget, minimum });
    }
    // Cheapest float completion of a prefix ending before block `next`; any other
    // completion costs at least this (monotone rounding), so the test is exact.
    let completable = |cost: f64, next: usize| cheapest[next..].iter().fold(cost, |acc, &c| acc + c) <= budget;

    let mut frontier = vec![State {
        cost: 0.0,
        error: 0.0,
        choice: Vec::new(),
    }];
    for (b, list) in opts.iter().enumerate() {
        let mut next: Vec<State> = Vec::with_capacity(frontier.len() * list.len());
        for s in &frontier {
            for (i, o) in list.iter().enumerate() {
                let cost = s.cost + o.cost;
                if !completable(cost, b + 1) {
                    continue;
                }
                let mut choice = Vec::with_capacity(opts.len());
                choice.extend_from_slice(&s.choice);
                choice.push(i);
                next.push(State {
                    cost,
                    error: s.error + o.error,
                    choice,
                });
            }
        }
        // Cost ascending, then error, then the preferred (lexicographically smaller)
        // layout; a sweep then keeps exactly the strict Pareto frontier, and for each
        // kept (cost, error) the preferred layout.
        next.sort_by(|a, b| {
            a.cost
                .total_cmp(&b.cost)
                .then(a.error.total_cmp(&b.error))
                .then_with(|| a.choice.cmp(&b.choice))
        });
        let mut best_error = f64::INFINITY;
        next.retain(|s| {
            if s.error < best_error {
                best_error = s.error;
                true
            } else {
                false
            }
        });
        frontier = next;
    }
    // Errors strictly decrease along the frontier: the last state has the least error
    // and, among layouts with that error, the least cost.
    let best = frontier
        .last()
        .expect("the cheapest layout is feasible, so the frontier is non-empty");
    Ok(evaluate(&opts, &best.choice))
}

/// The paper's homogeneous baseline: convert the `count` blocks with the lowest error
/// at `rate` (ties: lower block index), the rest stay softmax. Ignores cost.
pub fn homogeneous(input: &SelectionInput, rate: Rate, count: u32) -> Result<Selection, SelectError> {
    if !rate.is_valid() {
        return Err(SelectError::InvalidInput(format!("{rate}: a hybrid rate must be >= 2")));
    }
    let opts = options(input)?;
    let mut at_rate: Vec<(f64, usize, usize)> = opts
        .iter()
        .enumerate()
        .filter_map(|(b, l)| l.iter().position(|o| o.rate == rate).map(|i| (l[i].error, b, i)))
        .collect();
    if (at_rate.len() as u64) < u64::from(count) {
        return Err(SelectError::NotEnoughCandidates {
            rate,
            count,
            available: at_rate.len() as u32,
        });
    }
    at_rate.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // Index 0 is softmax in every block's sorted option list.
    let mut choice = vec![0usize; opts.len()];
    for &(_, b, i) in &at_rate[..count as usize] {
        choice[b] = i;
    }
    Ok(evaluate(&opts, &choice))
}

/// A given layout, e.g. "blocks 0..15 at R2": listed blocks take the listed rate,
/// unlisted blocks stay softmax; totals come from the table. Ignores any budget.
pub fn explicit(input: &SelectionInput, layout: &[(u32, Rate)]) -> Result<Selection, SelectError> {
    let opts = options(input)?;
    let mut choice = vec![0usize; opts.len()];
    let mut listed = vec![false; opts.len()];
    for &(block, rate) in layout {
        if block >= input.blocks {
            return Err(SelectError::InvalidInput(format!(
                "layout names block {block} but the model has {} blocks",
                input.blocks
            )));
        }
        let b = block as usize;
        if std::mem::replace(&mut listed[b], true) {
            return Err(SelectError::InvalidInput(format!(
                "layout lists block {block} more than once"
            )));
        }
        choice[b] = opts[b]
            .iter()
            .position(|o| o.rate == rate)
            .ok_or(SelectError::MissingCandidate { block, rate })?;
    }
    Ok(evaluate(&opts, &choice))
}

impl fmt::Display for Selection {
    /// Compact summary, e.g. `R2 x15, softmax x15 (error 1.25, cost 4.2e13)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut counts: Vec<(Rate, usize)> = Vec::new();
        for &r in &self.rates {
            match counts.iter_mut().find(|(q, _)| *q == r) {
                Some((_, n)) => *n += 1,
                None => counts.push((r, 1)),
            }
        }
        // Most aggressive rate first.
        counts.sort_by_key(|c| std::cmp::Reverse(c.0));
        let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{r} x{n}")).collect();
        write!(
            f,
            "{} (error {}, cost {:e})",
            if parts.is_empty() {
                "no blocks".to_string()
            } else {
                parts.join(", ")
            },
            self.total_error,
            self.total_cost
        )
    }
}

#[cfg(test)]
mod tests;
