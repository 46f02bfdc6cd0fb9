//! Ground-truth quality metrics: how well a decoded clip shows what its [`Prompt`] asks for,
//! computed on RGB frames in plain Rust against the prompt's [`GroundTruth`].
//!
//! **Pixels.** A pixel's RGB is taken in `[0, 1]` (`(v + 1) / 2`). It is classified as the
//! nearest palette colour if that is within [`COLOUR_RADIUS`] (0.25, Euclidean; palette colours
//! are at least 0.5 apart, so at most one is that close), else as background if within
//! [`COLOUR_RADIUS`] of the background grey, else as other ([`classify`]).
//!
//! **Objects.** Objects of a clip have distinct colours, so object `k` in frame `f` is its colour's
//! pixels, kept only in 8-connected components of at least [`min_region_pixels`] pixels (4 % of
//! the object's box): its measured [`Region`], with area, centroid (mean pixel centre) and
//! bounding-box fill ratio. The object is *present* when that region is not empty. The ground
//! truth is the same rule applied to the clean render, so the generator's own clips measure
//! exactly their truth. Frames where the truth shows nothing of object `k` (fully occluded,
//! which distinct start cells rule out in frame 0) are left out of every per-object average.
//!
//! **Per clip** ([`ClipMetrics`]; "frames" of an object are those where its truth is visible):
//! * `presence`: fraction of (object, frame) pairs where the object is present.
//! * `colour_correctness`: fraction of objects whose colour shows with a sensible area (measured
//!   over true visible area in `[1/3, 3]`) in more than half of their frames.
//! * `shape_correctness`: fraction of objects whose shape wins a strict majority of the votes of
//!   the frames where the truth shows it unoccluded and it is present; each such frame votes for
//!   the shape whose ideal fill ratio (1, pi/4, 1/2) is nearest the measured one. No votes: wrong.
//! * `trajectory_error_px`: mean over (object, frame) pairs of the distance between measured and
//!   true centroid; a frame where the object is absent counts [`MISSING_PENALTY`] times the
//!   frame diagonal (half of it: worse than a uniformly random guess, about 0.37 diagonals).
//! * `trajectory_error_fraction`: the same over the frame side (`max(width, height)`).
//! * `area_cv`: per object, the coefficient of variation (population std / mean) over frames of
//!   measured area / true visible area, frames where it is present; mean over objects. Stable
//!   objects score 0. Fewer than 2 present frames counts [`UNSTABLE_PENALTY`] (1).
//! * `colour_spread`: per object, the mean distance (RGB in `[0, 1]`) of each frame's mean
//!   region colour from the mean of those means, present frames; mean over objects. Fewer than 2
//!   present frames counts [`UNSTABLE_PENALTY`].
//! * `frame_difference`: mean absolute difference of consecutive frames over every pixel and
//!   channel, RGB in `[0, 1]`; `frame_difference_ratio` divides it by the clean render's.
//! * `centroid_speed`: mean centroid displacement in pixels per frame over consecutive frame
//!   pairs where the object is present in both (0 when there is none); `centroid_speed_ratio`
//!   divides it by the same on the ground truth. Ratios near 1 mean the clip moves as it should.
//!
//! **Between clips**: [`psnr`], `10 log10(1 / MSE)` over RGB in `[0, 1]`, capped at
//! [`PSNR_CAP_DB`] so identical clips give a finite number JSON can hold.
//!
//! **Over clips**: [`MetricsSummary`] holds the mean of every field of [`ClipMetrics`].

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

use super::regions::{Region, min_region_pixels, region_of};
use super::render::{GroundTruth, ground_truth, render};
use super::scene::{BACKGROUND_RGB, Colour, Geometry, Prompt, Shape};
use super::video::Video;

/// Largest RGB distance (in `[0, 1]`) at which a pixel counts as a palette colour or the background.
pub const COLOUR_RADIUS: f32 = 0.25;

/// Measured over true visible area must lie in this range for a frame to show the object's
/// colour "with a sensible area". Wide enough that a wrong shape (a triangle has half a
/// square's area) does not also count as a wrong colour.
pub const SENSIBLE_AREA_RATIO: (f64, f64) = (1.0 / 3.0, 3.0);

/// Trajectory error of a frame where the object is absent, in frame diagonals.
pub const MISSING_PENALTY: f64 = 0.5;

