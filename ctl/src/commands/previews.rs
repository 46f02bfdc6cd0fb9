//! `surgeryctl previews JOB [--dir DIR]`: downloads the videos the evaluate stage made
//! (held-out prompts, teacher and student side by side, MP4 and GIF) through the
//! coordinator, which reads them from the object store. Each file is written under a
//! temporary name and renamed when whole, so an interrupted download leaves no half file.

use super::Context;
use crate::error::CtlError;
use crate::exit;
use serde::Serialize;
use std::path::{Path, PathBuf};
use surgery_core::ids;
use surgery_core::layout::EVALUATE_PREVIEWS;
use surgery_proto::v1::{self as pb, ErrorKind, GetArtifactRequest, GetJobRequest, ServiceError, Stage, TaskState};

#[derive(Debug, Serialize)]
struct Downloaded {
    artifact: String,
    file: String,
    bytes: u64,
}

/// The preview artifacts of a job's evaluate task, or why there are none.
pub fn preview_paths(job_id: &str, evaluate: Option<&pb::Task>) -> Result<Vec<String>, String> {
    let Some(task) = evaluate else {
        return Err(format!("job {job_id} has no evaluate task"));
    };
    if task.state() != TaskState::Succeeded {
        return Err(format!(
            "job {job_id} has no previews yet: its evaluate task is {}",
            crate::view::task_state_word(task.state())
        ));
    }
    let paths: Vec<String> = task
        .result_artifacts
        .iter()
        .filter(|a| a.starts_with(&format!("{EVALUATE_PREVIEWS}/")))
        .cloned()
        .collect();
    if paths.is_empty() {
        return Err(format!(
            "job {job_id}'s evaluate stage made no previews (stages.evaluate.previews is 0, or the teacher has no VAE: `surgeryctl logs {job_id} --task evaluate` says which)"
        ));
    }
    Ok(paths)
}

pub async fn run(ctx: &Context, job_id: &str, output: &Path) -> Result<u8, CtlError> {
    let mut client = ctx.client().await?;
    let response = client
        .get_job(GetJobRequest {
            job_id: job_id.to_string(),
            include_tasks: true,
            task_stages: vec![Stage::Evaluate as i32],
        })
        .await
        .map_err(CtlError::rpc)?
        .into_inner();
    let evaluate = response.tasks.iter().find(|t| t.id == ids::EVALUATE_TASK);
    let paths = preview_paths(job_id, evaluate).map_err(|message| CtlError::Service {
        error: ServiceError::new(ErrorKind::NotFound, message),
        file: None,
    })?;
    std::fs::create_dir_all(output).map_err(|source| CtlError::Write {
        path: output.display().to_string(),
        source,
    })?;
    for artifact in paths {
        let mut stream = client
            .get_artifact(GetArtifactRequest {
                job_id: job_id.to_string(),
                path: artifact.clone(),
            })
            .await
            .map_err(CtlError::rpc)?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(CtlError::rpc)? {
            data.extend_from_slice(&chunk.data);
        }
        let name = artifact.rsplit('/').next().unwrap_or(&artifact);
        let file = output.join(name);
        write_whole(&file, &data)?;
        let view = Downloaded {
            artifact,
            file: file.display().to_string(),
            bytes: data.len() as u64,
        };
        ctx.printer.item(&view, |v| v.file.clone())?;
    }
    Ok(exit::OK)
}

fn write_whole(file: &Path, data: &[u8]) -> Result<(), CtlError> {
    let part = PathBuf::from(format!("{}.part", file.display()));
    let err = |source| CtlError::Write {
        path: file.display().to_string(),
        source,
    };
    std::fs::write(&part, data).map_err(err)?;
    std::fs::rename(&part, file).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: TaskState, artifacts: &[&str]) -> pb::Task {
        pb::Task {
            id: ids::EVALUATE_TASK.into(),
            state: state as i32,
            result_artifacts: artifacts.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_succeeded_evaluate_has_previews() {
        let err = preview_paths("j", Some(&task(TaskState::Pending, &[]))).unwrap_err();
        assert_eq!(err, "job j has no previews yet: its evaluate task is pending");
        let err = preview_paths("j", None).unwrap_err();
        assert_eq!(err, "job j has no evaluate task");
        let err = preview_paths("j", Some(&task(TaskState::Succeeded, &["evaluate/report.json"]))).unwrap_err();
        assert!(err.starts_with("job j's evaluate stage made no previews"), "{err}");
        let done = task(
            TaskState::Succeeded,
            &[
                "evaluate/previews/prompt-0008.mp4",
                "evaluate/previews/prompt-0008.gif",
                "evaluate/report.json",
            ],
        );
        assert_eq!(
            preview_paths("j", Some(&done)).unwrap(),
            ["evaluate/previews/prompt-0008.mp4", "evaluate/previews/prompt-0008.gif"]
        );
    }
}
