//! Video files round-trip: an MP4 this crate writes decodes (with openh264, from the file's
//! own avcC parameter sets) to the frames it was given, within H.264's loss; a GIF decodes
//! with the `gif` crate to the right size, frame count, delay and colours.

use surgery_worker::video::{self, Video, read_mp4_frames, write_gif, write_mp4};

/// A smooth moving gradient with a bright square: what a sample looks like to a codec.
fn clip(width: usize, height: usize, frames: usize) -> Video {
    let frames = (0..frames)
        .map(|t| {
            let mut rgb = Vec::with_capacity(width * height * 3);
            for y in 0..height {
                for x in 0..width {
                    let inside = (x + 2 * t) % width < width / 4 && y >= height / 3 && y < height / 3 + height / 4;
                    let (r, g, b) = if inside {
                        (230, 40, 40)
                    } else {
                        ((x * 255 / width) as u8, (y * 255 / height) as u8, 90)
                    };
                    rgb.extend([r, g, b]);
                }
            }
            rgb
        })
        .collect();
    Video { width, height, frames }
}

fn psnr(a: &Video, b: &Video) -> f64 {
    let (mut se, mut n) = (0f64, 0usize);
    for (fa, fb) in a.frames.iter().zip(&b.frames) {
        for (x, y) in fa.iter().zip(fb) {
            se += (f64::from(*x) - f64::from(*y)).powi(2);
            n += 1;
        }
    }
    10.0 * (255f64.powi(2) / (se / n as f64)).log10()
}

#[test]
fn an_mp4_decodes_to_the_frames_it_was_given() {
    let original = clip(64, 48, 17);
    let bytes = write_mp4(&original, 16).unwrap();
    assert_eq!(&bytes[4..8], b"ftyp", "an ISO-BMFF file starts with ftyp");
    let decoded = read_mp4_frames(&bytes).unwrap();
    assert_eq!((decoded.width, decoded.height), (64, 48));
    assert_eq!(decoded.frames.len(), 17, "every frame is coded, none skipped");
    let db = psnr(&original, &decoded);
    assert!(db > 30.0, "PSNR {db:.1} dB after H.264");
}

#[test]
fn odd_sizes_are_padded_for_h264_and_cropped_back() {
    let original = clip(33, 21, 3);
    let decoded = read_mp4_frames(&write_mp4(&original, 8).unwrap()).unwrap();
    assert_eq!((decoded.width, decoded.height, decoded.frames.len()), (33, 21, 3));
    let db = psnr(&original, &decoded);
    // Small frames with a sharp red square lose more to 4:2:0 chroma; a wrong crop would
    // land near 10 dB.
    assert!(db > 24.0, "{db:.1} dB");
}

#[test]
fn a_gif_has_every_frame_at_the_frame_rate() {
    let original = clip(32, 32, 5);
    let bytes = write_gif(&original, 16).unwrap();
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let mut decoder = options.read_info(bytes.as_slice()).unwrap();
    assert_eq!((decoder.width(), decoder.height()), (32, 32));
    let mut frames = Vec::new();
    while let Some(frame) = decoder.read_next_frame().unwrap() {
        assert_eq!(frame.delay, 6, "1/16 s in hundredths, rounded");
        frames.push(
            frame
                .buffer
                .chunks(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect::<Vec<u8>>(),
        );
    }
    assert_eq!(frames.len(), 5);
    let decoded = Video {
        width: 32,
        height: 32,
        frames,
    };
    let db = psnr(&original, &decoded);
    assert!(db > 22.0, "{db:.1} dB: a 256-colour palette per frame");
}

#[test]
fn write_picks_the_container_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let original = clip(16, 16, 2);
    video::write(&dir.path().join("a/out.mp4"), &original, 16).unwrap();
    video::write(&dir.path().join("out.gif"), &original, 16).unwrap();
    assert!(dir.path().join("a/out.mp4").metadata().unwrap().len() > 100);
    let err = video::write(&dir.path().join("out.webm"), &original, 16).unwrap_err();
    assert!(
        err.to_string().ends_with("the video's name must end in .mp4 or .gif"),
        "{err}"
    );
    let mut broken = original.clone();
    broken.frames[1].pop();
    let err = video::write(&dir.path().join("b.mp4"), &broken, 16).unwrap_err();
    assert!(err.to_string().contains("frame 1 holds 767 bytes"), "{err}");
    assert!(!dir.path().join("b.mp4").exists(), "nothing is written for bad input");
}
