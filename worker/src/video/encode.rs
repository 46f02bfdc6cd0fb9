//! The two containers. GIF: every frame quantised to its own 256-colour palette (NeuQuant),
//! looping. MP4: H.264 (constrained baseline, every frame coded, one IDR first) in an
//! ISO-BMFF file whose avcC box carries the SPS and PPS, samples length-prefixed (AVCC), so
//! browsers and players open it without a system codec on our side. Odd sizes are padded
//! by repeating the last row or column (4:2:0 needs even sizes) and the padding is cropped
//! away in the track's display size.

use super::Video;
use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, QpRange, RateControlMode};
use openh264::formats::{RgbSliceU8, YUVBuffer, YUVSource};
use std::io::Cursor;

/// GIF bytes of `video` at `fps` (GIF delays are in hundredths of a second).
pub fn write_gif(video: &Video, fps: u32) -> Result<Vec<u8>> {
    let (w, h) = (
        u16::try_from(video.width).context("GIF frames are at most 65,535 pixels wide")?,
        u16::try_from(video.height).context("GIF frames are at most 65,535 pixels high")?,
    );
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, w, h, &[]).context("starting the GIF")?;
        encoder
            .set_repeat(gif::Repeat::Infinite)
            .context("setting the GIF to loop")?;
        let delay = (100.0 / f64::from(fps)).round().max(1.0) as u16;
        for rgb in &video.frames {
            // Speed 10 is gif's suggested balance of palette quality and time.
            let mut frame = gif::Frame::from_rgb_speed(w, h, rgb, 10);
            frame.delay = delay;
            encoder.write_frame(&frame).context("writing a GIF frame")?;
        }
    }
    Ok(out)
}

/// `video` padded to even width and height.
fn even(video: &Video) -> Video {
    let (w, h) = (video.width + video.width % 2, video.height + video.height % 2);
    if (w, h) == (video.width, video.height) {
        return video.clone();
    }
    let frames = video
        .frames
        .iter()
        .map(|f| {
            let mut out = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                let row = &f[y.min(video.height - 1) * video.width * 3..][..video.width * 3];
                out.extend_from_slice(row);
                if w > video.width {
                    out.extend_from_slice(&row[row.len() - 3..]);
                }
            }
            out
        })
        .collect();
    Video {
        width: w,
        height: h,
        frames,
    }
}

/// NAL units of an Annex B stream, without their start codes.
fn nal_units(annex_b: &[u8]) -> Vec<&[u8]> {
    openh264::nal_units(annex_b)
        .map(|nal| {
            // `nal_units` keeps the start code (00 00 01, maybe after more zeros) and may
            // leave the next code's leading zero at the end.
            let skip = nal.iter().take_while(|b| **b == 0).count() + 1;
            let body = &nal[skip.min(nal.len())..];
            let end = body.len() - body.iter().rev().take_while(|b| **b == 0).count();
            &body[..end]
        })
        .filter(|nal| !nal.is_empty())
        .collect()
}

const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_IDR: u8 = 5;

