//! The plain-HTTP side of the coordinator's port: a status page for people (`/`),
//! Prometheus metrics (`/metrics`) and a liveness probe (`/healthz`). Read-only.

use crate::engine::Engine;
use crate::model::TaskState;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use std::fmt::Write;
use std::sync::Arc;

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(engine)
}

async fn healthz(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    // A read that goes through the committer proves the store thread is alive.
    engine.read(|_, _| ()).await;
    (StatusCode::OK, "ok\n")
}

async fn metrics(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        engine.metrics.render(),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn status_page(State(engine): State<Arc<Engine>>) -> Html<String> {
    let page = engine
        .read(|state, now| {
            let schedule = engine.explain(state, now);
            let mut html = String::from(
                "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
                 <title>surgery coordinator</title><style>body{font-family:sans-serif;margin:2em}\
                 table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style>\
                 </head><body><h1>surgery coordinator</h1><h2>Jobs</h2><table><tr><th>job</th><th>state</th>\
                 <th>priority</th><th>tasks done</th><th>running</th><th>why waiting</th></tr>",
            );
            let mut jobs: Vec<_> = state.cluster.jobs.values().collect();
            jobs.sort_by_key(|j| std::cmp::Reverse(j.seq));
            for job in jobs {
                let tasks = &state.cluster.tasks[&job.id].list;
                let done = tasks.iter().filter(|t| t.state == TaskState::Succeeded).count();
                let running = tasks.iter().filter(|t| t.state.is_active()).count();
                let why = schedule.waiting.get(&job.id).map(|w| w.reason.as_str()).unwrap_or("");
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{done}/{}</td><td>{running}</td><td>{}</td></tr>",
                    escape(&job.id),
                    job.state.word(),
                    job.priority,
                    tasks.len(),
                    escape(why)
                );
            }
            html.push_str("</table><h2>Workers</h2><table><tr><th>worker</th><th>host</th><th>status</th><th>slots</th><th>tasks</th><th>last seen</th></tr>");
            for worker in state.cluster.workers.values() {
                let tasks: Vec<String> = state
                    .cluster
                    .leases_of(&worker.id)
                    .into_iter()
                    .map(|(job, task, attempt)| {
                        let s = state.cluster.task(&job, &task).map(|t| t.state.word()).unwrap_or("?");
                        format!("{job}:{task} #{attempt} ({s})")
                    })
                    .collect();
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}s ago</td></tr>",
                    escape(&worker.id),
                    escape(&worker.host),
                    worker.status.name(),
                    worker.slots.len(),
                    escape(&tasks.join(", ")),
                    (now - worker.last_seen_ms) as f64 / 1000.0
                );
            }
            html.push_str("</table></body></html>");
            html
        })
        .await;
    Html(page)
}
