use super::*;

#[test]
fn layouts_in_words_group_blocks_by_rate_and_count_softmax() {
    let chosen = [(0, Rate::Hybrid(2)), (3, Rate::Hybrid(2)), (5, Rate::Linear)];
    assert_eq!(
        describe_layout(&chosen, Some(30)),
        "blocks 0,3 at R2; block 5 at linear; 27 softmax"
    );
    let full = [
        (0, Rate::Softmax),
        (1, Rate::Hybrid(4)),
        (2, Rate::Softmax),
        (3, Rate::Linear),
        (4, Rate::Linear),
    ];
    let words = "block 1 at R4; blocks 3,4 at linear; 2 softmax";
    assert_eq!(describe_layout(&full, Some(5)), words);
    assert_eq!(describe_layout(&full, None), words);
    assert_eq!(
        describe_layout(&[(0, Rate::Softmax), (1, Rate::Softmax)], Some(2)),
        "2 softmax"
    );
    assert_eq!(describe_layout(&[(0, Rate::Linear)], Some(1)), "block 0 at linear");
    assert_eq!(describe_layout(&[], None), "0 softmax");
}

/// Tiny deterministic generator (PCG-style LCG, high bits); no rand crate.
struct Lcg(u64);

impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
    fn unit(&mut self) -> f64 {
        f64::from(self.next_u32()) / f64::from(1u32 << 31)
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next_u32() % n
    }
}

const RATES: [Rate; 3] = [Rate::Hybrid(2), Rate::Hybrid(4), Rate::Linear];

/// A random table: per block softmax cost and a random subset of RATES. With
/// `integers`, small integer values so that exact ties are frequent.
fn random_input(g: &mut Lcg, blocks: u32, integers: bool) -> SelectionInput {
    let v = |g: &mut Lcg, scale: f64| {
        if integers {
            f64::from(g.below(4))
        } else {
            g.unit() * scale
        }
    };
    let mut softmax_cost = Vec::new();
    let mut candidates = Vec::new();
    for b in 0..blocks {
        softmax_cost.push(if integers {
            f64::from(3 + g.below(3))
        } else {
            1.0 + g.unit()
        });
        for &rate in &RATES {
            if g.below(5) == 0 {
                continue; // missing candidate
            }
            let error = v(g, 1.0);
            let cost = v(g, 1.2);
            candidates.push(Candidate {
                block: b,
                rate,
                error,
                cost,
            });
        }
    }
    // Shuffle the order the caller lists candidates in; results must not depend on it.
    for i in (1..candidates.len()).rev() {
        let j = g.below(i as u32 + 1) as usize;
        candidates.swap(i, j);
    }
    SelectionInput {
        blocks,
        softmax_cost,
        candidates,
    }
}

/// Every layout, by brute force, with the documented tie-break.
fn brute_force(input: &SelectionInput, budget: f64) -> Option<Selection> {
    let opts = options(input).unwrap();
    let mut choice = vec![0usize; opts.len()];
    let mut best: Option<(Selection, Vec<usize>)> = None;
    loop {
        let s = evaluate(&opts, &choice);
        if s.total_cost <= budget {
            let better = match &best {
                None => true,
                Some((b, bc)) => s
                    .total_error
                    .total_cmp(&b.total_error)
                    .then(s.total_cost.total_cmp(&b.total_cost))
                    .then_with(|| choice.cmp(bc))
                    .is_lt(),
            };
            if better {
                best = Some((s, choice.clone()));
            }
        }
        // Odometer increment, last block fastest.
        let mut k = opts.len();
        loop {
            if k == 0 {
                return best.map(|b| b.0);
            }
            k -= 1;
            choice[k] += 1;
            if choice[k] < opts[k].len() {
                break;
            }
            choice[k] = 0;
        }
    }
}

fn cand(block: u32, rate: Rate, error: f64, cost: f64) -> Candidate {
    Candidate {
        block,
        rate,
        error,
        cost,
    }
}

/// 4 blocks, softmax cost 10 each; R2 cost 6, linear cost 1.
fn small() -> SelectionInput {
    SelectionInput {
        blocks: 4,
        softmax_cost: vec![10.0; 4],
        candidates: vec![
            cand(0, Rate::Hybrid(2), 0.6, 6.0),
            cand(1, Rate::Hybrid(2), 0.1, 6.0),
            cand(2, Rate::Hybrid(2), 0.3, 6.0),
            cand(3, Rate::Hybrid(2), 0.1, 6.0),
            cand(0, Rate::Linear, 2.0, 1.0),
            cand(1, Rate::Linear, 0.9, 1.0),
            cand(2, Rate::Linear, 1.5, 1.0),
        ],
    }
}

