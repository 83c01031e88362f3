//! Host-side bindings generated from `wit/sigmaforge.wit` (one module per world). The tool and
//! reference worlds reuse the task world's `host` and `types` bindings so all share one host
//! implementation and one set of record types.

pub mod task {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "task-plugin",
    });
}

pub mod tool {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "tool-plugin",
        with: {
            "sigmaforge:plugin/host": crate::bindings::task::sigmaforge::plugin::host,
            "sigmaforge:plugin/types": crate::bindings::task::sigmaforge::plugin::types,
        },
    });
}

/// The `reference-task-plugin` world (0.1.1): the task world plus `references`. Only its
/// `references` export is used; an instance's task exports come from [`task`] so that
/// 0.1.0 plugins, which lack `references`, share every other code path.
pub mod reference {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "reference-task-plugin",
        with: {
            "sigmaforge:plugin/host": crate::bindings::task::sigmaforge::plugin::host,
            "sigmaforge:plugin/types": crate::bindings::task::sigmaforge::plugin::types,
        },
    });
}

pub use reference::exports::sigmaforge::plugin::references::{Guest as References, GuestIndices as ReferencesIndices};
pub use task::sigmaforge::plugin::host::Level;
pub use task::sigmaforge::plugin::types as wit;
