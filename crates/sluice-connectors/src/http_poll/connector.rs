//! The composition point of the `http_poll` kind (no built-in pipeline: records have the API's
//! shape, so a table sink needs configured columns).

use sluice::SourceError;

use super::{HttpPollConfig, HttpPollSource};
use crate::template::SourceKind;

/// `kind = "http_poll"`.
#[derive(Debug)]
pub struct HttpPoll;

impl SourceKind for HttpPoll {
    type Config = HttpPollConfig;
    type Source = HttpPollSource;

    fn validate(config: &HttpPollConfig) -> Result<(), String> {
        config.validate()
    }

    fn build(config: HttpPollConfig) -> Result<HttpPollSource, SourceError> {
        HttpPollSource::new(config)
    }
}
