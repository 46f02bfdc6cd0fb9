//! What a testbed clip shows: the attributes of its objects, the [`Prompt`] that names them,
//! the clip [`Geometry`] (frame size, object size, speeds) and the closed-form motion of every
//! object. Pure Rust: no tch, no randomness (the texture seed is a constant here).
//!
//! Coordinates are continuous pixels, x to the right and y down, with pixel `(x, y)` covering
//! `[x, x + 1) x [y, y + 1)`, so its centre is `(x + 0.5, y + 0.5)`. An object's *position* is
//! the centre of its square bounding box of side [`Geometry::object_size`]; it starts at the
//! centre of its [`Cell`] of the 4 x 4 grid and moves at constant velocity, bouncing off the
//! frame edges: each axis folds the free path back into `[half, side - half]` (a triangle wave),
//! so the bounding box never leaves the frame and the velocity component reverses at a wall.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Cells per side of the start grid.
pub const GRID: u8 = 4;

/// Most objects in one clip.
pub const MAX_OBJECTS: usize = 3;

/// The plain background, RGB in `[0, 1]`: dark grey, at least 0.7 from every palette colour.
pub const BACKGROUND_RGB: [f32; 3] = [0.2, 0.2, 0.2];

/// Seed of the background texture (one texture for the whole testbed, so a model can learn it).
pub const TEXTURE_SEED: u64 = 0x7E57_BED0_0000_7E47;

/// Largest per-channel offset of the texture from [`BACKGROUND_RGB`]: low contrast, and far
/// below the 0.25 colour-classification radius of the metrics.
pub const TEXTURE_AMPLITUDE: f32 = 0.06;

/// Lattice cells per side of the texture's value noise (bilinear between lattice points).
pub const TEXTURE_LATTICE: usize = 8;

/// The shape of an object. The bounding box is a square of the object size in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Fills its bounding box.
    Square,
    /// Inscribed disc: fills pi / 4 of its box.
    Disc,
    /// Isosceles, apex up at the top middle, base along the bottom edge: fills half its box.
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Square, Shape::Disc, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Square => "square",
            Shape::Disc => "disc",
            Shape::Triangle => "triangle",
        }
    }

    /// Area over bounding-box area of the ideal shape: what the shape metric compares with.
    pub fn fill_ratio(self) -> f64 {
        match self {
            Shape::Square => 1.0,
            Shape::Disc => std::f64::consts::FRAC_PI_4,
            Shape::Triangle => 0.5,
        }
    }

    /// Whether the point `(dx, dy)` relative to the box centre is inside the shape of half-size
    /// `half`. Edges are half-open so a square of integer size covers exactly size^2 pixel
    /// centres wherever it sits.
    pub fn contains(self, dx: f64, dy: f64, half: f64) -> bool {
        match self {
            Shape::Square => -half <= dx && dx < half && -half <= dy && dy < half,
            Shape::Disc => dx * dx + dy * dy < half * half,
            // Half-width grows linearly from 0 at the apex (dy = -half) to half at the base.
            Shape::Triangle => -half <= dy && dy < half && 2.0 * dx.abs() < dy + half,
        }
    }

    /// Centroid of the ideal shape relative to its box centre (the triangle's sits a third
    /// of the half-size below, towards its base).
    pub fn centroid_offset(self, half: f64) -> [f64; 2] {
        match self {
            Shape::Square | Shape::Disc => [0.0, 0.0],
            Shape::Triangle => [0.0, half / 3.0],
        }
    }
}

