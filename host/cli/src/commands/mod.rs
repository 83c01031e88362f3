//! One module per subcommand.

pub mod check;
pub mod data;
pub mod eval;
pub mod hunt;
pub mod hunt_report;
pub mod model;
pub mod plugin;
pub mod run;
pub mod score;
pub mod serve;
pub mod sft;
pub mod tasks;
pub mod tool;
