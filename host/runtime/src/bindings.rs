//! Host-side bindings generated from `wit/sigmaforge.wit` (one module per world). The tool
//! world reuses the task world's `host` and `types` bindings so both share one host
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

pub use task::sigmaforge::plugin::host::Level;
pub use task::sigmaforge::plugin::types as wit;