/// A palette colour. Any two are at least 0.5 apart in RGB (`[0, 1]`, Euclidean), which is
/// what lets the metrics classify a pixel to a colour with a 0.25 radius.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Cyan,
    Magenta,
    White,
    Orange,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Cyan,
        Colour::Magenta,
        Colour::White,
        Colour::Orange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Cyan => "cyan",
            Colour::Magenta => "magenta",
            Colour::White => "white",
            Colour::Orange => "orange",
        }
    }

    /// RGB in `[0, 1]`. Every channel is 0, 0.5 or 1, so pixels in `[-1, 1]` are -1, 0 or 1:
    /// exact in every float type.
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Colour::Red => [1.0, 0.0, 0.0],
            Colour::Green => [0.0, 1.0, 0.0],
            Colour::Blue => [0.0, 0.0, 1.0],
            Colour::Yellow => [1.0, 1.0, 0.0],
            Colour::Cyan => [0.0, 1.0, 1.0],
            Colour::Magenta => [1.0, 0.0, 1.0],
            Colour::White => [1.0, 1.0, 1.0],
            Colour::Orange => [1.0, 0.5, 0.0],
        }
    }

    pub fn index(self) -> usize {
        Colour::ALL
            .iter()
            .position(|&c| c == self)
            .expect("every colour is in ALL")
    }
}

/// The eight compass directions; north is up (negative y).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    N,
    NE,
    E,
    SE,
    S,
    SW,
    W,
    NW,
}

impl Direction {
    pub const ALL: [Direction; 8] = [
        Direction::N,
        Direction::NE,
        Direction::E,
        Direction::SE,
        Direction::S,
        Direction::SW,
        Direction::W,
        Direction::NW,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Direction::N => "N",
            Direction::NE => "NE",
            Direction::E => "E",
            Direction::SE => "SE",
            Direction::S => "S",
            Direction::SW => "SW",
            Direction::W => "W",
            Direction::NW => "NW",
        }
    }

    /// Unit vector `(x, y)`, y down. Diagonals are normalised so the speed is the magnitude;
    /// the constant avoids `sin`/`cos`, whose last bit may differ between platforms.
    pub fn unit(self) -> [f64; 2] {
        let d = std::f64::consts::FRAC_1_SQRT_2;
        match self {
            Direction::N => [0.0, -1.0],
            Direction::NE => [d, -d],
            Direction::E => [1.0, 0.0],
            Direction::SE => [d, d],
            Direction::S => [0.0, 1.0],
            Direction::SW => [-d, d],
            Direction::W => [-1.0, 0.0],
            Direction::NW => [-d, -d],
        }
    }
}

/// Speed level; pixels per frame come from [`Geometry::speeds_px`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speed {
    Slow,
    Medium,
    Fast,
}

impl Speed {
    pub const ALL: [Speed; 3] = [Speed::Slow, Speed::Medium, Speed::Fast];

    pub fn name(self) -> &'static str {
        match self {
            Speed::Slow => "slow",
            Speed::Medium => "medium",
            Speed::Fast => "fast",
        }
    }

    pub fn level(self) -> usize {
        self as usize
    }
}

/// A start cell of the [`GRID`] x [`GRID`] grid, row 0 at the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    pub row: u8,
    pub col: u8,
}

impl Cell {
    /// The cell of index `row * GRID + col`; `None` outside the grid.
    pub fn from_index(index: usize) -> Option<Cell> {
        let grid = usize::from(GRID);
        (index < grid * grid).then(|| Cell {
            row: (index / grid) as u8,
            col: (index % grid) as u8,
        })
    }

    pub fn index(self) -> usize {
        usize::from(self.row) * usize::from(GRID) + usize::from(self.col)
    }
}

/// The background of a clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    /// Uniform [`BACKGROUND_RGB`].
    Plain,
    /// [`BACKGROUND_RGB`] plus a static value-noise texture of amplitude [`TEXTURE_AMPLITUDE`]
    /// from [`TEXTURE_SEED`]; the same texture in every textured clip.
    Textured,
}

impl Background {
    pub const ALL: [Background; 2] = [Background::Plain, Background::Textured];

    pub fn name(self) -> &'static str {
        match self {
            Background::Plain => "plain",
            Background::Textured => "textured",
        }
    }
}

/// One object of a clip: every attribute the prompt names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SceneObject {
    pub shape: Shape,
    pub colour: Colour,
    pub cell: Cell,
    pub direction: Direction,
    pub speed: Speed,
}

