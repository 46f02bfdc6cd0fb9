//! The region of one object in one frame: the pixels of a mask that lie in 8-connected
//! components of at least a minimum size, and the statistics the metrics read from them
//! (area, centroid, bounding-box fill ratio). The ground truth uses the same rule on the
//! rendered labels, so a clip measures exactly its own truth.
//!
//! Why drop small components: a stray pixel that happens to fall near a palette colour (noise,
//! a blurred edge) should neither make an object "present" nor drag its centroid across the
//! frame. Uniform noise puts about 1 % of its pixels near a palette colour, almost all of them
//! in components of one or two pixels.

use super::scene::Geometry;

/// Components smaller than this fraction of an object's box area (`object_size^2`) are dropped.
pub const MIN_REGION_FRACTION: f64 = 0.04;

/// The smallest component kept for `geometry`: 4 % of the object's box, at least 2 pixels
/// (6 pixels for 12 px objects, 3 for 8 px objects).
pub fn min_region_pixels(geometry: &Geometry) -> usize {
    let box_area = (geometry.object_size * geometry.object_size) as f64;
    ((box_area * MIN_REGION_FRACTION).ceil() as usize).max(2)
}

/// The kept pixels of a mask in one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Kept pixels, as `y * width + x`, in raster order.
    pub pixels: Vec<usize>,
    /// Mean pixel centre `(x + 0.5, y + 0.5)` of the kept pixels.
    pub centroid: [f64; 2],
    /// Pixel columns and rows spanned by the kept pixels, inclusive: `[x0, y0, x1, y1]`.
    pub bbox: [usize; 4],
}

impl Region {
    pub fn area(&self) -> usize {
        self.pixels.len()
    }

    /// Area over the area of the pixel bounding box: about 1 for a square, 0.785 for a disc,
    /// 0.5 for a triangle.
    pub fn fill_ratio(&self) -> f64 {
        let [x0, y0, x1, y1] = self.bbox;
        self.area() as f64 / ((x1 - x0 + 1) * (y1 - y0 + 1)) as f64
    }
}

/// The region of `mask` (`height * width`, raster order): the union of its 8-connected
/// components of at least `min_pixels` pixels; `None` when there is none.
pub fn region_of(mask: &[bool], width: usize, height: usize, min_pixels: usize) -> Option<Region> {
    debug_assert_eq!(mask.len(), width * height);
    let mut seen = vec![false; mask.len()];
    let mut kept = Vec::new();
    let mut stack = Vec::new();
    let mut component = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        component.clear();
        while let Some(pixel) = stack.pop() {
            component.push(pixel);
            let (x, y) = (pixel % width, pixel / width);
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let neighbour = ny * width + nx;
                    if mask[neighbour] && !seen[neighbour] {
                        seen[neighbour] = true;
                        stack.push(neighbour);
                    }
                }
            }
        }
        if component.len() >= min_pixels {
            kept.extend_from_slice(&component);
        }
    }
    if kept.is_empty() {
        return None;
    }
    kept.sort_unstable();
    let (mut sum_x, mut sum_y) = (0.0, 0.0);
    let mut bbox = [usize::MAX, usize::MAX, 0, 0];
    for &pixel in &kept {
        let (x, y) = (pixel % width, pixel / width);
        sum_x += x as f64 + 0.5;
        sum_y += y as f64 + 0.5;
        bbox = [bbox[0].min(x), bbox[1].min(y), bbox[2].max(x), bbox[3].max(y)];
    }
    let n = kept.len() as f64;
    Some(Region {
        pixels: kept,
        centroid: [sum_x / n, sum_y / n],
        bbox,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let width = rows[0].len();
        let bits = rows.iter().flat_map(|row| row.chars().map(|c| c == '#')).collect();
        (bits, width, rows.len())
    }

    #[test]
    fn small_components_are_dropped_and_diagonals_connect() {
        let (bits, w, h) = mask(&[
            "#.......", //
            "........", "...##...", "...##...", ".....#..", "........",
        ]);
        // The 2x2 block and its diagonal neighbour form one component of 5; the corner pixel is alone.
        let region = region_of(&bits, w, h, 2).unwrap();
        assert_eq!(region.area(), 5);
        assert_eq!(region.bbox, [3, 2, 5, 4]);
        assert_eq!(
            region.centroid,
            [(3.5 * 2.0 + 4.5 * 2.0 + 5.5) / 5.0, (2.5 * 2.0 + 3.5 * 2.0 + 4.5) / 5.0]
        );
        assert!((region.fill_ratio() - 5.0 / 9.0).abs() < 1e-12);
        assert_eq!(region_of(&bits, w, h, 1).unwrap().area(), 6);
        assert!(region_of(&bits, w, h, 6).is_none());
    }
}
