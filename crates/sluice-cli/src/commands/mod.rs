//! One file per subcommand.

pub(crate) mod audit;
pub(crate) mod checkpoints;
pub(crate) mod codegen;
pub(crate) mod demo;
pub(crate) mod run;
pub(crate) mod sim;
pub(crate) mod status;
pub(crate) mod validate;
