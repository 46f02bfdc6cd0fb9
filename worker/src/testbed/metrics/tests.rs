use super::*;
use crate::sampler::SeededRng;
use crate::testbed::prompts::{PromptSet, PromptSetSpec};
use crate::testbed::render::render_background;
use crate::testbed::scene::{Cell, Direction, SceneObject};

fn prompts(seed: u64, textured_fraction: f64, n: usize) -> Vec<Prompt> {
    let spec = PromptSetSpec {
        textured_fraction,
        ..PromptSetSpec::new(seed, n, n / 4)
    };
    let set = PromptSet::generate(&spec).unwrap();
    set.iter().map(|(_, _, p)| p.clone()).collect()
}

/// `prompt` with every object changed by `change`.
fn altered(prompt: &Prompt, change: impl Fn(SceneObject) -> SceneObject) -> Prompt {
    Prompt::new(
        prompt.objects().iter().copied().map(change).collect(),
        prompt.background(),
    )
    .unwrap()
}

#[test]
fn classification_uses_the_palette_radius() {
    assert_eq!(classify([1.0, 0.5, 0.0]), PixelClass::Colour(Colour::Orange));
    assert_eq!(classify([0.9, 0.1, 0.1]), PixelClass::Colour(Colour::Red));
    assert_eq!(classify([0.75, 0.25, 0.0]), PixelClass::Other);
    assert_eq!(classify([0.22, 0.18, 0.2]), PixelClass::Background);
    assert_eq!(classify([0.5, 0.5, 0.5]), PixelClass::Other);
    assert_eq!(nearest_shape(0.95), Shape::Square);
    assert_eq!(nearest_shape(0.7), Shape::Disc);
    assert_eq!(nearest_shape(0.6), Shape::Triangle);
}

#[test]
fn the_generator_scores_perfectly_at_both_sizes_and_backgrounds() {
    for geometry in [Geometry::gpu(), Geometry::cpu()] {
        for textured_fraction in [0.0, 1.0] {
            let clips: Vec<ClipMetrics> = prompts(21, textured_fraction, 12)
                .iter()
                .map(|prompt| {
                    let m = clip_metrics(&render(prompt, &geometry), prompt, &geometry).unwrap();
                    assert_eq!(m.presence, 1.0, "{prompt}: {m:?}");
                    assert_eq!(m.colour_correctness, 1.0, "{prompt}: {m:?}");
                    assert_eq!(m.shape_correctness, 1.0, "{prompt}: {m:?}");
                    assert!(m.trajectory_error_px < 0.5, "{prompt}: {m:?}");
                    assert!(m.area_cv < 1e-9 && m.colour_spread < 1e-9, "{prompt}: {m:?}");
                    assert_eq!(m.frame_difference_ratio, 1.0, "{prompt}: {m:?}");
                    assert_eq!(m.centroid_speed_ratio, 1.0, "{prompt}: {m:?}");
                    assert!(m.frame_difference > 0.0 && m.centroid_speed > 0.0);
                    m
                })
                .collect();
            let summary = MetricsSummary::of(&clips);
            assert_eq!(summary.clips, 15);
            assert_eq!(summary.mean.colour_correctness, 1.0);
            assert_eq!(summary.mean.trajectory_error_px, 0.0);
        }
    }
}

#[test]
fn noise_scores_badly() {
    let geometry = Geometry::gpu();
    let mut rng = SeededRng::new(99);
    let n = 3 * geometry.frames * geometry.height * geometry.width;
    let values = (0..n).map(|_| (2.0 * rng.uniform_open() - 1.0) as f32).collect();
    let noise = Video::from_values(geometry.frames, geometry.height, geometry.width, values).unwrap();
    for prompt in prompts(4, 0.5, 8) {
        let m = clip_metrics(&noise, &prompt, &geometry).unwrap();
        assert!(m.presence < 0.5, "{prompt}: {m:?}");
        assert_eq!(m.colour_correctness, 0.0, "{prompt}: {m:?}");
        assert!(m.trajectory_error_fraction > 0.3, "{prompt}: {m:?}");
        assert!(m.frame_difference_ratio > 10.0, "{prompt}: {m:?}");
    }
}

