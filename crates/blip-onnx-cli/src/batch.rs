//! `blip-onnx batch requests.jsonl -o results.jsonl`: OpenAI Batch API files, answered offline.
//!
//! Each line is answered by the server's own `/v1/chat/completions` route, run in this process
//! without a socket ([`blip_server::InProcess`]): the same request layer, admission and engine
//! batching, so a line's answer is exactly what `POST` to `blip-onnx serve` returns. Lines run a
//! few at a time (their images share vision batches) and are written in input order; a line that
//! cannot be read or answered gets its error line and the others are answered. The results file is
//! written under a temporary name and renamed when complete.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use blip_openai::batch::{BatchResult, read_line};
use indicatif::{ProgressBar, ProgressStyle};
use tower::ServiceExt;

/// Exit code when every line was read but some were answered with an error.
pub const SOME_LINES_FAILED: u8 = 3;

#[derive(clap::Args)]
pub struct BatchCmd {
    #[command(flatten)]
    pub serve: crate::hub::ServeCmd,
    /// Batch API input: one `{"custom_id", "method": "POST", "url": "/v1/chat/completions",
    /// "body"}` per line.
    pub input: PathBuf,
    /// Results file (JSONL, one line per input line, in input order).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing results file.
    #[arg(long)]
    pub force: bool,
    /// Lines answered at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

pub fn run(cmd: BatchCmd) -> Result<u8> {
    if cmd.output.exists() && !cmd.force {
        bail!("{} exists (--force replaces it)", cmd.output.display());
    }
    let input = std::fs::File::open(&cmd.input)
        .with_context(|| format!("opening {}", cmd.input.display()))?;
    let lines: Vec<String> = std::io::BufReader::new(input)
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", cmd.input.display()))?;
    let mut args = crate::hub::serve_args(cmd.serve)?;
    // Offline work waits its turn instead of being refused: no request deadline to speak of.
    args.request_timeout = args.request_timeout.max(24.0 * 3600.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (answered, failed) =
        runtime.block_on(answer_all(args, lines, &cmd.output, cmd.concurrency.max(1)))?;
    eprintln!(
        "batch: {answered} lines answered, {failed} with an error -> {}",
        cmd.output.display()
    );
    Ok(if failed > 0 { SOME_LINES_FAILED } else { 0 })
}

/// One result line for input line `number` (1-based).
async fn answer(router: axum::Router, number: usize, line: String) -> (String, bool) {
    let result = match read_line(number, &line) {
        Err((custom_id, e)) => BatchResult::unreadable(number, custom_id, e),
        Ok(item) => {
            let body = serde_json::to_vec(&item.body).unwrap_or_default();
            let request = axum::http::Request::post(blip_openai::batch::BATCH_URLS[0])
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body));
            match request {
                Err(e) => BatchResult::unreadable(
                    number,
                    Some(item.custom_id),
                    blip_openai::OpenAiError::new(400, "invalid_line", e.to_string()),
                ),
                Ok(request) => match router.oneshot(request).await {
                    Err(never) => match never {},
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                            .await
                            .unwrap_or_default();
                        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                            serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
                        });
                        BatchResult::answered(number, &item.custom_id, status, body)
                    }
                },
            }
        }
    };
    let ok = result.error.is_none()
        && result
            .response
            .as_ref()
            .is_some_and(|r| r.status_code == 200);
    (serde_json::to_string(&result).unwrap_or_default(), ok)
}

async fn answer_all(
    args: blip_server::ServeArgs,
    lines: Vec<String>,
    output: &Path,
    concurrency: usize,
) -> Result<(usize, usize)> {
    let server = blip_server::InProcess::start(args).await?;
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut staged = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let todo: Vec<(usize, String)> = lines
        .into_iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(todo.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} lines {per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut answered, mut failed) = (0, 0);
    let mut running = VecDeque::new();
    let mut pending = todo.into_iter();
    loop {
        while running.len() < concurrency {
            let Some((number, line)) = pending.next() else {
                break;
            };
            running.push_back(tokio::spawn(answer(server.router.clone(), number, line)));
        }
        let Some(next) = running.pop_front() else {
            break;
        };
        let (text, ok) = next.await.context("a batch line's task failed")?;
        writeln!(staged, "{text}").context("writing the results")?;
        if ok {
            answered += 1;
        } else {
            failed += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    server.stop().await?;
    staged.as_file().sync_all().context("writing the results")?;
    staged
        .persist(output)
        .with_context(|| format!("renaming the results into {}", output.display()))?;
    Ok((answered, failed))
}
