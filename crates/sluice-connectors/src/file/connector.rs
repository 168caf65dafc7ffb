//! The composition point of the `file` kind (no built-in pipeline: records have the file's
//! shape, so a table sink needs configured columns).

use sluice::SourceError;

use super::{FileConfig, FileSource};
use crate::template::SourceKind;

/// `kind = "file"`.
#[derive(Debug)]
pub struct File;

impl SourceKind for File {
    type Config = FileConfig;
    type Source = FileSource;

    fn validate(config: &FileConfig) -> Result<(), String> {
        config.validate()
    }

    fn build(config: FileConfig) -> Result<FileSource, SourceError> {
        Ok(FileSource::new(config))
    }
}