impl fmt::Display for SceneObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} from cell ({}, {}) moving {} {}",
            self.colour.name(),
            self.shape.name(),
            self.cell.row,
            self.cell.col,
            self.direction.name(),
            self.speed.name()
        )
    }
}

/// Why a [`Prompt`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("a clip has 1 to {MAX_OBJECTS} objects, got {0}")]
    ObjectCount(usize),
    #[error("two objects share the colour {0}; objects are told apart by colour")]
    RepeatedColour(&'static str),
    #[error("two objects start in cell ({0}, {1}); start cells must differ")]
    RepeatedCell(u8, u8),
    #[error("cell ({0}, {1}) is outside the {GRID}x{GRID} grid")]
    CellOutsideGrid(u8, u8),
}

/// The attribute tuple of one clip: its objects (drawn in order, later ones on top) and its
/// background. Valid by construction: 1 to [`MAX_OBJECTS`] objects, distinct colours (the
/// metrics find an object by its colour) and distinct start cells (no two objects coincide in
/// the first frame).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "PromptFields", into = "PromptFields")]
pub struct Prompt {
    objects: Vec<SceneObject>,
    background: Background,
}

/// [`Prompt`]'s serialised form, checked by [`Prompt::new`] when read.
#[derive(Serialize, Deserialize)]
struct PromptFields {
    objects: Vec<SceneObject>,
    background: Background,
}

impl TryFrom<PromptFields> for Prompt {
    type Error = PromptError;
    fn try_from(fields: PromptFields) -> Result<Self, PromptError> {
        Prompt::new(fields.objects, fields.background)
    }
}

impl From<Prompt> for PromptFields {
    fn from(prompt: Prompt) -> Self {
        PromptFields {
            objects: prompt.objects,
            background: prompt.background,
        }
    }
}

impl Prompt {
    pub fn new(objects: Vec<SceneObject>, background: Background) -> Result<Self, PromptError> {
        if objects.is_empty() || objects.len() > MAX_OBJECTS {
            return Err(PromptError::ObjectCount(objects.len()));
        }
        for (i, a) in objects.iter().enumerate() {
            if a.cell.row >= GRID || a.cell.col >= GRID {
                return Err(PromptError::CellOutsideGrid(a.cell.row, a.cell.col));
            }
            for b in &objects[..i] {
                if a.colour == b.colour {
                    return Err(PromptError::RepeatedColour(a.colour.name()));
                }
                if a.cell == b.cell {
                    return Err(PromptError::RepeatedCell(a.cell.row, a.cell.col));
                }
            }
        }
        Ok(Prompt { objects, background })
    }

    pub fn objects(&self) -> &[SceneObject] {
        &self.objects
    }

    pub fn background(&self) -> Background {
        self.background
    }
}

impl fmt::Display for Prompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, object) in self.objects.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{object}")?;
        }
        write!(f, "; {} background", self.background.name())
    }
}

/// Why a [`Geometry`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeometryError {
    #[error("width and height must be positive multiples of 4 (the codec's patch) and of the grid {GRID}, got {0}x{1}")]
    FrameSize(usize, usize),
    #[error("an object of {object} px does not fit a grid cell of {cell} px")]
    ObjectSize { object: usize, cell: usize },
    #[error("a clip needs at least 2 frames, got {0}")]
    Frames(usize),
    #[error("speeds must be positive and increasing, got {0:?}")]
    Speeds([f64; 3]),
}

/// Size of the clips and of what moves in them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    /// Side of every object's square bounding box, in pixels.
    pub object_size: usize,
    /// Pixels per frame of [`Speed::Slow`], [`Speed::Medium`], [`Speed::Fast`].
    pub speeds_px: [f64; 3],
}

impl Geometry {
    /// The GPU testbed: 64 x 64, 16 frames, 12 px objects, 1 / 2 / 3 px per frame. Its latent
    /// is 48 x 16 x 16 x 16: 1,024 tokens with patch (1, 2, 2).
    pub fn gpu() -> Self {
        Geometry {
            width: 64,
            height: 64,
            frames: 16,
            object_size: 12,
            speeds_px: [1.0, 2.0, 3.0],
        }
    }

