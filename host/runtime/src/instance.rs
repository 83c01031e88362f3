//! One warm plugin instance: a Store (its sandbox state) plus the instantiated component, and
//! the guarded call that turns traps, timeouts and memory-cap hits into diagnostics.
//!
//! Any error out of a wasmtime call poisons the whole Store (wasm-notes 3(d)), so a failed call
//! marks the instance for replacement; the pool then builds a fresh Store, instantiates and
//! calls `init` again.

use std::time::Duration;

use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store, Trap};

use crate::bindings::{References, ReferencesIndices, task, tool};
use crate::contract::{Contract, World};
use crate::engine::ticks_for;
use crate::floats::IeeeFloats;
use crate::sandbox::{Grants, State};

/// The linked-but-not-instantiated plugin, one per loaded plugin: the `InstancePre` and the
/// export indices looked up once, so each new instance only instantiates and loads them.
#[derive(Clone)]
pub enum Pre {
    Task {
        pre: InstancePre<State>,
        indices: task::TaskPluginIndices,
        /// The `references` interface, when the component exports it (WIT ≥ 0.1.1).
        references: Option<ReferencesIndices>,
    },
    Tool(tool::ToolPluginPre<State>),
}

impl Pre {
    pub fn new(pre: InstancePre<State>, contract: &Contract) -> wasmtime::Result<Self> {
        Ok(match contract.world {
            World::TaskPlugin => {
                let indices = task::TaskPluginIndices::new(&pre)?;
                let references = if contract.references { Some(ReferencesIndices::new(&pre)?) } else { None };
                Pre::Task { pre, indices, references }
            }
            World::ToolPlugin => Pre::Tool(tool::ToolPluginPre::new(pre)?),
        })
    }
}

/// The instantiated exports of one world.
pub enum Bindings {
    Task {
        task: task::TaskPlugin,
        /// Present when the plugin exports `references`.
        references: Option<References>,
    },
    Tool(tool::ToolPlugin),
}

/// Why a call produced no usable result.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong, naming the plugin and the call.
    pub message: String,
    /// The Store can't be used again (trap, timeout, memory cap, host error).
    pub poisoned: bool,
}

pub struct Instance {
    store: Store<State>,
    bindings: Bindings,
    plugin: std::sync::Arc<str>,
}

impl Instance {
    /// A fresh Store, instantiation and `init` (under the init time limit).
    pub fn start(engine: &Engine, pre: &Pre, grants: &Grants, init_limit: Duration) -> Result<Instance, Failure> {
        let plugin = grants.plugin.clone();
        let state = grants.new_state().map_err(|e| Failure { message: format!("{e:#}"), poisoned: true })?;
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks_for(init_limit));
        // Instantiation runs guest code (start functions, constructors) too.
        let ieee = IeeeFloats::enter();
        let bindings = match pre {
            Pre::Task { pre, indices, references } => pre.instantiate(&mut store).and_then(|instance| {
                let task = indices.load(&mut store, &instance)?;
                let references = references.as_ref().map(|r| r.load(&mut store, &instance)).transpose()?;
                Ok(Bindings::Task { task, references })
            }),
            Pre::Tool(p) => p.instantiate(&mut store).map(Bindings::Tool),
        };
        drop(ieee);
        let bindings = match bindings {
            Ok(b) => b,
            Err(e) => return Err(describe(&plugin, "instantiate", init_limit, &store, e)),
        };
        let mut inst = Instance { store, bindings, plugin };
        let init = inst.call("init", init_limit, |b, s| match b {
            Bindings::Task { task, .. } => task.sigmaforge_plugin_plugin().call_init(s),
            Bindings::Tool(t) => t.sigmaforge_plugin_plugin().call_init(s),
        })?;
        if let Err(msg) = init {
            return Err(Failure { message: format!("plugin `{}`: init failed: {msg}{}", inst.plugin, inst.memory_note()), poisoned: true });
        }
        Ok(inst)
    }

    /// Calls into the guest with a wall-clock limit. `what` names the export in diagnostics.
    pub fn call<R>(
        &mut self,
        what: &str,
        limit: Duration,
        f: impl FnOnce(&Bindings, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        self.store.data().output.clear();
        self.store.data_mut().limiter.denied = None;
        self.store.set_epoch_deadline(ticks_for(limit));
        let _ieee = IeeeFloats::enter();
        match f(&self.bindings, &mut self.store) {
            Ok(r) => Ok(r),
            Err(e) => Err(describe(&self.plugin, what, limit, &self.store, e)),
        }
    }

    /// " (memory cap of N MiB was hit)" when the last call was refused memory, else "".
    /// Used when the guest survived the refusal and returned an error itself.
    pub fn memory_note(&self) -> String {
        let l = &self.store.data().limiter;
        match l.denied {
            Some(_) => format!(" (memory cap of {} MiB was hit)", l.cap() >> 20),
            None => String::new(),
        }
    }
}

/// Turns a wasmtime error into a diagnostic. Order matters: a memory-cap refusal usually
/// surfaces as an `unreachable` trap (Rust's allocation-failure abort), so it is checked first.
fn describe(plugin: &str, what: &str, limit: Duration, store: &Store<State>, err: wasmtime::Error) -> Failure {
    let state = store.data();
    let trap = err.downcast_ref::<Trap>().copied();
    let mut message = if trap == Some(Trap::Interrupt) {
        format!("plugin `{plugin}`: time limit of {} ms exceeded in `{what}`", limit.as_millis())
    } else if let Some(denied) = state.limiter.denied {
        format!(
            "plugin `{plugin}`: memory cap of {} MiB exceeded in `{what}` (the guest asked for {} MiB)",
            state.limiter.cap() >> 20,
            denied.div_ceil(1 << 20)
        )
    } else if let Some(trap) = trap {
        format!("plugin `{plugin}`: trapped in `{what}`: {trap}")
    } else {
        format!("plugin `{plugin}`: `{what}` failed: {}", first_line(&format!("{err:#}")))
    };
    let tail = state.output.tail();
    if !tail.is_empty() {
        // The last lines of the guest's stderr: a Rust panic message, for instance.
        let lines: Vec<&str> = tail.lines().rev().take(3).collect();
        let shown: Vec<&str> = lines.into_iter().rev().collect();
        let mut text = shown.join(" | ");
        if text.len() > 600 {
            let cut = (0..=600).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        message.push_str(&format!("; plugin output: {text}"));
    }
    Failure { message, poisoned: true }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
