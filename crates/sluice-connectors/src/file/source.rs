//! Defines the file source session: seek to the saved offset, read complete lines, emit them
//! with the offset after each, follow or finish at the end.

use std::sync::Arc;

use serde_json::Value;
use sluice::{
    Checkpoint, Datum, Envelope, Rejected, ResourceName, Row, SessionEnd, Shapes, Source,
    SourceContext, SourceError,
};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};

use super::FileConfig;

/// Reads a JSON-lines file. See the [module docs](super).
#[derive(Debug)]
pub struct FileSource {
    config: FileConfig,
    partition: Arc<str>,
    resource: ResourceName,
    shapes: Shapes,
}

impl FileSource {
    /// A source for `config`.
    pub fn new(config: FileConfig) -> Self {
        let partition = config
            .partition
            .clone()
            .unwrap_or_else(|| config.path.display().to_string())
            .into();
        let resource = config.resource.as_str().into();
        Self {
            config,
            partition,
            resource,
            shapes: Shapes::default(),
        }
    }

    fn resource_of(&self, row: &Row) -> ResourceName {
        match self
            .config
            .resource_field
            .as_deref()
            .and_then(|f| row.get(f))
        {
            Some(Datum::Text(name)) => (**name).into(),
            _ => self.resource.clone(),
        }
    }

    /// Emits the records of one line: an object is one row, an array of objects one row per
    /// element (the last one carrying the line's cursor); anything else is rejected with its
    /// reason.
    async fn emit_line(
        &self,
        ctx: &SourceContext<Row>,
        line: &[u8],
        offset: u64,
    ) -> Result<(), SourceError> {
        let checkpoint = Checkpoint::new(self.partition.clone(), offset);
        let text = trim(line);
        if text.is_empty() {
            return Ok(());
        }
        let rows = match serde_json::from_slice::<Value>(text) {
            Ok(Value::Object(fields)) => vec![Row::from_map(fields, &self.shapes)],
            Ok(Value::Array(items)) if items.iter().all(Value::is_object) => items
                .into_iter()
                .filter_map(|item| Row::from_json(item, &self.shapes).ok())
                .collect(),
            Ok(_) => return self
                .reject(
                    ctx,
                    text,
                    checkpoint,
                    format!(
                        "line ending at byte {offset} is not a JSON object or an array of objects"
                    ),
                )
                .await,
            Err(error) => {
                return self
                    .reject(
                        ctx,
                        text,
                        checkpoint,
                        format!("line ending at byte {offset} is not JSON: {error}"),
                    )
                    .await;
            }
        };
        // Only the line's last record carries its cursor: a session stopped (or a process
        // killed) after the first records of a line must read the whole line again, not skip
        // the rest of it.
        let last = rows.len().saturating_sub(1);
        for (index, payload) in rows.into_iter().enumerate() {
            ctx.emit(Envelope {
                resource: self.resource_of(&payload),
                payload,
                checkpoint: (index == last).then(|| checkpoint.clone()),
            })
            .await?;
        }
        Ok(())
    }

    async fn reject(
        &self,
        ctx: &SourceContext<Row>,
        text: &[u8],
        checkpoint: Checkpoint,
        reason: String,
    ) -> Result<(), SourceError> {
        ctx.reject(Rejected {
            resource: self.resource.clone(),
            raw: String::from_utf8_lossy(text).into_owned(),
            reason,
            checkpoint: Some(checkpoint),
        })
        .await
    }
}

fn trim(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let start = line[..end]
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(end);
    &line[start..end]
}

fn io_error(config: &FileConfig, what: &str, error: std::io::Error) -> SourceError {
    let class = match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            sluice::ErrorClass::Fatal
        }
        _ => sluice::ErrorClass::Transient,
    };
    SourceError::new(class, format!("{what} {}", config.path.display())).with_source(error)
}

impl Source for FileSource {
    type Payload = Row;

    fn name(&self) -> &str {
        "file"
    }