#[test]
fn knapsack_matches_brute_force_random_reals() {
    let mut g = Lcg(7);
    let mut checked = 0;
    for _ in 0..400 {
        let blocks = 1 + g.below(6);
        let input = random_input(&mut g, blocks, false);
        let opts = options(&input).unwrap();
        let min: f64 = opts
            .iter()
            .map(|l| l.iter().map(|o| o.cost).fold(f64::INFINITY, f64::min))
            .sum();
        let total = input.softmax_total();
        for _ in 0..5 {
            let budget = min * 0.95 + g.unit() * (total * 1.05 - min * 0.95);
            match (knapsack(&input, budget), brute_force(&input, budget)) {
                (Ok(k), Some(b)) => {
                    assert_eq!(k.total_error, b.total_error, "{input:?} budget {budget}");
                    assert_eq!(k, b, "{input:?} budget {budget}");
                    assert!(k.total_cost <= budget);
                    checked += 1;
                }
                (Err(SelectError::Infeasible { .. }), None) => {}
                (k, b) => {
                    panic!("knapsack {k:?} vs brute force {b:?} for {input:?} at {budget}")
                }
            }
        }
    }
    assert!(checked > 1000, "{checked}");
}

#[test]
fn knapsack_matches_brute_force_with_ties() {
    // Integer values: many exact ties, so the full tie-break is exercised.
    let mut g = Lcg(12345);
    for _ in 0..400 {
        let blocks = g.below(7);
        let input = random_input(&mut g, blocks, true);
        let total = input.softmax_total();
        for budget in 0..=(total as u32 + 1) {
            let budget = f64::from(budget);
            match (knapsack(&input, budget), brute_force(&input, budget)) {
                (Ok(k), Some(b)) => assert_eq!(k, b, "{input:?} budget {budget}"),
                (Err(SelectError::Infeasible { .. }), None) => {}
                (k, b) => {
                    panic!("knapsack {k:?} vs brute force {b:?} for {input:?} at {budget}")
                }
            }
        }
    }
}

#[test]
fn budget_equal_to_a_layout_cost_is_feasible() {
    let mut g = Lcg(99);
    for _ in 0..200 {
        let blocks = 1 + g.below(6);
        let input = random_input(&mut g, blocks, false);
        let opts = options(&input).unwrap();
        let choice: Vec<usize> = opts.iter().map(|l| g.below(l.len() as u32) as usize).collect();
        let layout = evaluate(&opts, &choice);
        let k = knapsack(&input, layout.total_cost).expect("exactly affordable");
        assert!(k.total_cost <= layout.total_cost);
        assert!(k.total_error <= layout.total_error);
        assert_eq!(Some(k), brute_force(&input, layout.total_cost));
    }
    // And the cheapest layout exactly.
    let input = small();
    let min = 1.0 + 1.0 + 1.0 + 6.0;
    let k = knapsack(&input, min).unwrap();
    assert_eq!(k.rates, vec![Rate::Linear, Rate::Linear, Rate::Linear, Rate::Hybrid(2)]);
    assert_eq!(k.total_cost, min);
}

#[test]
fn knapsack_small_by_hand() {
    let input = small();
    // All softmax = 40: nothing to give up.
    let k = knapsack(&input, 40.0).unwrap();
    assert_eq!(k.rates, vec![Rate::Softmax; 4]);
    assert_eq!((k.total_error, k.total_cost), (0.0, 40.0));
    // 36 allows one R2: the cheapest error is 0.1 at blocks 1 and 3; tie-break
    // keeps softmax earlier, so block 3 converts.
    let k = knapsack(&input, 36.0).unwrap();
    assert_eq!(
        k.rates,
        vec![Rate::Softmax, Rate::Softmax, Rate::Softmax, Rate::Hybrid(2)]
    );
    assert_eq!(k.total_error, 0.1);
    // 32: two R2 (blocks 1, 3) for 0.2.
    let k = knapsack(&input, 32.0).unwrap();
    assert_eq!(k.converted(), vec![(1, Rate::Hybrid(2)), (3, Rate::Hybrid(2))]);
    assert_eq!(k.total_cost, 32.0);
    // 27: R2 on 1, 3 plus linear somewhere (cost 27): linear on block 1 (0.9) +
    // R2 on 2, 3 (0.4) = 1.3 at cost 23, vs R2 x3 on 1,2,3 (0.5) at 28 (too
    // expensive), vs linear 1 (0.9) + R2 3 (0.1) at 27 = 1.0.
    let k = knapsack(&input, 27.0).unwrap();
    assert_eq!(k.converted(), vec![(1, Rate::Linear), (3, Rate::Hybrid(2))]);
    assert!((k.total_error - 1.0).abs() < 1e-12);
    assert_eq!(k.total_cost, 27.0);
}

