//! Defines the error types of every boundary of the runtime and the class each error carries.
//!
//! The class decides what the runtime does with an error, so that no caller has to parse
//! messages: a [`ErrorClass::Transient`] error is retried with backoff and loses nothing, a
//! [`ErrorClass::Fatal`] error stops the pipeline with one clear message, and a
//! [`ErrorClass::Data`] error concerns one input and goes through the resource's poison policy.

use std::error::Error as StdError;

/// A boxed cause, kept as `#[source]` so the chain survives to the top-level report.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What the runtime does with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Network trouble, 5xx, timeouts, a busy database: retry with backoff; nothing is lost.
    Transient,
    /// Bad credentials, bad configuration, a schema mismatch, a lost lease: stop the pipeline.
    Fatal,
    /// One input is bad (malformed, rejected by the destination): apply the poison policy.
    Data,
}

impl ErrorClass {
    /// The lowercase name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Fatal => "fatal",
            ErrorClass::Data => "data",
        }
    }
}

macro_rules! classified_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, thiserror::Error)]
        #[error("{message}")]
        pub struct $name {
            class: ErrorClass,
            message: String,
            #[source]
            source: Option<BoxError>,
        }

        impl $name {
            /// An error of the given class with a message (no secrets in it).
            pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
                Self { class, message: message.into(), source: None }
            }

            /// A transient error: retried with backoff.
            pub fn transient(message: impl Into<String>) -> Self {
                Self::new(ErrorClass::Transient, message)
            }

            /// A fatal error: stops the pipeline.
            pub fn fatal(message: impl Into<String>) -> Self {
                Self::new(ErrorClass::Fatal, message)
            }

            /// A data error: the poison policy of the resource applies.
            pub fn data(message: impl Into<String>) -> Self {
                Self::new(ErrorClass::Data, message)
            }

            /// Attaches the underlying cause.
            pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
                self.source = Some(source.into());
                self
            }

            /// What the runtime does with this error.
            pub fn class(&self) -> ErrorClass {
                self.class
            }

            /// The message without the cause chain.
            pub fn message(&self) -> &str {
                &self.message
            }
        }
    };
}

classified_error!(
    /// An error of a source session: a disconnect, a protocol violation, a configuration error.
    SourceError
);
classified_error!(
    /// An error of a sink write. On any error the runtime assumes nothing of the batch was written.
    SinkError
);
impl SinkError {
    /// A partial write: every record of the batch was durably written **except** the ones at
    /// `rejected` (indices into the batch, each with the destination's reason). The runtime
    /// applies the poison policy to those and does not write the others again. Only for sinks
    /// without a transaction scope (a transactional write is all or nothing).
    pub fn partial(message: impl Into<String>, rejected: Vec<(usize, String)>) -> Self {
        SinkError::data(message).with_source(PartialWrite { rejected })
    }

    /// The records a [`partial`](Self::partial) write rejected, if this is one.
    pub fn partial_rejections(&self) -> Option<&[(usize, String)]> {
        let source = std::error::Error::source(self)?;
        source
            .downcast_ref::<PartialWrite>()
            .map(|p| p.rejected.as_slice())
    }

    /// The error of a dead-letter write: a data error becomes fatal (a dead letter the
    /// destination rejects has nowhere left to go), anything else stays as it is.
    pub fn for_dead_letters(self) -> Self {
        match self.class() {
            ErrorClass::Data => SinkError::fatal("dead-letter row rejected").with_source(self),
            _ => self,
        }
    }
}

/// The records a partial write rejected (the cause of a [`SinkError::partial`]).
#[derive(Debug, thiserror::Error)]
#[error("{} record(s) rejected, the rest written", rejected.len())]
pub struct PartialWrite {
    /// Indices into the batch, with the destination's reason.
    pub rejected: Vec<(usize, String)>,
}

classified_error!(
    /// An error of a checkpoint store: load, save, or lease.
    StoreError
);
impl StoreError {
    /// Another holder's lease on `pipeline` is live: fatal for a single process (the operator
    /// started it twice), a wait for a fleet worker (`PipelineOptions::wait_for_lease`).
    pub fn lease_held(pipeline: &str, holder: &str) -> Self {
        StoreError::fatal(crate::lease_held_message(pipeline, holder)).with_source(LeaseHeld {
            holder: holder.to_owned(),
        })
    }

