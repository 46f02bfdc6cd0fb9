//! [`Video`]: the RGB frames of one clip in plain Rust, laid out as the codec's pixel tensor
//! `[3, F, H, W]` (channel-major) with values in `[-1, 1]`, so moving a clip to or from tch is a
//! copy and a view (`codec::video_tensor`, `codec::video_from_tensor`).

/// RGB frames of one clip, `[3, F, H, W]`, values in `[-1, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    frames: usize,
    height: usize,
    width: usize,
    data: Vec<f32>,
}

impl Video {
    /// A video from values laid out `[3, F, H, W]`; `None` when the length does not match.
    pub fn from_values(frames: usize, height: usize, width: usize, data: Vec<f32>) -> Option<Video> {
        (data.len() == 3 * frames * height * width).then_some(Video {
            frames,
            height,
            width,
            data,
        })
    }

    pub fn frames(&self) -> usize {
        self.frames
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// The values, `[3, F, H, W]`.
    pub fn values(&self) -> &[f32] {
        &self.data
    }

    /// Index of channel 0 of pixel `(x, y)` of `frame`; channel `c` is `c * channel_stride()` further.
    pub fn index(&self, frame: usize, y: usize, x: usize) -> usize {
        (frame * self.height + y) * self.width + x
    }

    pub fn channel_stride(&self) -> usize {
        self.frames * self.height * self.width
    }

    /// The pixel's RGB mapped back to `[0, 1]` (`(v + 1) / 2`), where palette colours are defined.
    pub fn rgb01(&self, frame: usize, y: usize, x: usize) -> [f32; 3] {
        let at = self.index(frame, y, x);
        let stride = self.channel_stride();
        std::array::from_fn(|c| (self.data[at + c * stride] + 1.0) * 0.5)
    }

    /// Sets the pixel from RGB in `[0, 1]`.
    pub fn set_rgb01(&mut self, frame: usize, y: usize, x: usize, rgb: [f32; 3]) {
        let at = self.index(frame, y, x);
        let stride = self.channel_stride();
        for (c, value) in rgb.into_iter().enumerate() {
            self.data[at + c * stride] = value * 2.0 - 1.0;
        }
    }

    /// Whether two videos have the same frame count and frame size.
    pub fn same_shape(&self, other: &Video) -> bool {
        (self.frames, self.height, self.width) == (other.frames, other.height, other.width)
    }
}
