//! Decoded video to 8-bit frames, as WanPipeline's `postprocess_video` followed by
//! diffusers' conversion for images and video files (`numpy_to_pil`, `export_to_video`
//! with imageio): `(x * 0.5 + 0.5).clamp(0, 1)` in the video's dtype, then
//! `round(x * 255)` in fp32 (half to even, as NumPy). diffusers' legacy OpenCV export
//! truncates instead of rounding; we do not follow it.

use tch::{Kind, Tensor};

/// One decoded video [C, F, H, W] in [-1, 1] (e.g. `decode(..).get(b)`) to frames
/// [F, H, W, C] of `u8` on the same device, the layout video encoders take.
pub fn to_u8_frames(video: &Tensor) -> Tensor {
    let size = video.size();
    assert!(size.len() == 4, "a video must be [C, F, H, W], got {size:?}");
    let unit = (video * 0.5 + 0.5).clamp(0.0, 1.0);
    (unit.permute([1, 2, 3, 0]).to_kind(Kind::Float) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn endpoints_and_rounding() {
        // [C=1, F=1, H=1, W=5]
        let video = Tensor::from_slice(&[-2.0f32, -1.0, 0.0, 1.0, 3.0]).view([1, 1, 1, 5]);
        let frames = to_u8_frames(&video);
        assert_eq!(frames.size(), [1, 1, 5, 1]);
        let values: Vec<u8> = Vec::try_from(frames.flatten(0, -1)).unwrap();
        // 0.0 -> 0.5 * 255 = 127.5, rounded half to even: 128.
        assert_eq!(values, [0, 0, 128, 255, 255]);
        assert_eq!(to_u8_frames(&video.to_device(Device::Cpu)).kind(), Kind::Uint8);
    }
}