    /// This writer's lease was taken by another (its token is stale): it must stop writing.
    /// Fatal for the pipeline that lost it; a fleet retries it later (the new holder may itself
    /// be a stale attempt that lets go).
    pub fn lease_lost(pipeline: &str) -> Self {
        StoreError::fatal(crate::lease_lost_message(pipeline)).with_source(LeaseLost)
    }

    /// Whether this error is a [`lease_lost`](Self::lease_lost) refusal.
    pub fn is_lease_lost(&self) -> bool {
        std::error::Error::source(self).is_some_and(|s| s.is::<LeaseLost>())
    }

    /// The live holder, if this error is a [`lease_held`](Self::lease_held) refusal.
    pub fn lease_holder(&self) -> Option<&str> {
        let source = std::error::Error::source(self)?;
        source
            .downcast_ref::<LeaseHeld>()
            .map(|held| held.holder.as_str())
    }
}

/// The cause of a [`StoreError::lease_lost`].
#[derive(Debug, thiserror::Error)]
#[error("the lease's token is stale")]
pub struct LeaseLost;

/// The cause of a [`StoreError::lease_held`]: who holds the lease.
#[derive(Debug, thiserror::Error)]
#[error("lease held by {holder}")]
pub struct LeaseHeld {
    /// The live holder.
    pub holder: String,
}

/// A transform could not map a payload: always a data error, never retried.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TransformError {
    message: String,
}

impl TransformError {
    /// A transform error with a message saying what is wrong with the payload.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Why a pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The pipeline configuration is invalid (unknown destination, missing dead-letter sink, …).
    #[error("pipeline {pipeline}: invalid configuration: {message}")]
    Config {
        /// The pipeline id.
        pipeline: String,
        /// What is wrong.
        message: String,
    },
    /// The source failed with a non-retryable error.
    #[error("pipeline {pipeline}: source failed")]
    Source {
        /// The pipeline id.
        pipeline: String,
        /// The cause.
        #[source]
        source: SourceError,
    },
    /// A destination failed with a non-retryable error.
    #[error("pipeline {pipeline}: destination {destination} failed")]
    Sink {
        /// The pipeline id.
        pipeline: String,
        /// The destination name.
        destination: String,
        /// The cause.
        #[source]
        source: SinkError,
    },
    /// The checkpoint store failed with a non-retryable error (including a lost lease).
    #[error("pipeline {pipeline}: checkpoint store failed")]
    Store {
        /// The pipeline id.
        pipeline: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// A poison input hit a resource whose policy is `fail`.
    #[error("pipeline {pipeline}: resource {resource}: {reason} (on_error = fail)")]
    Poison {
        /// The pipeline id.
        pipeline: String,
        /// The resource of the input.
        resource: String,
        /// Why the input is poison.
        reason: String,
    },
    /// The pipeline task panicked; the supervisor restarts it from the saved cursors.
    #[error("pipeline {pipeline} panicked: {message}")]
    Panicked {
        /// The pipeline id.
        pipeline: String,
        /// The panic message.
        message: String,
    },
    /// Shutdown was requested but in-flight writes could not finish within the drain timeout.
    /// Nothing is lost: the cursor was not advanced past what was written.
    #[error(
        "pipeline {pipeline}: drain did not finish within {seconds:.1}s; unsaved work will be replayed"
    )]
    DrainTimeout {
        /// The pipeline id.
        pipeline: String,
        /// The drain timeout.
        seconds: f64,
    },
}

impl PipelineError {
    /// What the supervisor does with this error: restart (transient) or stop (anything else).
    pub fn class(&self) -> ErrorClass {
        match self {
            PipelineError::Config { .. } => ErrorClass::Fatal,
            PipelineError::Source { source, .. } => source.class(),
            PipelineError::Sink { source, .. } => source.class(),
            PipelineError::Store { source, .. } => source.class(),
            PipelineError::Poison { .. } => ErrorClass::Data,
            PipelineError::Panicked { .. } | PipelineError::DrainTimeout { .. } => {
                ErrorClass::Transient
            }
        }
    }
}