    /// The CPU testbed: 32 x 32, 8 frames, speeds halved with the frame. Objects are 8 px rather
    /// than a scaled 6 px: at 6 px a rasterised triangle fills 0.6 of its box, too close to the
    /// disc's 0.785 for the shape metric to tell them apart reliably.
    pub fn cpu() -> Self {
        Geometry {
            width: 32,
            height: 32,
            frames: 8,
            object_size: 8,
            speeds_px: [0.5, 1.0, 1.5],
        }
    }

    pub fn validate(&self) -> Result<(), GeometryError> {
        let grid = usize::from(GRID);
        let fits = |side: usize| side > 0 && side.is_multiple_of(4) && side.is_multiple_of(grid);
        if !fits(self.width) || !fits(self.height) {
            return Err(GeometryError::FrameSize(self.width, self.height));
        }
        let cell = self.width.min(self.height) / grid;
        if self.object_size == 0 || self.object_size > cell {
            return Err(GeometryError::ObjectSize {
                object: self.object_size,
                cell,
            });
        }
        if self.frames < 2 {
            return Err(GeometryError::Frames(self.frames));
        }
        let [slow, medium, fast] = self.speeds_px;
        if !(slow > 0.0 && slow < medium && medium < fast && fast.is_finite()) {
            return Err(GeometryError::Speeds(self.speeds_px));
        }
        Ok(())
    }

    /// Half the object size: the distance from an object's position to its box edges.
    pub fn half_size(&self) -> f64 {
        self.object_size as f64 / 2.0
    }

    /// Centre of a start cell.
    pub fn cell_centre(&self, cell: Cell) -> [f64; 2] {
        let grid = f64::from(GRID);
        let cell_w = self.width as f64 / grid;
        let cell_h = self.height as f64 / grid;
        [
            (f64::from(cell.col) + 0.5) * cell_w,
            (f64::from(cell.row) + 0.5) * cell_h,
        ]
    }

    /// Velocity at frame 0, pixels per frame.
    pub fn initial_velocity(&self, object: &SceneObject) -> [f64; 2] {
        let speed = self.speeds_px[object.speed.level()];
        let [ux, uy] = object.direction.unit();
        [ux * speed, uy * speed]
    }

    /// Position (box centre) and velocity of `object` at `frame`, in closed form.
    pub fn motion(&self, object: &SceneObject, frame: usize) -> Motion {
        let start = self.cell_centre(object.cell);
        let velocity = self.initial_velocity(object);
        let half = self.half_size();
        let t = frame as f64;
        let (x, vx) = bounce(start[0], velocity[0], t, half, self.width as f64 - half);
        let (y, vy) = bounce(start[1], velocity[1], t, half, self.height as f64 - half);
        Motion {
            position: [x, y],
            velocity: [vx, vy],
        }
    }
}

/// Where an object is at one frame and how it moves there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Motion {
    /// Centre of the bounding box, pixels.
    pub position: [f64; 2],
    /// Pixels per frame, after any bounces up to this frame.
    pub velocity: [f64; 2],
}

/// One axis of bouncing motion: the free path `start + velocity t`, folded into `[lo, hi]`
/// by reflection at both ends. Unfolded, the path lives on a circle of length `2 (hi - lo)`;
/// the first half of the circle is the wall-to-wall trip forwards, the second half backwards.
fn bounce(start: f64, velocity: f64, t: f64, lo: f64, hi: f64) -> (f64, f64) {
    let span = hi - lo;
    if span <= 0.0 {
        return (lo, 0.0);
    }
    let unfolded = (start - lo + velocity * t).rem_euclid(2.0 * span);
    if unfolded <= span {
        (lo + unfolded, velocity)
    } else {
        (lo + 2.0 * span - unfolded, -velocity)
    }
}

#[cfg(test)]
mod tests;
