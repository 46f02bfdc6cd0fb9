//! Rendering a [`Prompt`] to its [`Video`], and the prompt's [`GroundTruth`]: pure,
//! deterministic functions of the prompt and the [`Geometry`].
//!
//! An object is drawn in its bounding box at its closed-form position ([`Geometry::motion`])
//! snapped to the nearest whole pixel (so its pixel pattern is the same in every frame; motion
//! advances in whole-pixel steps); a pixel of the box belongs to the object when its centre is
//! inside the shape. Objects are drawn in prompt order, later ones on top, with hard edges (no
//! anti-aliasing), so every pixel is exactly a palette colour or the background. The background is [`BACKGROUND_RGB`], plus for [`Background::Textured`] a static
//! value-noise texture: a lattice of [`TEXTURE_LATTICE`]^2 cells whose corner values (per
//! channel, uniform in `[-TEXTURE_AMPLITUDE, TEXTURE_AMPLITUDE]`, drawn from [`TEXTURE_SEED`])
//! are interpolated bilinearly at pixel centres in frame-relative coordinates.
//!
//! The ground truth of an object in a frame is its analytic position and velocity, the pixels
//! its shape covers (`full_area`), whether a later object covers some of them, and its visible
//! [`Region`]: the pixels it shows in the rendered frame, with components smaller than
//! [`min_region_pixels`] dropped exactly as the metrics drop them. Positions are closed form;
//! areas and centroids are counted on the raster, which is what a perfect video shows.

use super::regions::{Region, min_region_pixels, region_of};
use super::scene::{BACKGROUND_RGB, Background, Geometry, Prompt, TEXTURE_AMPLITUDE, TEXTURE_LATTICE, TEXTURE_SEED};
use super::video::Video;
use crate::sampler::SeededRng;

/// What the prompt makes true of one object in one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectFrameTruth {
    /// Centre of the object's bounding box, pixels (closed form).
    pub position: [f64; 2],
    /// Pixels per frame at this frame (closed form; reversed by each bounce).
    pub velocity: [f64; 2],
    /// Pixels whose centre the shape covers, occluded or not.
    pub full_area: usize,
    /// Whether a later object covers some of those pixels.
    pub occluded: bool,
    /// The visible pixels, small components dropped; `None` when nothing is left.
    pub visible: Option<Region>,
}

impl ObjectFrameTruth {
    pub fn visible_area(&self) -> usize {
        self.visible.as_ref().map_or(0, Region::area)
    }
}

/// The ground truth of a clip: `objects[k][f]` is object `k` (prompt order) at frame `f`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    pub objects: Vec<Vec<ObjectFrameTruth>>,
}

/// Per pixel of one frame (`y * width + x`): which object shows there, `None` for background.
/// Also each object's own coverage mask, before occlusion.
struct FrameLayout {
    top: Vec<Option<usize>>,
    coverage: Vec<Vec<bool>>,
}

fn layout(prompt: &Prompt, geometry: &Geometry, frame: usize) -> FrameLayout {
    let (width, height) = (geometry.width, geometry.height);
    let half = geometry.half_size();
    let mut top = vec![None; width * height];
    let mut coverage = Vec::with_capacity(prompt.objects().len());
    for (k, object) in prompt.objects().iter().enumerate() {
        let [x0, y0] = raster_origin(geometry.motion(object, frame).position, half);
        let (cx, cy) = (x0 as f64 + half, y0 as f64 + half);
        let mut covered = vec![false; width * height];
        for y in y0..(y0 + geometry.object_size).min(height) {
            for x in x0..(x0 + geometry.object_size).min(width) {
                if object.shape.contains(x as f64 + 0.5 - cx, y as f64 + 0.5 - cy, half) {
                    covered[y * width + x] = true;
                    top[y * width + x] = Some(k);
                }
            }
        }
        coverage.push(covered);
    }
    FrameLayout { top, coverage }
}

/// Top-left pixel of an object's box at `position`: the box snapped to the nearest whole pixel.
/// Snapping makes every frame show the same pixel pattern of a shape, whatever the sub-pixel
/// position: without it the raster of a small disc flickers between octagons whose bounding-box
/// fill ratio (0.73 to 0.92 at 8 px) overlaps a square's. The box stays inside the frame, since
/// the unsnapped box does and the frame edges are whole pixels.
fn raster_origin(position: [f64; 2], half: f64) -> [usize; 2] {
    position.map(|centre| (centre - half + 0.5).floor().max(0.0) as usize)
}

