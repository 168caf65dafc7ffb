//! The `file` connector: a JSON-lines file as a replayable source.
//!
//! Each line is one record (a [`sluice::Row`]), or several when it is an array of objects; the cursor is the byte offset just after the line, in one partition
//! named after the file, so a restart resumes exactly at the next line. With `follow` the source
//! tails the file as it grows; a line is emitted only once its newline is written, so a writer
//! caught mid-line is never read half. Without `follow` the session finishes at the end of the
//! file, and a last line without a newline is read as it is (or dead-lettered if it does not
//! parse). A file shorter than its saved cursor (truncated, replaced) is a fatal error: resuming
//! would skip or repeat data, so the operator decides (`sluice checkpoints reset`).

mod config;
mod connector;
mod source;

pub use config::FileConfig;
pub use connector::File;
pub use source::FileSource;
