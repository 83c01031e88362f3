//! placeholder: filled in by the trainer work.
