//! Prompt sets: `n` training prompts and `m` held-out prompts, drawn deterministically from a
//! seed, such that every held-out prompt shows an attribute combination the training prompts
//! never do.
//!
//! A set first reserves [`PromptSetSpec::reserved_pairs`] (shape, colour) pairs, each with a
//! different colour, so every colour and every shape still occurs in training with other
//! partners. Training prompts never contain a reserved pair; every held-out prompt contains at
//! least one (a generalisation test: "a blue triangle" when training only saw blue squares and
//! discs, and triangles of other colours). Prompts are distinct within and across the splits.
//!
//! A prompt draws: its object count uniformly in 1..=3, distinct start cells, distinct colours,
//! and per object a uniform shape, direction and speed; its background is textured with
//! probability [`PromptSetSpec::textured_fraction`]. Three [`SeededRng`] streams, split from the
//! seed with [`prompt_seed`] (0: the reserved pairs, 1: training, 2: held-out), so asking for
//! more held-out prompts leaves the training prompts unchanged and the other way round.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::scene::{Background, Cell, Colour, Direction, GRID, MAX_OBJECTS, Prompt, SceneObject, Shape, Speed};
use crate::sampler::{SeededRng, prompt_seed};

/// What a prompt set is drawn from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSetSpec {
    pub seed: u64,
    pub train: usize,
    pub held_out: usize,
    /// (shape, colour) pairs kept out of training; 1 to 8 (one per colour at most).
    pub reserved_pairs: usize,
    /// Probability that a prompt has the textured background, in `[0, 1]`.
    pub textured_fraction: f64,
}

impl PromptSetSpec {
    /// `train` and `held_out` prompts from `seed` with 4 reserved pairs and half the
    /// backgrounds textured.
    pub fn new(seed: u64, train: usize, held_out: usize) -> Self {
        PromptSetSpec {
            seed,
            train,
            held_out,
            reserved_pairs: 4,
            textured_fraction: 0.5,
        }
    }
}

/// Why a prompt set could not be drawn.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromptSetError {
    #[error("reserved_pairs must be 1 to 8 (one per palette colour), got {0}")]
    ReservedPairs(usize),
    #[error("textured_fraction must be in [0, 1], got {0}")]
    TexturedFraction(f64),
    #[error("found only {found} distinct {split} prompts of {wanted} in {attempts} draws")]
    TooFewDistinct {
        split: Split,
        wanted: usize,
        found: usize,
        attempts: usize,
    },
}

/// Which part of a set a prompt belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    HeldOut,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::HeldOut => "held-out",
        })
    }
}

/// A drawn prompt set; serialisable so a job can carry the exact prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSet {
    pub spec: PromptSetSpec,
    /// (shape, colour) pairs that occur only in held-out prompts.
    pub reserved: Vec<(Shape, Colour)>,
    pub train: Vec<Prompt>,
    pub held_out: Vec<Prompt>,
}

impl PromptSet {
    pub fn generate(spec: &PromptSetSpec) -> Result<PromptSet, PromptSetError> {
        if spec.reserved_pairs == 0 || spec.reserved_pairs > Colour::ALL.len() {
            return Err(PromptSetError::ReservedPairs(spec.reserved_pairs));
        }
        if !(0.0..=1.0).contains(&spec.textured_fraction) {
            return Err(PromptSetError::TexturedFraction(spec.textured_fraction));
        }
        let mut rng = SeededRng::new(prompt_seed(spec.seed, 0));
        let colours = shuffled(&mut rng, &Colour::ALL);
        let reserved: Vec<(Shape, Colour)> = colours[..spec.reserved_pairs]
            .iter()
            .map(|&colour| (Shape::ALL[below(&mut rng, Shape::ALL.len())], colour))
            .collect();

        let mut seen = HashSet::new();
        let train = draw_distinct(Split::Train, spec, &reserved, &mut seen)?;
        let held_out = draw_distinct(Split::HeldOut, spec, &reserved, &mut seen)?;
        Ok(PromptSet {
            spec: spec.clone(),
            reserved,
            train,
            held_out,
        })
    }

    /// Whether `prompt` shows one of the reserved (shape, colour) pairs.
    pub fn has_reserved_pair(&self, prompt: &Prompt) -> bool {
        contains_pair(prompt, &self.reserved)
    }

