//! Text in, video out, through real processes: a diffusers pipeline folder (the tiny
//! teacher as transformer/, a tiny umT5 and its tokenizer, a tiny Wan VAE) and a JSON
//! Lines prompt file go to a coordinator and two workers. The encode stage's shards must
//! hold exactly what the umT5 code gives for those prompts (each row its prompt, each
//! negative its own or the spec's), the whole recipe must finish on them, and the evaluate
//! stage's previews must come back through `surgeryctl previews` as videos that decode.
//! A text prompt file without a text encoder fails the job with a message naming the fix.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use surgery_core::layout;
use surgery_e2e::*;
use surgery_worker::text::{PromptTokenizer, Umt5Encoder, wan_prompt_embeds};
use surgery_worker::video::read_mp4_frames;
use tch::{Device, Kind, Tensor};

fn coordinator_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-coordinator"))
}

fn worker_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-worker"))
}

const LIMIT: Duration = Duration::from_secs(900);

fn golden(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker/tests").join(path)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A Wan pipeline folder as diffusers lays it out, from the project's tiny models.
fn pipeline(dir: &Path) -> PathBuf {
    let root = dir.join("pipeline");
    copy_dir(&dir.join("models/tiny-teacher"), &root.join("transformer"));
    copy_dir(&golden("golden_umt5/encoder"), &root.join("text_encoder"));
    copy_dir(&golden("golden_umt5/tokenizer"), &root.join("tokenizer"));
    copy_dir(&golden("golden_vae/tiny"), &root.join("vae"));
    std::fs::write(
        root.join("model_index.json"),
        r#"{"_class_name": "WanPipeline", "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLWan"]}"#,
    )
    .unwrap();
    root
}

const PROMPTS: [&str; 12] = [
    "a red square moves to the left",
    "a blue disc bounces   off the wall",
    "two green triangles &amp; a yellow square",
    "a cat walks across a sunny garden",
    "waves roll onto a beach at dusk",
    "a car drives through the rain",
    "a bird flies over a mountain lake",
    "snow falls on a quiet street",
    "a dog chases a ball in the park",
    "fireworks over a city at night",
    "a train crosses a bridge",
    "leaves blow in the autumn wind",
];

/// Prompt 5 brings its own negative prompt; the others take the spec's.
fn prompts_file(dir: &Path) -> PathBuf {
    let lines: Vec<String> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i == 5 {
                serde_json::json!({"prompt": p, "negative_prompt": "overexposed, static"}).to_string()
            } else {
                serde_json::json!({"prompt": p}).to_string()
            }
        })
        .collect();
    let path = dir.join("prompts.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn read_tensors(path: &Path) -> std::collections::BTreeMap<String, Tensor> {
    surgery_worker::model::weights::read_safetensors(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_prompts_are_encoded_sampled_and_previewed() {
    let dir = tempfile::tempdir().unwrap();
    // init-demo's tiny teacher, and its spec with the pipeline and the prompt file in.
    tiny_job(worker_bin(), dir.path(), "warm-up", &[]).unwrap();
    let root = pipeline(dir.path());
    let prompts = prompts_file(dir.path());
    let teacher_url = format!("file://{}", root.display());
    let prompts_url = format!("file://{}", prompts.display());
    let yaml = tiny_spec(
        "text",
        &[
            ("file://.demo/models/tiny-teacher", &teacher_url),
            ("file://.demo/data/prompts.safetensors", &prompts_url),
            (
                "  finetune_data: capture\n",
                "  finetune_data: capture\n  negative_prompt: blurry\n",
            ),
        ],
    );

    let coordinator = Coordinator::start(coordinator_bin(), &dir.path().join("coordinator"), FAST).unwrap();
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|i| WorkerProcess::start(worker_bin(), &coordinator, &format!("w{i}"), dir.path()).unwrap())
        .collect();
    let logs = || cluster_logs(&coordinator, &workers);
    let mut jobs = coordinator.jobs().await.unwrap();
    let job_id = submit(&mut jobs, "text", &yaml).await.unwrap().job.unwrap().id;
    let view = wait_for_job(&mut jobs, &job_id, LIMIT).await.unwrap();
    assert_eq!(
        view.job.as_ref().unwrap().state(),
        pb_succeeded(),
        "{}\n{}",
        describe_job(&view),
        logs()
    );
    let encode: Vec<_> = view.tasks.iter().filter(|t| t.id.starts_with("encode/")).collect();
    assert_eq!(encode.len(), 3, "12 prompts, 4 a shard");

    // The shards hold what the umT5 code makes of the prompts, row for row.
    let job_dir = coordinator.object_root().join(layout::job_root(&job_id));
    let tokenizer = PromptTokenizer::load(&root.join("tokenizer")).unwrap();
    let encoder = Umt5Encoder::load(&root.join("text_encoder"), Device::Cpu, Kind::Float).unwrap();
    let texts: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    let want = wan_prompt_embeds(&tokenizer, &encoder, &texts, 8).unwrap();
    let negatives = ["blurry".to_string(), "overexposed, static".to_string()];
    let want_negative = wan_prompt_embeds(&tokenizer, &encoder, &negatives, 8).unwrap();
    for shard in 0..3u32 {
        let got = read_tensors(&job_dir.join(layout::encode_shard(shard)));
        let rows = want.narrow(0, i64::from(shard) * 4, 4);
        assert!(got["prompt_embeds"].equal(&rows), "shard {shard}'s prompt rows");
        for row in 0..4i64 {
            let index = shard as i64 * 4 + row;
            let which = if index == 5 { 1 } else { 0 };
            assert!(
                got["negative_embeds"].get(row).equal(&want_negative.get(which)),
                "prompt {index}'s negative is {}",
                negatives[which as usize]
            );
        }
    }
    assert!(
        want.get(0).abs().sum(Kind::Float).double_value(&[]) > 0.0,
        "the embeddings are not all padding"
    );

    // Previews: two held-out prompts, downloaded through the coordinator, decode to
    // teacher | student clips of the job's video size.
    let out = dir.path().join("previews");
    let ctl = Command::new(env!("CARGO_BIN_EXE_e2e-surgeryctl"))
        .args(["previews", &job_id, "--dir", out.to_str().unwrap()])
        .env("SURGERY_ADDR", coordinator.url())
        .env_remove("SURGERY_TOKEN")
        .output()
        .unwrap();
    assert!(ctl.status.success(), "{}", String::from_utf8_lossy(&ctl.stderr));
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "prompt-0008.gif",
            "prompt-0008.mp4",
            "prompt-0009.gif",
            "prompt-0009.mp4"
        ]
    );
    let video = read_mp4_frames(&std::fs::read(out.join("prompt-0008.mp4")).unwrap()).unwrap();
    assert_eq!((video.frames.len(), video.height, video.width), (9, 64, 96 * 2 + 2));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job_dir.join(layout::EVALUATE_REPORT)).unwrap()).unwrap();
    assert_eq!(report["previews"].as_array().unwrap().len(), 2);
    assert!(report["previews_note"].is_null());

    // Text prompts and a bare transformer folder: no encoder to run, said plainly.
    let bare = format!("file://{}", root.join("transformer").display());
    let txt = dir.path().join("prompts.txt");
    std::fs::write(&txt, PROMPTS.join("\n")).unwrap();
    let txt_url = format!("file://{}", txt.display());
    let yaml = tiny_spec(
        "no-encoder",
        &[
            ("file://.demo/models/tiny-teacher", &bare),
            ("file://.demo/data/prompts.safetensors", &txt_url),
        ],
    );
    let job_id = submit(&mut jobs, "no-encoder", &yaml).await.unwrap().job.unwrap().id;
    let view = wait_for_job(&mut jobs, &job_id, LIMIT).await.unwrap();
    let job = view.job.unwrap();
    assert_eq!(job.state(), pb_failed());
    assert!(
        job.failure.contains("so the job needs a text encoder") && job.failure.contains("teacher.text_encoder"),
        "{}",
        job.failure
    );
}

fn pb_succeeded() -> surgery_proto::v1::JobState {
    surgery_proto::v1::JobState::Succeeded
}

fn pb_failed() -> surgery_proto::v1::JobState {
    surgery_proto::v1::JobState::Failed
}
