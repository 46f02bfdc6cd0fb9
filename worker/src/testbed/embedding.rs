//! Prompt embeddings without a text encoder: a [`Prompt`] becomes the `[L, text_dim]` float32
//! tensor the teacher's cross-attention reads, through a fixed seeded code book.
//!
//! Tokens, in order: the object count, the background, then for each object (prompt order) its
//! shape, colour, start cell, direction and speed; zero rows pad to `L`. At most
//! [`MAX_TOKENS`] = 2 + 5 x 3 = 17 rows are used. An attribute token is
//! `(code(kind, value) + code(object, k)) / sqrt(2)`, so the same colour on object 0 and on
//! object 1 are different vectors and every attribute is bound to its object; the count and
//! background tokens are `code(kind, value)` alone. Every code vector has root-mean-square
//! exactly 1, so tokens are unit-RMS up to the small overlap of two independent vectors.
//!
//! Code vector `(kind, value)` is `SeededRng::new(prompt_seed(CODE_BOOK_SEED, 256 * kind +
//! value)).normal_f32(text_dim)`, rescaled to unit RMS; kinds are numbered count 0, background 1,
//! shape 2, colour 3, cell 4, direction 5, speed 6, object index 7, values as the attribute
//! enums list them (count: objects - 1; cell: `row * 4 + col`). One stream per vector, so the
//! book is the same whatever order it is built in, and a new kind would not move the others.

use anyhow::{Result, ensure};
use tch::Tensor;

use super::scene::{Background, Cell, Colour, Direction, GRID, MAX_OBJECTS, Prompt, Shape, Speed};
use crate::sampler::{SeededRng, prompt_seed};

/// Seed of the code book; part of the generator's description.
pub const CODE_BOOK_SEED: u64 = 0xC0DE_B00C_7E57_BED0;

/// Attribute tokens per object: shape, colour, cell, direction, speed.
pub const TOKENS_PER_OBJECT: usize = 5;

/// Rows a prompt can use: count, background, and five per object.
pub const MAX_TOKENS: usize = 2 + TOKENS_PER_OBJECT * MAX_OBJECTS;

/// What a code vector stands for; the discriminant is the kind's number in the stream seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeKind {
    Count = 0,
    Background = 1,
    Shape = 2,
    Colour = 3,
    Cell = 4,
    Direction = 5,
    Speed = 6,
    ObjectIndex = 7,
}

impl CodeKind {
    const ALL: [CodeKind; 8] = [
        CodeKind::Count,
        CodeKind::Background,
        CodeKind::Shape,
        CodeKind::Colour,
        CodeKind::Cell,
        CodeKind::Direction,
        CodeKind::Speed,
        CodeKind::ObjectIndex,
    ];

    fn values(self) -> usize {
        match self {
            CodeKind::Count | CodeKind::ObjectIndex => MAX_OBJECTS,
            CodeKind::Background => Background::ALL.len(),
            CodeKind::Shape => Shape::ALL.len(),
            CodeKind::Colour => Colour::ALL.len(),
            CodeKind::Cell => usize::from(GRID * GRID),
            CodeKind::Direction => Direction::ALL.len(),
            CodeKind::Speed => Speed::ALL.len(),
        }
    }
}

/// The code book for one text length and width.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeBook {
    text_len: usize,
    text_dim: usize,
    /// `vectors[kind][value]`, each `text_dim` long with unit RMS.
    vectors: Vec<Vec<Vec<f32>>>,
}

impl CodeBook {
    /// `text_len` is the padded length L (the spec's text length, at least [`MAX_TOKENS`]);
    /// `text_dim` the teacher's `text_dim`.
    pub fn new(text_len: usize, text_dim: usize) -> Result<Self> {
        ensure!(
            text_len >= MAX_TOKENS,
            "text length {text_len} is below the {MAX_TOKENS} tokens a prompt may use"
        );
        ensure!(text_dim > 0, "text_dim must be positive");
        let vectors = CodeKind::ALL
            .iter()
            .map(|&kind| {
                (0..kind.values())
                    .map(|value| code_vector(kind, value, text_dim))
                    .collect()
            })
            .collect();
        Ok(CodeBook {
            text_len,
            text_dim,
            vectors,
        })
    }

    pub fn text_len(&self) -> usize {
        self.text_len
    }

    pub fn text_dim(&self) -> usize {
        self.text_dim
    }

    fn code(&self, kind: CodeKind, value: usize) -> &[f32] {
        &self.vectors[kind as usize][value]
    }

    /// The embedding of `prompt` as values `[L, text_dim]`, row-major.
    pub fn embed_values(&self, prompt: &Prompt) -> Vec<f32> {
        let mut rows = Vec::with_capacity(self.text_len * self.text_dim);
        rows.extend_from_slice(self.code(CodeKind::Count, prompt.objects().len() - 1));
        rows.extend_from_slice(self.code(CodeKind::Background, prompt.background() as usize));
        let bind = std::f32::consts::FRAC_1_SQRT_2;
        for (k, object) in prompt.objects().iter().enumerate() {
            let attributes = [
                (CodeKind::Shape, object.shape as usize),
                (CodeKind::Colour, object.colour as usize),
                (CodeKind::Cell, Cell::index(object.cell)),
                (CodeKind::Direction, object.direction as usize),
                (CodeKind::Speed, object.speed as usize),
            ];
            let index = self.code(CodeKind::ObjectIndex, k);
            for (kind, value) in attributes {
                rows.extend(self.code(kind, value).iter().zip(index).map(|(a, b)| (a + b) * bind));
            }
        }
        rows.resize(self.text_len * self.text_dim, 0.0);
        rows
    }

