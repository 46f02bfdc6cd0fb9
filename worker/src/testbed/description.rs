//! [`GeneratorDescription`]: everything that fixes what the testbed's videos and prompt
//! embeddings are (sizes, palette, shapes, directions, speeds, grid, background texture,
//! code book, codec), as one serde struct a teacher folder and a job carry as JSON.
//!
//! Most of it is compiled in (the palette, the seeds); only the geometry and the code book's
//! `text_len` and `text_dim` are choices. A reader calls [`GeneratorDescription::check`] to learn
//! whether this build would generate the same data: a teacher trained on one generator is
//! meaningless on another. [`GENERATOR_VERSION`] is bumped whenever a rule not listed here
//! (rasterisation, texture interpolation, token order, prompt sampling) changes.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::codec::{LATENT_CHANNELS, PATCH, latent_shape};
use super::embedding::{CODE_BOOK_SEED, CodeBook, MAX_TOKENS, TOKENS_PER_OBJECT};
use super::scene::{
    BACKGROUND_RGB, Colour, Direction, GRID, Geometry, MAX_OBJECTS, Shape, Speed, TEXTURE_AMPLITUDE, TEXTURE_LATTICE,
    TEXTURE_SEED,
};

/// Version of the rules the description does not spell out. 1: boxes snapped to whole pixels,
/// hard edges, later objects on top; bilinear value-noise texture; tokens as in `embedding`.
pub const GENERATOR_VERSION: u32 = 1;

/// A shape and the fill ratio of its ideal form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeDescription {
    pub name: String,
    pub fill_ratio: f64,
}

/// A palette colour, RGB in `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColourDescription {
    pub name: String,
    pub rgb: [f32; 3],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackgroundDescription {
    /// The plain background, RGB in `[0, 1]`.
    pub rgb: [f32; 3],
    pub texture_seed: u64,
    pub texture_amplitude: f32,
    pub texture_lattice: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeBookDescription {
    pub seed: u64,
    /// Padded text length L of an embedding `[L, text_dim]`.
    pub text_len: usize,
    pub text_dim: usize,
    /// Rows a prompt uses at most.
    pub max_tokens: usize,
    pub token_order: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodecDescription {
    /// Side of the square pixel block folded into channels.
    pub patch: i64,
    pub latent_channels: i64,
    /// `[C, F, H/4, W/4]` of one clip.
    pub latent_shape: [i64; 4],
    pub channel_order: String,
    pub pixel_range: [f32; 2],
}

/// What the testbed's data is; see the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorDescription {
    pub version: u32,
    pub geometry: Geometry,
    /// Start cells per side.
    pub grid: u8,
    pub max_objects: usize,
    pub shapes: Vec<ShapeDescription>,
    pub palette: Vec<ColourDescription>,
    /// Compass directions in code-book order; north is up.
    pub directions: Vec<String>,
    /// Speed levels in code-book order; pixels per frame are `geometry.speeds_px`.
    pub speeds: Vec<String>,
    pub background: BackgroundDescription,
    pub code_book: CodeBookDescription,
    pub codec: CodecDescription,
}

impl GeneratorDescription {
    /// This build's generator for `geometry`, with embeddings `[text_len, text_dim]`.
    pub fn new(geometry: Geometry, text_len: usize, text_dim: usize) -> Result<Self> {
        geometry.validate()?;
        // The code book refuses lengths that cannot hold a prompt.
        CodeBook::new(text_len, text_dim)?;
        let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        Ok(GeneratorDescription {
            version: GENERATOR_VERSION,
            grid: GRID,
            max_objects: MAX_OBJECTS,
            shapes: Shape::ALL
                .iter()
                .map(|s| ShapeDescription {
                    name: s.name().into(),
                    fill_ratio: s.fill_ratio(),
                })
                .collect(),
            palette: Colour::ALL
                .iter()
                .map(|c| ColourDescription {
                    name: c.name().into(),
                    rgb: c.rgb(),
                })
                .collect(),
            directions: names(&Direction::ALL.map(Direction::name)),
            speeds: names(&Speed::ALL.map(Speed::name)),
            background: BackgroundDescription {
                rgb: BACKGROUND_RGB,
                texture_seed: TEXTURE_SEED,
                texture_amplitude: TEXTURE_AMPLITUDE,
                texture_lattice: TEXTURE_LATTICE,
            },
            code_book: CodeBookDescription {
                seed: CODE_BOOK_SEED,
                text_len,
                text_dim,
                max_tokens: MAX_TOKENS,
                token_order: format!(
                    "count, background, then per object ({TOKENS_PER_OBJECT}): shape, colour, cell, direction, speed; \
                     zero rows after"
                ),
            },
            codec: CodecDescription {
                patch: PATCH,
                latent_channels: LATENT_CHANNELS,
                latent_shape: latent_shape(geometry.frames, geometry.height, geometry.width),
                channel_order: "c * 16 + dy * 4 + dx (colour, row in block, column in block)".into(),
                pixel_range: [-1.0, 1.0],
            },
            geometry,
        })
    }

    /// Whether this build generates the data described: `Ok` when the description equals what
    /// [`GeneratorDescription::new`] gives for its geometry and text size, else an error naming
    /// the sections that differ.
    pub fn check(&self) -> Result<()> {
        let expected = Self::new(self.geometry.clone(), self.code_book.text_len, self.code_book.text_dim)?;
        if &expected == self {
            return Ok(());
        }
        let (found, wanted) = (serde_json::to_value(self)?, serde_json::to_value(&expected)?);
        let differing: Vec<&String> = wanted
            .as_object()
            .expect("a struct serialises to an object")
            .iter()
            .filter(|(key, value)| found.get(key.as_str()) != Some(value))
            .map(|(key, _)| key)
            .collect();
        bail!("the testbed generator differs from this build's in: {differing:?}")
    }

    /// The code book of this description.
    pub fn code_book(&self) -> Result<CodeBook> {
        CodeBook::new(self.code_book.text_len, self.code_book.text_dim)
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Reads a description and [`check`](GeneratorDescription::check)s it.
    pub fn from_json(text: &str) -> Result<Self> {
        let description: GeneratorDescription = serde_json::from_str(text)?;
        description.check()?;
        Ok(description)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip_and_are_checked() {
        let gpu = GeneratorDescription::new(Geometry::gpu(), 32, 64).unwrap();
        assert_eq!(gpu.codec.latent_shape, [48, 16, 16, 16]);
        assert_eq!(gpu.palette.len(), 8);
        let json = gpu.to_json().unwrap();
        assert_eq!(GeneratorDescription::from_json(&json).unwrap(), gpu);
        assert_eq!(gpu.code_book().unwrap(), CodeBook::new(32, 64).unwrap());

        // A description of another generator is refused, naming what differs.
        let mut other = gpu.clone();
        other.palette[0].rgb = [0.9, 0.0, 0.0];
        other.code_book.seed += 1;
        let error = other.check().unwrap_err().to_string();
        assert!(
            error.contains("palette") && error.contains("code_book") && !error.contains("codec"),
            "{error}"
        );
        let older = GeneratorDescription {
            version: 0,
            ..gpu.clone()
        };
        assert!(GeneratorDescription::from_json(&older.to_json().unwrap()).is_err());

        // Another geometry is another, valid, description.
        let cpu = GeneratorDescription::new(Geometry::cpu(), MAX_TOKENS, 16).unwrap();
        assert_eq!(cpu.codec.latent_shape, [48, 8, 8, 8]);
        cpu.check().unwrap();
        assert!(GeneratorDescription::new(Geometry::cpu(), MAX_TOKENS - 1, 16).is_err());
    }
}
