//! Defines the JSON-lines sink: a file (appended, fsynced before a batch is acknowledged) or
//! stdout (flushed per batch; durable only as far as the reader is). One sink per file: a torn
//! line is cut back to the last length this sink acknowledged, which assumes no other writer.

use std::path::{Path, PathBuf};

use sluice::{CheckpointCommit, Record, Sink, SinkError};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes each record as one JSON line, to a file (appended, fsynced before the batch is
/// acknowledged) or to stdout (flushed per batch).
#[derive(Debug)]
pub struct JsonlSink {
    target: Target,
    buffer: Vec<u8>,
}

#[derive(Debug)]
enum Target {
    File {
        path: PathBuf,
        file: Option<tokio::fs::File>,
        /// The length of the file after the last acknowledged batch: a failed write is cut
        /// back to it, so a retry never appends to a torn line.
        good: Option<u64>,
    },
    Stdout,
}

impl JsonlSink {
    /// A sink appending to `path` (created if missing).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            target: Target::File {
                path: path.as_ref().to_path_buf(),
                file: None,
                good: None,
            },
            buffer: Vec::new(),
        }
    }

    /// A sink writing to stdout.
    pub fn stdout() -> Self {
        Self {
            target: Target::Stdout,
            buffer: Vec::new(),
        }
    }

    /// Writes the encoded buffer (whole lines) and makes it durable.
    async fn write_buffer(&mut self) -> Result<(), SinkError> {
        match &mut self.target {
            Target::Stdout => write_flush(&mut tokio::io::stdout(), &self.buffer)
                .await
                .map_err(|e| SinkError::transient("write stdout").with_source(e)),
            Target::File { path, file, good } => {
                if file.is_none() {
                    let (opened, length) = open_repaired(path, *good)
                        .await
                        .map_err(|e| io_error(path, e))?;
                    *file = Some(opened);
                    *good = Some(length);
                }
                let handle = file.as_mut().expect("opened above");
                let written = async {
                    handle.write_all(&self.buffer).await?;
                    handle.sync_data().await
                }
                .await;
                match written {
                    Ok(()) => {
                        *good = good.map(|g| g + self.buffer.len() as u64);
                        Ok(())
                    }
                    Err(error) => {
                        // The file may hold part of the batch: cut it back now (and again when
                        // it is reopened, should this fail), so the replay starts on a clean
                        // line boundary and duplicates nothing. Never grown: a file shorter
                        // than we left it was rotated or cut by someone else.
                        if let Some(length) = *good
                            && handle.metadata().await.is_ok_and(|m| m.len() > length)
                        {
                            let _ = handle.set_len(length).await;
                        }
                        *file = None;
                        Err(io_error(path, error))
                    }
                }
            }
        }
    }
}

/// Opens `path` for appending, cut back to `good` bytes when known, else to its last complete
/// line (a crash may have left a torn one: its batch was not acknowledged and is replayed).
async fn open_repaired(path: &Path, good: Option<u64>) -> std::io::Result<(tokio::fs::File, u64)> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .await?;
    let now = file.metadata().await?.len();
    let length = match good {
        // Never grown: a file shorter than we left it was rotated or cut by someone else.
        Some(length) if length <= now => length,
        _ => last_line_end(path).await?,
    };
    if now != length {
        file.set_len(length).await?;
        file.sync_data().await?;
    }
    Ok((file, length))
}

/// The length of `path` up to and including its last newline, read backwards in blocks.
async fn last_line_end(path: &Path) -> std::io::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    let mut end = file.metadata().await?.len();
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.seek(std::io::SeekFrom::Start(start)).await?;
        file.read_exact(chunk).await?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn io_error(path: &Path, error: std::io::Error) -> SinkError {
    use std::io::ErrorKind::*;
    let class = match error.kind() {
        PermissionDenied | NotFound | IsADirectory | ReadOnlyFilesystem => {
            sluice::ErrorClass::Fatal
        }
        _ => sluice::ErrorClass::Transient,
    };
    SinkError::new(class, format!("write {}", path.display())).with_source(error)
}

async fn write_flush<W: AsyncWrite + Unpin>(out: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).await?;
    out.flush().await
}

impl<R: Record> Sink<R> for JsonlSink {
    async fn write(
        &mut self,
        batch: &[R],
        _: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        self.buffer.clear();
        for record in batch {
            record.write_json(&mut self.buffer);
            self.buffer.push(b'\n');
        }
        self.write_buffer().await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[tokio::test]
    async fn batches_append_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = JsonlSink::new(&path);
        Sink::<Value>::write(&mut sink, &[json!({"a": 1}), json!({"a": 2})], None)
            .await
            .unwrap();
        Sink::<Value>::write(&mut sink, &[json!({"a": 3})], None)
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
    }

    /// A torn last line (a write that failed or a process killed half way) is cut back before
    /// the next batch: the file holds whole lines only, none of them twice.
    #[tokio::test]
    async fn a_torn_line_is_cut_back_before_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let mut sink = JsonlSink::new(&path);
        Sink::<Value>::write(&mut sink, &[json!({"a": 3}), json!({"a": 4})], None)
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\":4}\n");
    }

    #[tokio::test]
    async fn a_missing_directory_is_a_fatal_error() {
        let mut sink = JsonlSink::new("/nonexistent-dir/out.jsonl");
        let error = Sink::<Value>::write(&mut sink, &[json!({})], None)
            .await
            .unwrap_err();
        assert_eq!(error.class(), sluice::ErrorClass::Fatal);
    }
}