    async fn run(&mut self, ctx: SourceContext<Row>) -> Result<SessionEnd, SourceError> {
        let start = ctx
            .resume_after(&self.partition)
            .and_then(|p| p.as_int())
            .unwrap_or(0);
        let file = tokio::fs::File::open(&self.config.path)
            .await
            .map_err(|e| io_error(&self.config, "open", e))?;
        let length = file
            .metadata()
            .await
            .map_err(|e| io_error(&self.config, "stat", e))?
            .len();
        if length < start {
            return Err(truncated(&self.config, length, start));
        }
        let mut reader = BufReader::with_capacity(1 << 16, file);
        reader
            .seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| io_error(&self.config, "seek", e))?;
        tracing::info!(path = %self.config.path.display(), offset = start, follow = self.config.follow, "reading file");
        let mut offset = start;
        let mut line = Vec::with_capacity(1024);
        loop {
            let read = reader
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| io_error(&self.config, "read", e))?;
            if line.ends_with(b"\n") {
                offset += line.len() as u64;
                self.emit_line(&ctx, &line, offset).await?;
                line.clear();
                continue;
            }
            // End of the file, maybe inside a line (`line` keeps the partial bytes).
            if read > 0 {
                continue;
            }
            if !self.config.follow {
                if !line.is_empty() {
                    offset += line.len() as u64;
                    self.emit_line(&ctx, &line, offset).await?;
                }
                return Ok(SessionEnd::Finished);
            }
            ctx.alive();
            tokio::time::sleep(self.config.poll()).await;
            let length = tokio::fs::metadata(&self.config.path)
                .await
                .map_err(|e| io_error(&self.config, "stat", e))?
                .len();
            if length < offset + line.len() as u64 {
                return Err(truncated(&self.config, length, offset));
            }
        }
    }
}

