//! Defines the JSON-lines sinks: a file (appended, fsynced before a batch is acknowledged) and
//! stdout (flushed per batch; durable only as far as the reader is).

use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice::{CheckpointCommit, DeadLetter, Record, Sink, SinkError};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Appends each record as one JSON line to a file. A batch is acknowledged after `fsync`.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    buffer: Vec<u8>,
}

impl JsonlSink {
    /// A sink appending to `path` (created if missing).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            file: None,
            buffer: Vec::new(),
        }
    }

    async fn open(&mut self) -> Result<&mut tokio::fs::File, SinkError> {
        if self.file.is_none() {
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(|e| io_error(&self.path, e))?;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    async fn write_lines(&mut self, lines: impl Iterator<Item = Value>) -> Result<(), SinkError> {
        encode(&mut self.buffer, lines)?;
        let path = self.path.clone();
        let buffer = std::mem::take(&mut self.buffer);
        let file = self.open().await?;
        let written = async {
            file.write_all(&buffer).await?;
            file.sync_data().await
        }
        .await;
        self.buffer = buffer;
        if let Err(error) = written {
            // The file may hold part of the batch: reopen on the next try; the replay duplicates
            // at most this batch's lines (at-least-once, as documented for this sink).
            self.file = None;
            return Err(io_error(&path, error));
        }
        Ok(())
    }
}

fn encode(buffer: &mut Vec<u8>, lines: impl Iterator<Item = Value>) -> Result<(), SinkError> {
    buffer.clear();
    for line in lines {
        serde_json::to_writer(&mut *buffer, &line)
            .map_err(|e| SinkError::data("record is not serializable").with_source(e))?;
        buffer.push(b'\n');
    }
    Ok(())
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

impl Sink<Value> for JsonlSink {
    async fn write(
        &mut self,
        batch: &[Value],
        _: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        self.write_lines(batch.iter().cloned()).await
    }
}

impl Sink<DeadLetter> for JsonlSink {
    async fn write(
        &mut self,
        batch: &[DeadLetter],
        _: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        self.write_lines(batch.iter().map(Record::to_json)).await
    }
}

/// Writes each record as one JSON line to stdout.
#[derive(Debug, Default)]
pub struct StdoutSink {
    buffer: Vec<u8>,
}

impl StdoutSink {
    /// A stdout sink.
    pub fn new() -> Self {
        Self::default()
    }

    async fn write_lines(&mut self, lines: impl Iterator<Item = Value>) -> Result<(), SinkError> {
        encode(&mut self.buffer, lines)?;
        let mut out = tokio::io::stdout();
        write_flush(&mut out, &self.buffer)
            .await
            .map_err(|e| SinkError::transient("write stdout").with_source(e))
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(out: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).await?;
    out.flush().await
}

impl Sink<Value> for StdoutSink {
    async fn write(
        &mut self,
        batch: &[Value],
        _: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        self.write_lines(batch.iter().cloned()).await
    }
}

impl Sink<DeadLetter> for StdoutSink {
    async fn write(
        &mut self,
        batch: &[DeadLetter],
        _: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        self.write_lines(batch.iter().map(Record::to_json)).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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

    #[tokio::test]
    async fn a_missing_directory_is_a_fatal_error() {
        let mut sink = JsonlSink::new("/nonexistent-dir/out.jsonl");
        let error = Sink::<Value>::write(&mut sink, &[json!({})], None)
            .await
            .unwrap_err();
        assert_eq!(error.class(), sluice::ErrorClass::Fatal);
    }
}
