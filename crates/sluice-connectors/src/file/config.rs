//! Defines the file connector's configuration.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// Configuration of a [`super::FileSource`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The JSON-lines file.
    pub path: PathBuf,
    /// The resource of every line (unless `resource_field` names one in the line).
    #[serde(default = "default_resource")]
    pub resource: String,
    /// A top-level string field whose value names the line's resource.
    #[serde(default)]
    pub resource_field: Option<String>,
    /// Keep reading as the file grows (`true`), or finish at its end (`false`).
    #[serde(default)]
    pub follow: bool,
    /// How often a followed file is checked for new lines, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// The partition name of the cursor (default: the path as given).
    #[serde(default)]
    pub partition: Option<String>,
}

fn default_resource() -> String {
    "lines".into()
}

fn default_poll_ms() -> u64 {
    200
}

impl FileConfig {
    /// A configuration for `path` with the defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            resource: default_resource(),
            resource_field: None,
            follow: false,
            poll_ms: default_poll_ms(),
            partition: None,
        }
    }

    /// Checks the configuration (what `run` would refuse).
    ///
    /// # Errors
    /// What is wrong, for the user.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("path is empty".into());
        }
        if self.resource.is_empty() {
            return Err("resource is empty".into());
        }
        if self.partition.as_deref() == Some("") {
            return Err("partition is empty".into());
        }
        if self.resource_field.as_deref() == Some("") {
            return Err("resource_field is empty".into());
        }
        Ok(())
    }

    /// The poll interval.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms.max(1))
    }
}