/// `area_cv` and `colour_spread` of an object present in fewer than 2 frames.
pub const UNSTABLE_PENALTY: f64 = 1.0;

/// [`psnr`] of identical clips (an MSE of 1e-10).
pub const PSNR_CAP_DB: f64 = 100.0;

/// What a pixel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelClass {
    Colour(Colour),
    Background,
    Other,
}

fn squared_distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
}

/// Classifies a pixel given as RGB in `[0, 1]` (see the module doc).
pub fn classify(rgb: [f32; 3]) -> PixelClass {
    // A plain loop over squared distances: this runs for every pixel of every evaluated frame.
    let radius_squared = COLOUR_RADIUS * COLOUR_RADIUS;
    let mut nearest = None;
    let mut nearest_distance = f32::INFINITY;
    for colour in Colour::ALL {
        let d = squared_distance(rgb, colour.rgb());
        if d < nearest_distance {
            (nearest, nearest_distance) = (Some(colour), d);
        }
    }
    match nearest {
        Some(colour) if nearest_distance <= radius_squared => PixelClass::Colour(colour),
        _ if squared_distance(rgb, BACKGROUND_RGB) <= radius_squared => PixelClass::Background,
        _ => PixelClass::Other,
    }
}

/// One object in one frame as the clip shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectFrameMeasure {
    /// Its colour's pixels, small components dropped; `None` when absent.
    pub region: Option<Region>,
    /// Mean RGB (`[0, 1]`) of the region's pixels.
    pub mean_rgb: Option<[f64; 3]>,
}

/// Every object of `prompt` in every frame of `video`: `[object][frame]`.
pub fn measure_objects(video: &Video, prompt: &Prompt, geometry: &Geometry) -> Result<Vec<Vec<ObjectFrameMeasure>>> {
    ensure!(
        (video.frames(), video.height(), video.width()) == (geometry.frames, geometry.height, geometry.width),
        "the clip is {}x{}x{} (frames x height x width), the geometry {}x{}x{}",
        video.frames(),
        video.height(),
        video.width(),
        geometry.frames,
        geometry.height,
        geometry.width
    );
    let (width, height) = (geometry.width, geometry.height);
    let min_pixels = min_region_pixels(geometry);
    let mut measures = vec![Vec::with_capacity(geometry.frames); prompt.objects().len()];
    for frame in 0..geometry.frames {
        let classes: Vec<PixelClass> = (0..width * height)
            .map(|p| {
                let at = video.index(frame, 0, 0) + p;
                let stride = video.channel_stride();
                let value = |c: usize| (video.values()[at + c * stride] + 1.0) * 0.5;
                classify([value(0), value(1), value(2)])
            })
            .collect();
        for (k, object) in prompt.objects().iter().enumerate() {
            let mask: Vec<bool> = classes
                .iter()
                .map(|&c| c == PixelClass::Colour(object.colour))
                .collect();
            let region = region_of(&mask, width, height, min_pixels);
            let mean_rgb = region.as_ref().map(|r| {
                let mut sum = [0.0f64; 3];
                for &p in &r.pixels {
                    let rgb = video.rgb01(frame, p / width, p % width);
                    for (s, v) in sum.iter_mut().zip(rgb) {
                        *s += f64::from(v);
                    }
                }
                sum.map(|s| s / r.area() as f64)
            });
            measures[k].push(ObjectFrameMeasure { region, mean_rgb });
        }
    }
    Ok(measures)
}

/// The per-clip metrics (definitions in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ClipMetrics {
    pub presence: f64,
    pub colour_correctness: f64,
    pub shape_correctness: f64,
    pub trajectory_error_px: f64,
    pub trajectory_error_fraction: f64,
    pub area_cv: f64,
    pub colour_spread: f64,
    pub frame_difference: f64,
    pub frame_difference_ratio: f64,
    pub centroid_speed: f64,
    pub centroid_speed_ratio: f64,
}

impl ClipMetrics {
    const FIELDS: usize = 11;

    fn to_array(self) -> [f64; Self::FIELDS] {
        [
            self.presence,
            self.colour_correctness,
            self.shape_correctness,
            self.trajectory_error_px,
            self.trajectory_error_fraction,
            self.area_cv,
            self.colour_spread,
            self.frame_difference,
            self.frame_difference_ratio,
            self.centroid_speed,
            self.centroid_speed_ratio,
        ]
    }

