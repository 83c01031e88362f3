//! One module per subcommand.

pub mod check;
pub mod data;
pub mod eval;
pub mod hunt;
pub mod plugin;
pub mod score;
pub mod tasks;
pub mod tool;
pub mod serve;
pub mod run;