    /// The embedding of `prompt`: a float32 CPU tensor `[L, text_dim]`.
    pub fn embed(&self, prompt: &Prompt) -> Tensor {
        Tensor::from_slice(&self.embed_values(prompt)).view([self.text_len as i64, self.text_dim as i64])
    }

    /// The embeddings of `prompts`: a float32 CPU tensor `[B, L, text_dim]`.
    pub fn embed_batch(&self, prompts: &[Prompt]) -> Tensor {
        let values: Vec<f32> = prompts.iter().flat_map(|p| self.embed_values(p)).collect();
        Tensor::from_slice(&values).view([prompts.len() as i64, self.text_len as i64, self.text_dim as i64])
    }
}

/// One code vector: its own stream, standard normal, rescaled to RMS exactly 1 (in f64).
fn code_vector(kind: CodeKind, value: usize, text_dim: usize) -> Vec<f32> {
    let stream = 256 * kind as u64 + value as u64;
    let raw = SeededRng::new(prompt_seed(CODE_BOOK_SEED, stream)).normal_f32(text_dim);
    let rms = (raw.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / text_dim as f64).sqrt();
    raw.iter().map(|&v| (f64::from(v) / rms) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::prompts::{PromptSet, PromptSetSpec};
    use crate::testbed::scene::SceneObject;

    fn prompt(objects: &[(Shape, Colour, u8)]) -> Prompt {
        let objects = objects
            .iter()
            .map(|&(shape, colour, cell)| SceneObject {
                shape,
                colour,
                cell: Cell::from_index(usize::from(cell)).unwrap(),
                direction: Direction::E,
                speed: Speed::Slow,
            })
            .collect();
        Prompt::new(objects, Background::Plain).unwrap()
    }

    #[test]
    fn embeddings_have_the_shape_and_padding() {
        let book = CodeBook::new(24, 16).unwrap();
        let one = prompt(&[(Shape::Disc, Colour::Red, 0)]);
        let three = prompt(&[
            (Shape::Disc, Colour::Red, 0),
            (Shape::Square, Colour::Blue, 5),
            (Shape::Triangle, Colour::White, 9),
        ]);
        for (p, used) in [(&one, 2 + 5), (&three, MAX_TOKENS)] {
            let tensor = book.embed(p);
            assert_eq!(tensor.size(), vec![24, 16]);
            assert_eq!(tensor.kind(), tch::Kind::Float);
            let row_norms = Vec::<f32>::try_from(tensor.square().sum_dim_intlist(1, false, tch::Kind::Float)).unwrap();
            assert!(row_norms[..used].iter().all(|&n| n > 1.0), "{row_norms:?}");
            assert!(row_norms[used..].iter().all(|&n| n == 0.0), "{row_norms:?}");
        }
        let batch = book.embed_batch(&[one.clone(), three]);
        assert_eq!(batch.size(), vec![2, 24, 16]);
        assert!(batch.get(0).equal(&book.embed(&one)));
        assert!(CodeBook::new(16, 16).is_err());
    }

    #[test]
    fn embeddings_are_deterministic_unit_rms_and_distinct() {
        let book = CodeBook::new(MAX_TOKENS, 64).unwrap();
        assert_eq!(book, CodeBook::new(MAX_TOKENS, 64).unwrap());
        let set = PromptSet::generate(&PromptSetSpec::new(5, 100, 20)).unwrap();
        let embeddings: Vec<Vec<f32>> = set.iter().map(|(_, _, p)| book.embed_values(p)).collect();
        for (i, a) in embeddings.iter().enumerate() {
            for b in &embeddings[..i] {
                assert_ne!(a, b);
            }
        }
        // Code vectors are exactly unit RMS; bound tokens near it.
        let rms = |v: &[f32]| (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((rms(book.code(CodeKind::Colour, 3)) - 1.0).abs() < 1e-6);
        let first = &embeddings[0];
        for row in first.chunks(64).take(2 + 5 * set.train[0].objects().len()) {
            assert!((0.7..1.3).contains(&rms(row)), "{}", rms(row));
        }
    }

    #[test]
    fn attributes_bind_to_their_object() {
        // The same two objects in the other order: same attribute codes, other object codes.
        let book = CodeBook::new(MAX_TOKENS, 32).unwrap();
        let ab = prompt(&[(Shape::Disc, Colour::Red, 0), (Shape::Square, Colour::Blue, 5)]);
        let ba = prompt(&[(Shape::Square, Colour::Blue, 5), (Shape::Disc, Colour::Red, 0)]);
        assert_ne!(book.embed_values(&ab), book.embed_values(&ba));
        // Changing one attribute changes exactly its row.
        let ab_green = prompt(&[(Shape::Disc, Colour::Red, 0), (Shape::Square, Colour::Green, 5)]);
        let (x, y) = (book.embed_values(&ab), book.embed_values(&ab_green));
        let changed: Vec<usize> = (0..MAX_TOKENS)
            .filter(|r| x[r * 32..(r + 1) * 32] != y[r * 32..(r + 1) * 32])
            .collect();
        assert_eq!(changed, vec![2 + 5 + 1]);
        // The book does not depend on the text length.
        let longer = CodeBook::new(40, 32).unwrap();
        assert_eq!(longer.embed_values(&ab)[..MAX_TOKENS * 32], x[..]);
    }
}