    fn from_array(v: [f64; Self::FIELDS]) -> Self {
        ClipMetrics {
            presence: v[0],
            colour_correctness: v[1],
            shape_correctness: v[2],
            trajectory_error_px: v[3],
            trajectory_error_fraction: v[4],
            area_cv: v[5],
            colour_spread: v[6],
            frame_difference: v[7],
            frame_difference_ratio: v[8],
            centroid_speed: v[9],
            centroid_speed_ratio: v[10],
        }
    }
}

/// The mean of every metric over a number of clips.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricsSummary {
    pub clips: usize,
    pub mean: ClipMetrics,
}

impl MetricsSummary {
    /// The mean over `clips`; all zeros for none.
    pub fn of(clips: &[ClipMetrics]) -> Self {
        let mut sum = [0.0; ClipMetrics::FIELDS];
        for clip in clips {
            for (s, v) in sum.iter_mut().zip(clip.to_array()) {
                *s += v;
            }
        }
        let n = clips.len().max(1) as f64;
        MetricsSummary {
            clips: clips.len(),
            mean: ClipMetrics::from_array(sum.map(|s| s / n)),
        }
    }
}

/// How well `video` shows `prompt` (see the module doc for every definition).
pub fn clip_metrics(video: &Video, prompt: &Prompt, geometry: &Geometry) -> Result<ClipMetrics> {
    let measures = measure_objects(video, prompt, geometry)?;
    let truth = ground_truth(prompt, geometry);
    let diagonal = (geometry.width as f64).hypot(geometry.height as f64);
    let side = geometry.width.max(geometry.height) as f64;

    let mut present_pairs = 0usize;
    let mut pairs = 0usize;
    let mut distance_sum = 0.0;
    let mut colour_correct = Vec::new();
    let mut shape_correct = Vec::new();
    let mut area_cvs = Vec::new();
    let mut spreads = Vec::new();
    for (k, object) in prompt.objects().iter().enumerate() {
        let frames: Vec<(&ObjectFrameMeasure, &Region, bool)> = measures[k]
            .iter()
            .zip(&truth.objects[k])
            .filter_map(|(m, t)| t.visible.as_ref().map(|region| (m, region, t.occluded)))
            .collect();
        if frames.is_empty() {
            continue;
        }
        let mut sensible = 0usize;
        let mut votes = 0usize;
        let mut right_votes = 0usize;
        let mut area_ratios = Vec::new();
        let mut colours = Vec::new();
        for &(measure, true_region, occluded) in &frames {
            pairs += 1;
            let Some(region) = &measure.region else {
                distance_sum += MISSING_PENALTY * diagonal;
                continue;
            };
            present_pairs += 1;
            let [dx, dy] = [
                region.centroid[0] - true_region.centroid[0],
                region.centroid[1] - true_region.centroid[1],
            ];
            distance_sum += dx.hypot(dy);
            let area_ratio = region.area() as f64 / true_region.area() as f64;
            area_ratios.push(area_ratio);
            if (SENSIBLE_AREA_RATIO.0..=SENSIBLE_AREA_RATIO.1).contains(&area_ratio) {
                sensible += 1;
            }
            if !occluded {
                votes += 1;
                right_votes += usize::from(nearest_shape(region.fill_ratio()) == object.shape);
            }
            colours.extend(measure.mean_rgb);
        }
        colour_correct.push(indicator(2 * sensible > frames.len()));
        shape_correct.push(indicator(votes > 0 && 2 * right_votes > votes));
        area_cvs.push(coefficient_of_variation(&area_ratios));
        spreads.push(colour_spread(&colours));
    }

    let truth_video = render(prompt, geometry);
    let frame_difference = mean_frame_difference(video);
    let centroid_speed = mean_speed(measures.iter().map(|frames| frames.iter().map(|m| m.region.as_ref())));
    let truth_speed = true_speed(&truth);
    let trajectory_error_px = distance_sum / pairs.max(1) as f64;
    Ok(ClipMetrics {
        presence: present_pairs as f64 / pairs.max(1) as f64,
        colour_correctness: mean(&colour_correct),
        shape_correctness: mean(&shape_correct),
        trajectory_error_px,
        trajectory_error_fraction: trajectory_error_px / side,
        area_cv: mean(&area_cvs),
        colour_spread: mean(&spreads),
        frame_difference,
        frame_difference_ratio: ratio(frame_difference, mean_frame_difference(&truth_video)),
        centroid_speed,
        centroid_speed_ratio: ratio(centroid_speed, truth_speed),
    })
}