#[test]
fn infinite_budget_is_all_softmax() {
    let k = knapsack(&small(), f64::INFINITY).unwrap();
    assert_eq!(k.rates, vec![Rate::Softmax; 4]);
}

#[test]
fn all_softmax_budget_gives_all_softmax() {
    let mut g = Lcg(5);
    for _ in 0..50 {
        let blocks = g.below(10);
        let input = random_input(&mut g, blocks, false);
        let k = knapsack(&input, input.softmax_total()).unwrap();
        // Every candidate with zero error could tie; random reals make that
        // impossible here, so the answer is all softmax with error 0.
        assert_eq!(k.rates, vec![Rate::Softmax; blocks as usize]);
        assert_eq!(k.total_error, 0.0);
        assert_eq!(k.total_cost, input.softmax_total());
    }
}

#[test]
fn zero_error_candidate_prefers_cheaper_then_softmax() {
    // A free-lunch candidate (error 0, cheaper) wins on cost at equal error ...
    let input = SelectionInput {
        blocks: 1,
        softmax_cost: vec![10.0],
        candidates: vec![cand(0, Rate::Hybrid(2), 0.0, 5.0)],
    };
    assert_eq!(knapsack(&input, 10.0).unwrap().rates, vec![Rate::Hybrid(2)]);
    // ... and at equal error and equal cost softmax is kept.
    let input = SelectionInput {
        blocks: 1,
        softmax_cost: vec![10.0],
        candidates: vec![cand(0, Rate::Hybrid(2), 0.0, 10.0)],
    };
    assert_eq!(knapsack(&input, 10.0).unwrap().rates, vec![Rate::Softmax]);
}

#[test]
fn zero_blocks() {
    let input = SelectionInput {
        blocks: 0,
        softmax_cost: vec![],
        candidates: vec![],
    };
    let k = knapsack(&input, 0.0).unwrap();
    assert!(k.rates.is_empty());
    assert_eq!((k.total_error, k.total_cost), (0.0, 0.0));
    assert!(matches!(
        knapsack(&input, -1.0),
        Err(SelectError::Infeasible { minimum, .. }) if minimum == 0.0
    ));
    assert_eq!(homogeneous(&input, Rate::Hybrid(2), 0).unwrap().rates, vec![]);
    assert_eq!(explicit(&input, &[]).unwrap().total_cost, 0.0);
    assert_eq!(k.to_string(), "no blocks (error 0, cost 0e0)");
}

#[test]
fn infeasible_budget() {
    let input = small();
    let e = knapsack(&input, 8.5).unwrap_err();
    assert_eq!(
        e,
        SelectError::Infeasible {
            budget: 8.5,
            minimum: 9.0
        }
    );
    let msg = e.to_string();
    assert!(msg.contains("budget 8.5 is infeasible"), "{msg}");
    assert!(msg.contains("costs 9"), "{msg}");
}