#[test]
fn a_blank_clip_scores_badly() {
    for geometry in [Geometry::gpu(), Geometry::cpu()] {
        for prompt in prompts(5, 0.5, 8) {
            let blank = render_background(prompt.background(), &geometry);
            let m = clip_metrics(&blank, &prompt, &geometry).unwrap();
            assert_eq!(m.presence, 0.0);
            assert_eq!(m.colour_correctness, 0.0);
            assert_eq!(m.shape_correctness, 0.0);
            assert!((m.trajectory_error_fraction - MISSING_PENALTY * std::f64::consts::SQRT_2).abs() < 1e-9);
            assert_eq!((m.area_cv, m.colour_spread), (UNSTABLE_PENALTY, UNSTABLE_PENALTY));
            assert_eq!((m.frame_difference, m.centroid_speed_ratio), (0.0, 0.0));
        }
    }
}

#[test]
fn objects_in_the_wrong_place_have_a_large_trajectory_error() {
    let geometry = Geometry::gpu();
    for prompt in prompts(6, 0.5, 16) {
        // Every object from another cell, moving the other way: all else right.
        let moved = altered(&prompt, |o| SceneObject {
            cell: Cell::from_index((o.cell.index() + 5) % 16).unwrap(),
            direction: Direction::ALL[(o.direction as usize + 4) % 8],
            ..o
        });
        let m = clip_metrics(&render(&moved, &geometry), &prompt, &geometry).unwrap();
        assert!(m.trajectory_error_px > 8.0, "{prompt}: {m:?}");
        assert_eq!(m.colour_correctness, 1.0, "{prompt}: {m:?}");
        assert!(m.shape_correctness >= 0.5, "{prompt}: {m:?}");
    }
}

#[test]
fn wrong_colours_and_shapes_lower_correctness() {
    let geometry = Geometry::cpu();
    for prompt in prompts(7, 0.5, 16) {
        let n = prompt.objects().len() as f64;
        // The first object in a colour no object of the prompt has.
        let unused = *Colour::ALL
            .iter()
            .find(|c| prompt.objects().iter().all(|o| o.colour != **c))
            .unwrap();
        let first = prompt.objects()[0];
        let recoloured = altered(&prompt, |o| {
            if o == first {
                SceneObject { colour: unused, ..o }
            } else {
                o
            }
        });
        let m = clip_metrics(&render(&recoloured, &geometry), &prompt, &geometry).unwrap();
        assert_eq!(m.colour_correctness, (n - 1.0) / n, "{prompt}: {m:?}");
        assert!(m.trajectory_error_px > 5.0, "the missing object is penalised: {m:?}");
        // Every object in the next shape.
        let reshaped = altered(&prompt, |o| SceneObject {
            shape: Shape::ALL[(o.shape as usize + 1) % 3],
            ..o
        });
        let m = clip_metrics(&render(&reshaped, &geometry), &prompt, &geometry).unwrap();
        assert_eq!(m.shape_correctness, 0.0, "{prompt}: {m:?}");
        assert_eq!(m.colour_correctness, 1.0, "{prompt}: {m:?}");
    }
}

#[test]
fn a_frozen_clip_has_no_dynamics() {
    let geometry = Geometry::gpu();
    let prompt = &prompts(8, 0.0, 4)[0];
    let video = render(prompt, &geometry);
    let first_frame: Vec<[f32; 3]> = (0..geometry.height * geometry.width)
        .map(|p| video.rgb01(0, p / geometry.width, p % geometry.width))
        .collect();
    let mut frozen = video.clone();
    for frame in 1..geometry.frames {
        for (p, &rgb) in first_frame.iter().enumerate() {
            frozen.set_rgb01(frame, p / geometry.width, p % geometry.width, rgb);
        }
    }
    let m = clip_metrics(&frozen, prompt, &geometry).unwrap();
    assert_eq!(
        (m.frame_difference, m.centroid_speed, m.centroid_speed_ratio),
        (0.0, 0.0, 0.0)
    );
    assert!(m.trajectory_error_px > 3.0, "{m:?}");
}

#[test]
fn psnr_compares_two_clips() {
    let geometry = Geometry::cpu();
    let [a, b] = [0, 1].map(|i| render(&prompts(9, 0.0, 4)[i], &geometry));
    assert_eq!(psnr(&a, &a).unwrap(), PSNR_CAP_DB);
    // Every value off by 0.02 in [-1, 1]: 0.01 in [0, 1], 40 dB.
    let shifted_values = a.values().iter().map(|v| v - 0.02).collect();
    let shifted = Video::from_values(a.frames(), a.height(), a.width(), shifted_values).unwrap();
    assert!((psnr(&a, &shifted).unwrap() - 40.0).abs() < 1e-3);
    assert!(psnr(&a, &b).unwrap() < 20.0);
    assert!(psnr(&a, &render(&prompts(9, 0.0, 4)[0], &Geometry::gpu())).is_err());
}