/// MP4 (H.264) bytes of `video` at `fps`.
pub fn write_mp4(video: &Video, fps: u32) -> Result<Vec<u8>> {
    let padded = even(video);
    let (w, h) = (padded.width, padded.height);
    ensure!(
        w <= 4096 && h <= 2304,
        "H.264 here is limited to 4096x2304, got {w}x{h}"
    );
    // No rate control, a fixed band of fine quantisers: previews are short and small, and
    // what they show is the model's output, not the codec's.
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(
            ((w * h) as u32).saturating_mul(fps).saturating_mul(2).max(500_000),
        ))
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .rate_control_mode(RateControlMode::Off)
        .qp(QpRange::new(18, 24))
        .skip_frames(false);
    let mut encoder = Encoder::with_api_config(openh264::OpenH264API::from_source(), config)
        .map_err(|e| anyhow!("starting the H.264 encoder: {e}"))?;
    let (mut sps, mut pps) = (None, None);
    let mut samples = Vec::with_capacity(padded.frames.len());
    for (i, rgb) in padded.frames.iter().enumerate() {
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(rgb, (w, h)));
        let stream = encoder
            .encode(&yuv)
            .map_err(|e| anyhow!("H.264 encoding frame {i}: {e}"))?
            .to_vec();
        let mut sample = Vec::new();
        let mut sync = false;
        for nal in nal_units(&stream) {
            match nal[0] & 0x1f {
                NAL_SPS => {
                    sps.get_or_insert_with(|| nal.to_vec());
                }
                NAL_PPS => {
                    pps.get_or_insert_with(|| nal.to_vec());
                }
                kind => {
                    sync |= kind == NAL_IDR;
                    sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    sample.extend_from_slice(nal);
                }
            }
        }
        ensure!(!sample.is_empty(), "the H.264 encoder skipped frame {i}");
        samples.push((sample, sync));
    }
    let (Some(sps), Some(pps)) = (sps, pps) else {
        bail!("the H.264 encoder wrote no SPS/PPS");
    };

    let mut writer = mp4::Mp4Writer::write_start(
        Cursor::new(Vec::new()),
        &mp4::Mp4Config {
            major_brand: str::parse("isom").expect("four letters"),
            minor_version: 512,
            compatible_brands: ["isom", "iso2", "avc1", "mp41"]
                .iter()
                .map(|b| str::parse(b).expect("four letters"))
                .collect(),
            timescale: 1000,
        },
    )
    .context("starting the MP4")?;
    // The track's ticks: 1000 per frame.
    let timescale = fps * 1000;
    writer
        .add_track(&mp4::TrackConfig {
            track_type: mp4::TrackType::Video,
            timescale,
            language: "und".into(),
            media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                width: video.width as u16,
                height: video.height as u16,
                seq_param_set: sps,
                pic_param_set: pps,
            }),
        })
        .context("adding the MP4 video track")?;
    for (i, (bytes, is_sync)) in samples.into_iter().enumerate() {
        writer
            .write_sample(
                1,
                &mp4::Mp4Sample {
                    start_time: i as u64 * 1000,
                    duration: 1000,
                    rendering_offset: 0,
                    is_sync,
                    bytes: Bytes::from(bytes),
                },
            )
            .context("writing an MP4 sample")?;
    }
    writer.write_end().context("finishing the MP4")?;
    Ok(writer.into_writer().into_inner())
}

/// The frames of an MP4 this module wrote (its first video track), decoded to RGB8:
/// how tests and `surgeryctl previews` users can check a file round-trips.
pub fn read_mp4_frames(bytes: &[u8]) -> Result<Video> {
    let size = bytes.len() as u64;
    let mut reader = mp4::Mp4Reader::read_header(Cursor::new(bytes), size).context("reading the MP4 header")?;
    let track_id = reader
        .tracks()
        .iter()
        .find(|(_, t)| t.track_type().ok() == Some(mp4::TrackType::Video))
        .map(|(id, _)| *id)
        .ok_or_else(|| anyhow!("the MP4 has no video track"))?;
    let track = &reader.tracks()[&track_id];
    let (width, height) = (track.width() as usize, track.height() as usize);
    let avc = track
        .trak
        .mdia
        .minf
        .stbl
        .stsd
        .avc1
        .as_ref()
        .ok_or_else(|| anyhow!("the video track is not H.264"))?;
    let mut annex_b = Vec::new();
    for nal in avc
        .avcc
        .sequence_parameter_sets
        .iter()
        .chain(&avc.avcc.picture_parameter_sets)
    {
        annex_b.extend_from_slice(&[0, 0, 0, 1]);
        annex_b.extend_from_slice(&nal.bytes);
    }
    let mut decoder = openh264::decoder::Decoder::new().map_err(|e| anyhow!("starting the H.264 decoder: {e}"))?;
    let mut frames = Vec::new();
    for id in 1..=reader.sample_count(track_id).context("counting samples")? {
        let Some(sample) = reader.read_sample(track_id, id).context("reading a sample")? else {
            continue;
        };
        let mut rest: &[u8] = &sample.bytes;
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            ensure!(rest.len() >= 4 + len, "sample {id} is truncated");
            annex_b.extend_from_slice(&[0, 0, 0, 1]);
            annex_b.extend_from_slice(&rest[4..4 + len]);
            rest = &rest[4 + len..];
        }
        if let Some(yuv) = decoder
            .decode(&annex_b)
            .map_err(|e| anyhow!("H.264 decoding sample {id}: {e}"))?
        {
            frames.push(crop_rgb(&yuv, width, height));
        }
        annex_b.clear();
    }
    for yuv in decoder.flush_remaining().map_err(|e| anyhow!("H.264 flushing: {e}"))? {
        frames.push(crop_rgb(&yuv, width, height));
    }
    Ok(Video { width, height, frames })
}

fn crop_rgb(yuv: &openh264::decoder::DecodedYUV<'_>, width: usize, height: usize) -> Vec<u8> {
    let (w, h) = yuv.dimensions();
    let mut rgb = vec![0u8; w * h * 3];
    yuv.write_rgb8(&mut rgb);
    (0..height)
        .flat_map(|y| rgb[y * w * 3..y * w * 3 + width * 3].to_vec())
        .collect()
}