/// Background RGB in `[0, 1]` of every pixel (`y * width + x`).
fn background_pixels(background: Background, geometry: &Geometry) -> Vec<[f32; 3]> {
    let (width, height) = (geometry.width, geometry.height);
    match background {
        Background::Plain => vec![BACKGROUND_RGB; width * height],
        Background::Textured => {
            let side = TEXTURE_LATTICE + 1;
            let mut rng = SeededRng::new(TEXTURE_SEED);
            let lattice: Vec<[f32; 3]> = (0..side * side)
                .map(|_| {
                    std::array::from_fn(|_| ((2.0 * rng.uniform_open() - 1.0) * f64::from(TEXTURE_AMPLITUDE)) as f32)
                })
                .collect();
            let mut pixels = Vec::with_capacity(width * height);
            for y in 0..height {
                let v = (y as f64 + 0.5) / height as f64 * TEXTURE_LATTICE as f64;
                let (row, fy) = (v.floor() as usize, v.fract());
                for x in 0..width {
                    let u = (x as f64 + 0.5) / width as f64 * TEXTURE_LATTICE as f64;
                    let (col, fx) = (u.floor() as usize, u.fract());
                    let at = |r: usize, c: usize, ch: usize| f64::from(lattice[r * side + c][ch]);
                    pixels.push(std::array::from_fn(|ch| {
                        let top = at(row, col, ch) * (1.0 - fx) + at(row, col + 1, ch) * fx;
                        let bottom = at(row + 1, col, ch) * (1.0 - fx) + at(row + 1, col + 1, ch) * fx;
                        BACKGROUND_RGB[ch] + (top * (1.0 - fy) + bottom * fy) as f32
                    }));
                }
            }
            pixels
        }
    }
}

/// The clip of `prompt`: `[3, F, H, W]` in `[-1, 1]`.
pub fn render(prompt: &Prompt, geometry: &Geometry) -> Video {
    let mut video = render_background(prompt.background(), geometry);
    for frame in 0..geometry.frames {
        let FrameLayout { top, .. } = layout(prompt, geometry, frame);
        for (pixel, shown) in top.into_iter().enumerate() {
            if let Some(k) = shown {
                let rgb = prompt.objects()[k].colour.rgb();
                video.set_rgb01(frame, pixel / geometry.width, pixel % geometry.width, rgb);
            }
        }
    }
    video
}

/// A clip of `geometry`'s size showing only the background: what a model that ignores the
/// prompt's objects would produce.
pub fn render_background(background: Background, geometry: &Geometry) -> Video {
    let (frames, height, width) = (geometry.frames, geometry.height, geometry.width);
    let mut video = Video::from_values(frames, height, width, vec![0.0; 3 * frames * height * width])
        .expect("the length is computed from the shape");
    let pixels = background_pixels(background, geometry);
    for frame in 0..frames {
        for (pixel, &rgb) in pixels.iter().enumerate() {
            video.set_rgb01(frame, pixel / width, pixel % width, rgb);
        }
    }
    video
}