#[test]
fn invalid_inputs() {
    let bad = |f: &dyn Fn(&mut SelectionInput)| {
        let mut input = small();
        f(&mut input);
        match knapsack(&input, 100.0) {
            Err(SelectError::InvalidInput(m)) => m,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    };
    assert!(bad(&|i| i.candidates[0].error = f64::NAN).contains("error is NaN"));
    assert!(bad(&|i| i.candidates[0].error = -0.1).contains("non-negative"));
    assert!(bad(&|i| i.candidates[0].cost = f64::NAN).contains("cost is NaN"));
    assert!(bad(&|i| i.candidates[0].cost = -1.0).contains("cost is -1"));
    assert!(bad(&|i| i.candidates[0].cost = f64::INFINITY).contains("finite"));
    assert!(bad(&|i| i.softmax_cost[2] = f64::NAN).contains("softmax cost of block 2"));
    assert!(
        bad(&|i| {
            i.softmax_cost.pop();
        })
        .contains("3 softmax costs for 4 blocks")
    );
    assert!(bad(&|i| i.candidates.push(cand(4, Rate::Linear, 0.0, 0.0))).contains("block out of range"));
    let m = bad(&|i| i.candidates.push(cand(1, Rate::Hybrid(2), 0.0, 0.0)));
    assert!(m.contains("(block 1, R2): duplicate"), "{m}");
    assert!(bad(&|i| i.candidates.push(cand(1, Rate::Softmax, 0.0, 10.0))).contains("implicit"));
    assert!(bad(&|i| i.candidates.push(cand(1, Rate::Hybrid(1), 0.0, 1.0))).contains(">= 2"));
    assert!(matches!(
        knapsack(&small(), f64::NAN),
        Err(SelectError::InvalidInput(_))
    ));
    // The same validation guards the baselines.
    let mut input = small();
    input.candidates[0].error = f64::NAN;
    assert!(matches!(
        homogeneous(&input, Rate::Hybrid(2), 1),
        Err(SelectError::InvalidInput(_))
    ));
    assert!(matches!(explicit(&input, &[]), Err(SelectError::InvalidInput(_))));
}

#[test]
fn homogeneous_picks_lowest_error_blocks() {
    let input = small();
    // R2 errors: 0.6, 0.1, 0.3, 0.1 -> two lowest are blocks 1 and 3.
    let h = homogeneous(&input, Rate::Hybrid(2), 2).unwrap();
    assert_eq!(h.converted(), vec![(1, Rate::Hybrid(2)), (3, Rate::Hybrid(2))]);
    assert!((h.total_error - 0.2).abs() < 1e-12);
    assert_eq!(h.total_cost, 32.0);
    // Tie at 0.1 broken by lower block index.
    let h = homogeneous(&input, Rate::Hybrid(2), 1).unwrap();
    assert_eq!(h.converted(), vec![(1, Rate::Hybrid(2))]);
    let h = homogeneous(&input, Rate::Hybrid(2), 3).unwrap();
    assert_eq!(h.converted().iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    let h = homogeneous(&input, Rate::Linear, 0).unwrap();
    assert_eq!(h.rates, vec![Rate::Softmax; 4]);
    assert_eq!(h.total_cost, 40.0);
    let h = homogeneous(&input, Rate::Softmax, 4).unwrap();
    assert_eq!(h.rates, vec![Rate::Softmax; 4]);
}

#[test]
fn homogeneous_not_enough_candidates() {
    let input = small();
    let e = homogeneous(&input, Rate::Linear, 4).unwrap_err();
    assert_eq!(
        e,
        SelectError::NotEnoughCandidates {
            rate: Rate::Linear,
            count: 4,
            available: 3
        }
    );
    assert!(
        e.to_string().contains("only 3 blocks have a candidate at linear"),
        "{e}"
    );
    assert!(matches!(
        homogeneous(&input, Rate::Hybrid(8), 1),
        Err(SelectError::NotEnoughCandidates { available: 0, .. })
    ));
    assert!(homogeneous(&input, Rate::Softmax, 5).is_err());
    assert!(matches!(
        homogeneous(&input, Rate::Hybrid(0), 1),
        Err(SelectError::InvalidInput(_))
    ));
}

#[test]
fn knapsack_beats_or_ties_homogeneous_at_its_cost() {
    let mut g = Lcg(2024);
    for _ in 0..100 {
        let input = random_input(&mut g, 8, false);
        for &rate in &RATES {
            for count in 0..=8 {
                let Ok(h) = homogeneous(&input, rate, count) else {
                    continue;
                };
                let k = knapsack(&input, h.total_cost).unwrap();
                assert!(k.total_error <= h.total_error);
            }
        }
    }
}

#[test]
fn explicit_layouts() {
    let input = small();
    let e = explicit(&input, &[(0, Rate::Linear), (3, Rate::Hybrid(2))]).unwrap();
    assert_eq!(
        e.rates,
        vec![Rate::Linear, Rate::Softmax, Rate::Softmax, Rate::Hybrid(2)]
    );
    assert!((e.total_error - 2.1).abs() < 1e-12);
    assert_eq!(e.total_cost, 1.0 + 10.0 + 10.0 + 6.0);
    // Softmax may be listed explicitly; it is always available.
    let s = explicit(&input, &[(2, Rate::Softmax)]).unwrap();
    assert_eq!(s.rates, vec![Rate::Softmax; 4]);
    // The same layout evaluates to the same totals as the knapsack reports.
    let k = knapsack(&input, 27.0).unwrap();
    assert_eq!(explicit(&input, &k.converted()).unwrap(), k);
}

#[test]
fn explicit_errors() {
    let input = small();
    let e = explicit(&input, &[(3, Rate::Linear)]).unwrap_err();
    assert_eq!(
        e,
        SelectError::MissingCandidate {
            block: 3,
            rate: Rate::Linear
        }
    );
    assert_eq!(e.to_string(), "block 3 at linear is not in the stage-1 table");
    let e = explicit(&input, &[(4, Rate::Hybrid(2))]).unwrap_err();
    assert!(e.to_string().contains("block 4 but the model has 4 blocks"), "{e}");
    let e = explicit(&input, &[(1, Rate::Hybrid(2)), (1, Rate::Linear)]).unwrap_err();
    assert!(e.to_string().contains("block 1 more than once"), "{e}");
}

#[test]
fn realistic_30_blocks_is_fast_and_sane() {
    // 30 blocks x {R2, R4, R8, R16, R32, linear}, FLOP-like costs with per-block noise (as
    // measured times would have), errors growing with the rate. Brute force is
    // out of reach (7^30); check budget monotonicity and feasibility instead.
    use crate::cost::{FeatureMapShape, ModelShape, attention_flops};
    let shape = ModelShape::wan21_1_3b();
    let fmap = FeatureMapShape::paper_default();
    let n = 32_760;
    let mut g = Lcg(31);
    let rates = [
        Rate::Hybrid(2),
        Rate::Hybrid(4),
        Rate::Hybrid(8),
        Rate::Hybrid(16),
        Rate::Hybrid(32),
        Rate::Linear,
    ];
    let sm = attention_flops(&shape, &fmap, n, Rate::Softmax);
    let mut input = SelectionInput {
        blocks: 30,
        softmax_cost: vec![],
        candidates: vec![],
    };
    for b in 0..30 {
        input.softmax_cost.push(sm * (1.0 + 0.02 * g.unit()));
        let base = 0.01 + g.unit();
        for (k, &rate) in rates.iter().enumerate() {
            let cost = attention_flops(&shape, &fmap, n, rate) * (1.0 + 0.02 * g.unit());
            let error = base * (k as f64 + 1.0) * (1.0 + 0.3 * g.unit());
            input.candidates.push(cand(b, rate, error, cost));
        }
    }
    let total = input.softmax_total();
    let mut last_error = f64::INFINITY;
    let mut chosen_rates = std::collections::BTreeSet::new();
    for step in 1..=20 {
        let budget = total * f64::from(step) / 20.0;
        let Ok(k) = knapsack(&input, budget) else {
            assert!(step == 1, "only the smallest budget may be infeasible");
            continue;
        };
        assert!(k.total_cost <= budget);
        assert!(k.total_error <= last_error, "more budget never hurts");
        last_error = k.total_error;
        chosen_rates.extend(k.rates.iter().copied());
        // It is at least as good as every homogeneous layout that fits.
        for &rate in &rates {
            for count in 0..=30 {
                let h = homogeneous(&input, rate, count).unwrap();
                if h.total_cost <= budget {
                    assert!(k.total_error <= h.total_error);
                }
            }
        }
    }
    assert_eq!(last_error, 0.0);
    // The cheap high rates are real choices: some budget picks each of R16 and R32.
    assert!(
        chosen_rates.contains(&Rate::Hybrid(16)) && chosen_rates.contains(&Rate::Hybrid(32)),
        "{chosen_rates:?}"
    );
}

#[test]
fn selection_serde_and_display() {
    let k = knapsack(&small(), 27.0).unwrap();
    let j = serde_json::to_string(&k).unwrap();
    assert!(j.contains(r#""rates":[1,"linear",1,2]"#), "{j}");
    assert_eq!(serde_json::from_str::<Selection>(&j).unwrap(), k);
    assert_eq!(k.to_string(), "linear x1, R2 x1, softmax x2 (error 1, cost 2.7e1)");
    let input = small();
    let j = serde_json::to_string(&input).unwrap();
    assert_eq!(serde_json::from_str::<SelectionInput>(&j).unwrap(), input);
}