/// Peak signal-to-noise ratio of two clips of one shape, in dB, RGB in `[0, 1]`, capped at
/// [`PSNR_CAP_DB`]. For a student against its teacher sampled from the same noise.
pub fn psnr(a: &Video, b: &Video) -> Result<f64> {
    ensure!(a.same_shape(b), "PSNR needs two clips of one shape");
    let squared: f64 = a
        .values()
        .iter()
        .zip(b.values())
        .map(|(x, y)| (0.5 * f64::from(x - y)).powi(2))
        .sum();
    let mse = squared / a.values().len().max(1) as f64;
    Ok((10.0 * (1.0 / mse).log10()).min(PSNR_CAP_DB))
}

/// The shape whose ideal fill ratio is nearest `fill_ratio`.
pub fn nearest_shape(fill_ratio: f64) -> Shape {
    Shape::ALL
        .into_iter()
        .min_by(|a, b| {
            (a.fill_ratio() - fill_ratio)
                .abs()
                .total_cmp(&(b.fill_ratio() - fill_ratio).abs())
        })
        .expect("there are shapes")
}

fn indicator(condition: bool) -> f64 {
    if condition { 1.0 } else { 0.0 }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// `measured / truth`; a truth of 0 cannot happen for a valid prompt (every object moves), and
/// gives 1 when the measurement is 0 too, else `f64::MAX`.
fn ratio(measured: f64, truth: f64) -> f64 {
    if truth > 0.0 {
        measured / truth
    } else if measured == 0.0 {
        1.0
    } else {
        f64::MAX
    }
}

fn coefficient_of_variation(values: &[f64]) -> f64 {
    let m = mean(values);
    if values.len() < 2 || m <= 0.0 {
        return UNSTABLE_PENALTY;
    }
    let variance = values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / values.len() as f64;
    variance.sqrt() / m
}

fn colour_spread(colours: &[[f64; 3]]) -> f64 {
    if colours.len() < 2 {
        return UNSTABLE_PENALTY;
    }
    let n = colours.len() as f64;
    let centre: [f64; 3] = std::array::from_fn(|c| colours.iter().map(|rgb| rgb[c]).sum::<f64>() / n);
    colours
        .iter()
        .map(|rgb| (0..3).map(|c| (rgb[c] - centre[c]).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>()
        / n
}

fn mean_frame_difference(video: &Video) -> f64 {
    let frame_len = video.height() * video.width();
    let stride = video.channel_stride();
    let mut sum = 0.0;
    for channel in 0..3 {
        let values = &video.values()[channel * stride..(channel + 1) * stride];
        for (earlier, later) in values.chunks(frame_len).zip(values.chunks(frame_len).skip(1)) {
            sum += earlier
                .iter()
                .zip(later)
                .map(|(a, b)| 0.5 * f64::from((b - a).abs()))
                .sum::<f64>();
        }
    }
    sum / (3 * frame_len * video.frames().saturating_sub(1)).max(1) as f64
}

/// Mean displacement between consecutive frames where the object is present in both, pooled
/// over objects; 0 when no such pair exists.
fn mean_speed<'a>(objects: impl Iterator<Item = impl Iterator<Item = Option<&'a Region>>>) -> f64 {
    let mut sum = 0.0;
    let mut steps = 0usize;
    for frames in objects {
        let mut previous: Option<&Region> = None;
        for region in frames {
            if let (Some(a), Some(b)) = (previous, region) {
                sum += (b.centroid[0] - a.centroid[0]).hypot(b.centroid[1] - a.centroid[1]);
                steps += 1;
            }
            previous = region;
        }
    }
    if steps == 0 { 0.0 } else { sum / steps as f64 }
}

fn true_speed(truth: &GroundTruth) -> f64 {
    mean_speed(
        truth
            .objects
            .iter()
            .map(|frames| frames.iter().map(|t| t.visible.as_ref())),
    )
}

#[cfg(test)]
mod tests;