/// The ground truth of `prompt`'s clip (see the module doc).
pub fn ground_truth(prompt: &Prompt, geometry: &Geometry) -> GroundTruth {
    let min_pixels = min_region_pixels(geometry);
    let mut objects: Vec<Vec<ObjectFrameTruth>> = vec![Vec::with_capacity(geometry.frames); prompt.objects().len()];
    for frame in 0..geometry.frames {
        let FrameLayout { top, coverage } = layout(prompt, geometry, frame);
        for (k, (object, covered)) in prompt.objects().iter().zip(coverage).enumerate() {
            let shown: Vec<bool> = top.iter().map(|&t| t == Some(k)).collect();
            let full_area = covered.iter().filter(|&&c| c).count();
            let shown_area = shown.iter().filter(|&&s| s).count();
            let motion = geometry.motion(object, frame);
            objects[k].push(ObjectFrameTruth {
                position: motion.position,
                velocity: motion.velocity,
                full_area,
                occluded: shown_area < full_area,
                visible: region_of(&shown, geometry.width, geometry.height, min_pixels),
            });
        }
    }
    GroundTruth { objects }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::scene::{Cell, Colour, Direction, SceneObject, Shape, Speed};

    fn object(shape: Shape, colour: Colour, row: u8, col: u8, direction: Direction) -> SceneObject {
        SceneObject {
            shape,
            colour,
            cell: Cell { row, col },
            direction,
            speed: Speed::Medium,
        }
    }

    fn three_objects(background: Background) -> Prompt {
        Prompt::new(
            vec![
                object(Shape::Square, Colour::Red, 0, 0, Direction::SE),
                object(Shape::Disc, Colour::Cyan, 2, 1, Direction::N),
                object(Shape::Triangle, Colour::Orange, 3, 3, Direction::W),
            ],
            background,
        )
        .unwrap()
    }

    #[test]
    fn rendering_is_deterministic_and_in_range() {
        for geometry in [Geometry::gpu(), Geometry::cpu()] {
            for background in Background::ALL {
                let prompt = three_objects(background);
                let a = render(&prompt, &geometry);
                assert_eq!(a, render(&prompt, &geometry));
                assert_eq!(
                    (a.frames(), a.height(), a.width()),
                    (geometry.frames, geometry.height, geometry.width)
                );
                assert!(a.values().iter().all(|v| (-1.0..=1.0).contains(v)));
            }
        }
        // A pinned pixel, so a change to the rasteriser or the texture shows up here.
        let textured = render(&three_objects(Background::Textured), &Geometry::gpu());
        let plain = render(&three_objects(Background::Plain), &Geometry::gpu());
        let near = |a: [f32; 3], b: [f32; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(near(plain.rgb01(0, 40, 40), BACKGROUND_RGB));
        assert!(!near(textured.rgb01(0, 40, 40), BACKGROUND_RGB));
        assert_eq!(textured.rgb01(0, 8, 8), Colour::Red.rgb());
    }

    #[test]
    fn texture_is_low_contrast_and_static() {
        let geometry = Geometry::gpu();
        let video = render_background(Background::Textured, &geometry);
        let mut lowest = f32::MAX;
        let mut highest = f32::MIN;
        for y in 0..geometry.height {
            for x in 0..geometry.width {
                let rgb = video.rgb01(0, y, x);
                assert_eq!(rgb, video.rgb01(geometry.frames - 1, y, x));
                for (value, base) in rgb.into_iter().zip(BACKGROUND_RGB) {
                    assert!((value - base).abs() <= TEXTURE_AMPLITUDE + 1e-6);
                    lowest = lowest.min(value);
                    highest = highest.max(value);
                }
            }
        }
        // It is a texture, not a flat colour.
        assert!(highest - lowest > TEXTURE_AMPLITUDE);
    }

    #[test]
    fn unoccluded_objects_match_their_analytic_area_and_centroid() {
        for geometry in [Geometry::gpu(), Geometry::cpu()] {
            let half = geometry.half_size();
            for shape in Shape::ALL {
                let prompt = Prompt::new(
                    vec![object(shape, Colour::Blue, 1, 2, Direction::NE)],
                    Background::Plain,
                )
                .unwrap();
                let truth = ground_truth(&prompt, &geometry);
                // Snapped boxes: one pixel pattern, hence one fill ratio, in every frame.
                let fill = truth.objects[0][0].visible.as_ref().unwrap().fill_ratio();
                let nearest = Shape::ALL
                    .into_iter()
                    .min_by(|a, b| (a.fill_ratio() - fill).abs().total_cmp(&(b.fill_ratio() - fill).abs()));
                assert_eq!(nearest, Some(shape), "fill ratio {fill}");
                for frame in &truth.objects[0] {
                    assert_eq!(frame.visible.as_ref().unwrap().fill_ratio(), fill);
                    let region = frame.visible.as_ref().unwrap();
                    assert!(!frame.occluded);
                    assert_eq!(region.area(), frame.full_area);
                    let ideal_area = shape.fill_ratio() * (geometry.object_size * geometry.object_size) as f64;
                    let area_error = (region.area() as f64 - ideal_area).abs() / ideal_area;
                    assert!(area_error < 0.15, "{shape:?} area {} vs {ideal_area}", region.area());
                    let offset = shape.centroid_offset(half);
                    let ideal = [frame.position[0] + offset[0], frame.position[1] + offset[1]];
                    // The box snaps to whole pixels, at most half a pixel along each axis; the
                    // raster of a small triangle (empty apex row) adds a few hundredths more.
                    for axis in 0..2 {
                        let error = (region.centroid[axis] - ideal[axis]).abs();
                        assert!(error <= 0.55, "{shape:?} centroid {:?} vs {ideal:?}", region.centroid);
                    }
                }
            }
        }
    }

    #[test]
    fn rasterised_objects_stay_whole_through_bounces() {
        // 40 frames at the fastest speed: bounces off every wall, from corner and inner cells.
        for base in [Geometry::gpu(), Geometry::cpu()] {
            let geometry = Geometry { frames: 40, ..base };
            for shape in Shape::ALL {
                for direction in Direction::ALL {
                    for cell in [0, 6, 15] {
                        let object = SceneObject {
                            shape,
                            colour: Colour::White,
                            cell: Cell::from_index(cell).unwrap(),
                            direction,
                            speed: Speed::Fast,
                        };
                        let prompt = Prompt::new(vec![object], Background::Plain).unwrap();
                        let truth = ground_truth(&prompt, &geometry);
                        let area = truth.objects[0][0].full_area;
                        // Never clipped by a frame edge: the same pixel count in every frame.
                        assert!(
                            truth.objects[0]
                                .iter()
                                .all(|t| t.full_area == area && t.visible_area() == area)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn later_objects_occlude_earlier_ones() {
        // Two squares moving towards each other along one row must overlap at some frame.
        let prompt = Prompt::new(
            vec![
                object(Shape::Square, Colour::Red, 1, 0, Direction::E),
                object(Shape::Square, Colour::Green, 1, 1, Direction::W),
            ],
            Background::Plain,
        )
        .unwrap();
        let geometry = Geometry::gpu();
        let truth = ground_truth(&prompt, &geometry);
        let video = render(&prompt, &geometry);
        let frame = (0..geometry.frames)
            .find(|&f| truth.objects[0][f].occluded)
            .expect("they meet");
        assert!(!truth.objects[1][frame].occluded);
        assert!(truth.objects[0][frame].visible_area() < truth.objects[0][frame].full_area);
        // The green square is drawn over the red one where they overlap.
        let [x, y] = truth.objects[1][frame].visible.as_ref().unwrap().centroid;
        assert_eq!(video.rgb01(frame, y as usize, x as usize), Colour::Green.rgb());
    }
}
