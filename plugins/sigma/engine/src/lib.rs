//! The Sigma engine: everything SigmaForge knows about Sigma rules and Windows event logs.
//!
//! One implementation serves the CLI (`sigmaforge hunt`, `sigmaforge check`) and the reward
//! plugin (compiled to `wasm32-wasip2`), so what an analyst sees and what the model is rewarded
//! for can never drift apart.
//!
//! Module map:
//! - [`event`]: the in-memory event model (interned field names, pre-lowered values).

pub mod event;