fn truncated(config: &FileConfig, length: u64, offset: u64) -> SourceError {
    SourceError::fatal(format!(
        "{} is {length} bytes, shorter than its saved cursor at byte {offset}: it was truncated or replaced; \
         run `sluice checkpoints reset` to read it from the start",
        config.path.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::{io::Write, sync::Arc, time::Duration};

    use serde_json::json;
    use sluice::{
        BatchLimits, MemoryStore, Pipeline, PipelineOptions, Resource, Resources,
        testing::RecordingSink,
    };
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn limits() -> BatchLimits {
        BatchLimits {
            max_records: 100,
            max_bytes: usize::MAX,
            linger: Duration::from_millis(10),
        }
    }

    fn pipeline(
        config: FileConfig,
        store: Arc<MemoryStore>,
        sink: RecordingSink<Row>,
        dead: RecordingSink<sluice::DeadLetter>,
    ) -> Pipeline<
        FileSource,
        Row,
        RecordingSink<Row>,
        Arc<MemoryStore>,
        RecordingSink<sluice::DeadLetter>,
    > {
        Pipeline::new(
            "f",
            FileSource::new(config),
            store,
            Resources::new().with("lines", Resource::direct("main")),
        )
        .sink("main", sink, limits())
        .dead_letters(dead, limits())
        .options(PipelineOptions {
            commit_interval: Duration::from_millis(10),
            holder: "t".into(),
            ..PipelineOptions::default()
        })
    }

    #[tokio::test]
    async fn resumes_exactly_after_the_last_saved_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"n\":0}\n{\"n\":1}\n").unwrap();
        let store = Arc::new(MemoryStore::new());
        let sink = RecordingSink::new();
        let config = FileConfig {
            partition: Some("in".into()),
            ..FileConfig::new(&path)
        };
        pipeline(
            config.clone(),
            store.clone(),
            sink.clone(),
            RecordingSink::new(),
        )
        .run(CancellationToken::new())
        .await
        .unwrap();
        assert_eq!(
            store.snapshot("f").get("in").and_then(|p| p.as_int()),
            Some(16)
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"n\":2}\n")
            .unwrap();
        pipeline(config, store.clone(), sink.clone(), RecordingSink::new())
            .run(CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            sink.json(),
            vec![json!({"n": 0}), json!({"n": 1}), json!({"n": 2})]
        );
    }

    #[tokio::test]
    async fn a_followed_file_emits_a_line_only_once_it_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"n\":0}\n{\"n\":").unwrap();
        let store = Arc::new(MemoryStore::new());
        let sink = RecordingSink::new();
        let config = FileConfig {
            follow: true,
            poll_ms: 5,
            partition: Some("in".into()),
            ..FileConfig::new(&path)
        };
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(
            pipeline(config, store.clone(), sink.clone(), RecordingSink::new())
                .run(shutdown.clone()),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            sink.json(),
            vec![json!({"n": 0})],
            "the half line was not read"
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"1}\n")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        handle.await.unwrap().unwrap();
        assert_eq!(sink.json(), vec![json!({"n": 0}), json!({"n": 1})]);
        assert_eq!(
            store.snapshot("f").get("in").and_then(|p| p.as_int()),
            Some(16)
        );
    }

    #[tokio::test]
    async fn bad_lines_are_dead_lettered_and_a_truncated_last_line_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(
            &path,
            "{\"n\":0}\nnot json\n\n[{\"n\":1},{\"n\":2}]\n5\n[{\"n\":3},4]\n{\"n\":",
        )
        .unwrap();
        let store = Arc::new(MemoryStore::new());
        let (sink, dead) = (RecordingSink::new(), RecordingSink::new());
        pipeline(FileConfig::new(&path), store, sink.clone(), dead.clone())
            .run(CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            sink.json(),
            vec![json!({"n": 0}), json!({"n": 1}), json!({"n": 2})],
            "an array of objects is one row per element"
        );
        let dead = dead.rows();
        let raws: Vec<_> = dead.iter().map(|d| d.payload.clone()).collect();
        assert_eq!(raws, ["not json", "5", "[{\"n\":3},4]", "{\"n\":"]);
        assert!(
            dead[1].reason.contains("not a JSON object"),
            "{:?}",
            dead[1]
        );
    }

    /// A sink whose writes wait for permits.
    #[derive(Clone)]
    struct Gated {
        permits: Arc<tokio::sync::Semaphore>,
        inner: RecordingSink<Row>,
    }

    impl sluice::Sink<Row> for Gated {
        async fn write(
            &mut self,
            batch: &[Row],
            commit: Option<&sluice::CheckpointCommit<'_>>,
        ) -> Result<(), sluice::SinkError> {
            self.permits.acquire().await.expect("open").forget();
            self.inner.write(batch, commit).await
        }
    }

    /// A session stopped inside a line that is an array of objects does not save the line's
    /// end: the next session reads the whole line again, so none of its records is lost.
    #[tokio::test]
    async fn a_session_stopped_inside_an_array_line_reads_the_line_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let items: Vec<String> = (0..100).map(|n| format!("{{\"n\":{n}}}")).collect();
        std::fs::write(&path, format!("[{}]\n", items.join(","))).unwrap();
        let store = Arc::new(MemoryStore::new());
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let gated = Gated {
            permits: permits.clone(),
            inner: RecordingSink::new(),
        };
        let one = BatchLimits {
            max_records: 1,
            ..limits()
        };
        let options = PipelineOptions {
            channel_capacity: 1,
            commit_interval: Duration::from_millis(10),
            holder: "t".into(),
            ..PipelineOptions::default()
        };
        let first = Pipeline::new(
            "f",
            FileSource::new(FileConfig::new(&path)),
            store.clone(),
            Resources::new().with("lines", Resource::direct("main")),
        )
        .sink("main", gated.clone(), one)
        .dead_letters(RecordingSink::new(), limits())
        .options(options);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(first.run(shutdown.clone()));
        sluice::testing::eventually("the first row", Duration::from_secs(5), || {
            !gated.inner.rows().is_empty()
        })
        .await;
        // Stop inside the line: the source is blocked on the full channel.
        shutdown.cancel();
        permits.add_permits(1000);
        handle.await.unwrap().unwrap();
        let written = gated.inner.rows().len();
        assert!(written < 100, "stopped inside the line ({written} written)");
        let sink = RecordingSink::new();
        pipeline(
            FileConfig::new(&path),
            store,
            sink.clone(),
            RecordingSink::new(),
        )
        .run(CancellationToken::new())
        .await
        .unwrap();
        let mut seen: Vec<u64> = gated
            .inner
            .json()
            .iter()
            .chain(sink.json().iter())
            .map(|r| r["n"].as_u64().unwrap())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen,
            (0..100).collect::<Vec<_>>(),
            "every record of the line"
        );
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_cursor_is_a_fatal_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"n\":0}\n{\"n\":1}\n").unwrap();
        let store = Arc::new(MemoryStore::new());
        pipeline(
            FileConfig::new(&path),
            store.clone(),
            RecordingSink::new(),
            RecordingSink::new(),
        )
        .run(CancellationToken::new())
        .await
        .unwrap();
        std::fs::write(&path, "{\"n\":9}\n").unwrap();
        let error = pipeline(
            FileConfig::new(&path),
            store,
            RecordingSink::new(),
            RecordingSink::new(),
        )
        .run(CancellationToken::new())
        .await
        .unwrap_err();
        assert_eq!(error.class(), sluice::ErrorClass::Fatal);
        assert!(
            sluice::report(&error).contains("truncated or replaced"),
            "{}",
            sluice::report(&error)
        );
    }
}