    /// Every prompt with its split and its index in that split, training first.
    pub fn iter(&self) -> impl Iterator<Item = (Split, usize, &Prompt)> {
        let train = self.train.iter().enumerate().map(|(i, p)| (Split::Train, i, p));
        let held_out = self.held_out.iter().enumerate().map(|(i, p)| (Split::HeldOut, i, p));
        train.chain(held_out)
    }

    /// A human-readable listing: the reserved pairs, then every prompt, one a line.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        let pairs: Vec<String> = self
            .reserved
            .iter()
            .map(|(shape, colour)| format!("{} {}", colour.name(), shape.name()))
            .collect();
        let _ = writeln!(
            text,
            "seed {}; held out from training: {}",
            self.spec.seed,
            pairs.join(", ")
        );
        let _ = writeln!(
            text,
            "train: {} prompts; held-out: {} prompts",
            self.train.len(),
            self.held_out.len()
        );
        for (split, index, prompt) in self.iter() {
            let _ = writeln!(text, "{split} {index}: {prompt}");
        }
        text
    }
}

fn contains_pair(prompt: &Prompt, pairs: &[(Shape, Colour)]) -> bool {
    prompt.objects().iter().any(|o| pairs.contains(&(o.shape, o.colour)))
}

/// Draws `spec.train` or `spec.held_out` prompts not yet in `seen`, adding them to it.
fn draw_distinct(
    split: Split,
    spec: &PromptSetSpec,
    reserved: &[(Shape, Colour)],
    seen: &mut HashSet<Prompt>,
) -> Result<Vec<Prompt>, PromptSetError> {
    let (stream, wanted) = match split {
        Split::Train => (1, spec.train),
        Split::HeldOut => (2, spec.held_out),
    };
    let mut rng = SeededRng::new(prompt_seed(spec.seed, stream));
    // Generous: duplicates are rare unless the request nears the number of possible prompts.
    let attempts = 100 * wanted + 1000;
    let mut prompts = Vec::with_capacity(wanted);
    for _ in 0..attempts {
        if prompts.len() == wanted {
            break;
        }
        let prompt = draw_prompt(&mut rng, split, spec.textured_fraction, reserved);
        if seen.insert(prompt.clone()) {
            prompts.push(prompt);
        }
    }
    if prompts.len() < wanted {
        return Err(PromptSetError::TooFewDistinct {
            split,
            wanted,
            found: prompts.len(),
            attempts,
        });
    }
    Ok(prompts)
}

/// One prompt. Training: shapes are redrawn until no object shows a reserved pair (each
/// reserved colour has exactly one reserved shape, so two shapes remain). Held-out: one object,
/// at a random place in the list, takes a random reserved pair; the others are free.
fn draw_prompt(rng: &mut SeededRng, split: Split, textured_fraction: f64, reserved: &[(Shape, Colour)]) -> Prompt {
    let count = 1 + below(rng, MAX_OBJECTS);
    let background = if rng.uniform_open() < textured_fraction {
        Background::Textured
    } else {
        Background::Plain
    };
    let cells = shuffled(rng, &(0..usize::from(GRID * GRID)).collect::<Vec<_>>());
    let forced = match split {
        Split::Train => None,
        Split::HeldOut => Some((below(rng, count), reserved[below(rng, reserved.len())])),
    };
    let mut colours: Vec<Colour> = shuffled(rng, &Colour::ALL);
    if let Some((_, (_, forced_colour))) = forced {
        colours.retain(|&c| c != forced_colour);
    }
    let mut free_colours = colours.into_iter();
    let objects = (0..count)
        .map(|k| {
            let cell = Cell::from_index(cells[k]).expect("cells are drawn from the grid");
            let direction = Direction::ALL[below(rng, Direction::ALL.len())];
            let speed = Speed::ALL[below(rng, Speed::ALL.len())];
            let (shape, colour) = match forced {
                Some((at, pair)) if at == k => pair,
                _ => {
                    let colour = free_colours.next().expect("3 objects, 8 colours");
                    let mut shape = Shape::ALL[below(rng, Shape::ALL.len())];
                    while split == Split::Train && reserved.contains(&(shape, colour)) {
                        shape = Shape::ALL[below(rng, Shape::ALL.len())];
                    }
                    (shape, colour)
                }
            };
            SceneObject {
                shape,
                colour,
                cell,
                direction,
                speed,
            }
        })
        .collect();
    Prompt::new(objects, background).expect("distinct cells and colours by construction")
}

/// Uniform in `0..n` (`n > 0`) by a 128-bit multiply: no modulo bias worth the name.
fn below(rng: &mut SeededRng, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// A Fisher-Yates shuffle of a copy of `items`.
fn shuffled<T: Copy>(rng: &mut SeededRng, items: &[T]) -> Vec<T> {
    let mut out = items.to_vec();
    for i in (1..out.len()).rev() {
        out.swap(i, below(rng, i + 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_deterministic_and_streams_are_independent() {
        let spec = PromptSetSpec::new(7, 200, 50);
        let set = PromptSet::generate(&spec).unwrap();
        assert_eq!(set, PromptSet::generate(&spec).unwrap());
        assert_eq!((set.train.len(), set.held_out.len()), (200, 50));
        // More held-out prompts leave the training prompts alone.
        let more = PromptSet::generate(&PromptSetSpec {
            held_out: 80,
            ..spec.clone()
        })
        .unwrap();
        assert_eq!(more.train, set.train);
        assert_eq!(more.held_out[..50], set.held_out[..]);
        // Another seed, other prompts.
        let other = PromptSet::generate(&PromptSetSpec { seed: 8, ..spec }).unwrap();
        assert_ne!(other.train, set.train);
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(serde_json::from_str::<PromptSet>(&json).unwrap(), set);
    }

    #[test]
    fn held_out_prompts_and_only_they_show_reserved_pairs() {
        for seed in 0..5 {
            let set = PromptSet::generate(&PromptSetSpec::new(seed, 300, 100)).unwrap();
            assert_eq!(set.reserved.len(), 4);
            let colours: HashSet<Colour> = set.reserved.iter().map(|&(_, c)| c).collect();
            assert_eq!(colours.len(), 4, "one reserved pair per colour");
            assert!(set.train.iter().all(|p| !set.has_reserved_pair(p)));
            assert!(set.held_out.iter().all(|p| set.has_reserved_pair(p)));
            // Every reserved pair is used, and its shape and colour still occur in training.
            for &(shape, colour) in &set.reserved {
                let pair_used = set.held_out.iter().any(|p| contains_pair(p, &[(shape, colour)]));
                let objects = || set.train.iter().flat_map(|p| p.objects());
                assert!(pair_used, "{shape:?} {colour:?} never held out");
                assert!(objects().any(|o| o.shape == shape));
                assert!(objects().any(|o| o.colour == colour));
            }
            let distinct: HashSet<&Prompt> = set.iter().map(|(_, _, p)| p).collect();
            assert_eq!(distinct.len(), 400);
        }
    }

    #[test]
    fn attributes_and_backgrounds_are_all_drawn() {
        let set = PromptSet::generate(&PromptSetSpec::new(3, 500, 10)).unwrap();
        let objects: Vec<&SceneObject> = set.train.iter().flat_map(|p| p.objects()).collect();
        let counts: HashSet<usize> = set.train.iter().map(|p| p.objects().len()).collect();
        assert_eq!(counts.len(), MAX_OBJECTS);
        assert_eq!(objects.iter().map(|o| o.cell).collect::<HashSet<_>>().len(), 16);
        assert_eq!(objects.iter().map(|o| o.direction).collect::<HashSet<_>>().len(), 8);
        assert_eq!(objects.iter().map(|o| o.speed).collect::<HashSet<_>>().len(), 3);
        let textured = set
            .train
            .iter()
            .filter(|p| p.background() == Background::Textured)
            .count();
        assert!((150..350).contains(&textured), "{textured} of 500 textured");
        let plain = PromptSet::generate(&PromptSetSpec {
            textured_fraction: 0.0,
            ..set.spec.clone()
        })
        .unwrap();
        assert!(plain.iter().all(|(_, _, p)| p.background() == Background::Plain));
        let text = set.describe();
        assert!(text.contains("held-out 9: "), "{text}");
        assert_eq!(text.lines().count(), 2 + 510);
    }

    #[test]
    fn bad_specs_are_refused() {
        let spec = PromptSetSpec::new(1, 1, 1);
        let zero = PromptSetSpec {
            reserved_pairs: 0,
            ..spec.clone()
        };
        assert_eq!(PromptSet::generate(&zero), Err(PromptSetError::ReservedPairs(0)));
        let fraction = PromptSetSpec {
            textured_fraction: 1.5,
            ..spec
        };
        assert_eq!(
            PromptSet::generate(&fraction),
            Err(PromptSetError::TexturedFraction(1.5))
        );
    }
}
