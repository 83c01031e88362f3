//! Loading plugins and calling them: `Runtime` (engine + cache), `TaskPlugin`, `ToolPlugin`,
//! `PluginSet`, and `Inspection` for `sigmaforge plugin inspect`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::task;
use crate::config::{PluginConfig, PluginsConfig};
use crate::contract::{self, Contract, World};
use crate::engine::{CompileCache, new_engine, sha256_hex};
use crate::instance::{Bindings, Failure, Pre};
use crate::log::LogSink;
use crate::pool::Pool;
use crate::sandbox::{Grants, State};
use crate::types::{PluginInfo, ScoreResult, Task, TaskRef, ToolSpec};
use crate::validate;

/// Settings of the runtime itself (per-plugin settings are in `PluginConfig`).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled components are cached; None disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Where plugin log lines go.
    pub log: LogSink,
    /// Instance slots of the engine's pooling allocator, shared by all plugins.
    pub max_instances: u32,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { cache_dir: CompileCache::default_dir(), log: LogSink::default(), max_instances: 256 }
    }
}

/// The plugin host: one per process. Cheap to clone, Send + Sync.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<State>>,
    cache: CompileCache,
    log: LogSink,
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> Result<Self> {
        let engine = new_engine(options.max_instances)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow!("linking WASI: {e}"))?;
        // The host and types interfaces are the same for both worlds; linking them once
        // through the task world's bindings serves tool plugins too.
        task::TaskPlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(|e| anyhow!("linking the host interface: {e}"))?;
        Ok(Runtime { engine, linker: Arc::new(linker), cache: CompileCache::new(options.cache_dir), log: options.log })
    }

    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.dir()
    }

    /// Compiles (or loads from the cache) and checks a component without instantiating it.
    fn prepare(&self, file: &Path) -> Result<(Pre, Contract, Vec<u8>)> {
        let wasm = std::fs::read(file).with_context(|| format!("reading plugin {}", file.display()))?;
        let component = self.cache.load(&self.engine, file, &wasm)?;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(n, _)| n.to_string()).collect();
        let contract = contract::identify(file, &imports, &exports)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow!("{}: imports something this host does not provide (only WASI 0.2 and {}/host): {e}", file.display(), contract::PACKAGE)
        })?;
        let pre = Pre::new(pre, &contract).map_err(|e| anyhow!("{}: does not match the {} world: {e}", file.display(), contract.world))?;
        Ok((pre, contract, wasm))
    }

    /// Loads one plugin: compile/cache, contract check, then one instance is created and its
    /// `init` run, so a plugin that can't start fails here with its own message.
    pub fn load(&self, config: &PluginConfig) -> Result<LoadedPlugin> {
        config.validate()?;
        let (pre, contract, _) = self.prepare(&config.path).with_context(|| format!("loading plugin `{}`", config.name))?;
        let grants = Grants::from_config(config, self.log.clone())?;
        let limits = &config.limits;
        let pool = Pool::new(self.engine.clone(), pre, grants, Duration::from_millis(limits.init_timeout_ms), limits.instance_count());
        let core = Core {
            name: config.name.clone(),
            path: config.path.clone(),
            version: contract.version.to_string(),
            call_limit: Duration::from_millis(limits.call_timeout_ms),
            setup_limit: Duration::from_millis(limits.init_timeout_ms.max(limits.call_timeout_ms)),
            pool,
        };
        let name = core.name.clone();
        let mut lease = core.pool.checkout().map_err(|f| anyhow!(f.message))?;
        let inst = lease.get();
        let limit = core.call_limit;
        let info = inst
            .call("info", limit, |b, s| match b {
                Bindings::Task { task: t, .. } => t.sigmaforge_plugin_plugin().call_info(s),
                Bindings::Tool(t) => t.sigmaforge_plugin_plugin().call_info(s),
            })
            .map_err(|f| anyhow!(f.message))?
            .into();
        let loaded = match contract.world {
            World::TaskPlugin => {
                let (splits, components) = inst
                    .call("splits/components", limit, |b, s| match b {
                        Bindings::Task { task: t, .. } => {
                            let splits = t.sigmaforge_plugin_tasks().call_splits(&mut *s)?;
                            let comps = t.sigmaforge_plugin_reward().call_components(&mut *s)?;
                            Ok((splits, comps))
                        }
                        Bindings::Tool(_) => unreachable!("world checked above"),
                    })
                    .map_err(|f| anyhow!(f.message))?;
                validate::declared(&name, &components).map_err(|e| anyhow!(e))?;
                drop(lease);
                LoadedPlugin::Task(TaskPlugin { core, info, splits, components, references: contract.references })
            }
            World::ToolPlugin => {
                let spec = inst
                    .call("spec", limit, |b, s| match b {
                        Bindings::Tool(t) => t.sigmaforge_plugin_tool().call_spec(s),
                        Bindings::Task { .. } => unreachable!("world checked above"),
                    })
                    .map_err(|f| anyhow!(f.message))?;
                let parameters = serde_json::from_str(&spec.parameters)
                    .map_err(|e| anyhow!("plugin `{name}`: tool `{}` has a parameters schema that is not JSON: {e}", spec.name))?;
                drop(lease);
                let spec = ToolSpec { name: spec.name, description: spec.description, parameters };
                LoadedPlugin::Tool(ToolPlugin { core, info, spec })
            }
        };
        Ok(loaded)
    }

    /// Loads every plugin of a config.
    pub fn load_all(&self, config: &PluginsConfig) -> Result<PluginSet> {
        let mut set = PluginSet::default();
        for plugin in config.plugins.values() {
            match self.load(plugin)? {
                LoadedPlugin::Task(t) => {
                    set.tasks.insert(plugin.name.clone(), Arc::new(t));
                }
                LoadedPlugin::Tool(t) => {
                    set.tools.insert(plugin.name.clone(), Arc::new(t));
                }
            }
        }
        Ok(set)
    }

    /// Loads a `plugins:` map embedded in another config (e.g. a run config): names come from
    /// the keys, relative paths are resolved against `base` (that config file's folder).
    pub fn load_all_map(&self, plugins: &BTreeMap<String, PluginConfig>, base: &Path) -> Result<PluginSet> {
        let mut config = PluginsConfig { plugins: plugins.clone() };
        config.normalize(base);
        self.load_all(&config)
    }

    /// What a component is and offers, for `sigmaforge plugin inspect`. The contract is read
    /// from the component itself; the rest needs `init`, which may need `data`.
    pub fn inspect(&self, file: &Path, data: Option<&Path>) -> Result<Inspection> {
        let (_, contract, wasm) = self.prepare(file)?;
        let mut cfg = PluginConfig::from_path(file);
        if let Some(d) = data {
            cfg = cfg.with_data(d);
        }
        cfg.limits.instances = 1;
        let mut out = Inspection {
            file: file.to_path_buf(),
            sha256: sha256_hex(&wasm),
            size_bytes: wasm.len() as u64,
            world: contract.world,
            wit_version: contract.version.to_string(),
            host_wit_version: contract::HOST_WIT_VERSION.to_string(),
            references: contract.references,
            info: None,
            splits: Vec::new(),
            components: Vec::new(),
            tool: None,
            load_error: None,
        };
        match self.load(&cfg) {
            Ok(LoadedPlugin::Task(t)) => {
                out.info = Some(t.info.clone());
                out.components = t.components.clone();
                for split in &t.splits {
                    let count = t.list_tasks(split).map(|v| v.len()).map_err(|e| format!("{e:#}"));
                    out.splits.push(SplitCount { split: split.clone(), tasks: count.as_ref().ok().copied(), error: count.err() });
                }
            }
            Ok(LoadedPlugin::Tool(t)) => {
                out.info = Some(t.info.clone());
                out.tool = Some(t.spec.clone());
            }
            Err(e) => out.load_error = Some(format!("{e:#}")),
        }
        Ok(out)
    }
}

/// What both plugin kinds share.
struct Core {
    name: String,
    path: PathBuf,
    version: String,
    call_limit: Duration,
    /// For setup calls (`list-tasks`): building a split can mean reading a corpus once, which
    /// is start-up work like `init`, not per-completion work like `score`.
    setup_limit: Duration,
    pool: Pool,
}

impl Core {
    /// Runs `f` on a warm instance; a failure discards the instance.
    fn with_instance<R>(
        &self,
        what: &str,
        limit: Duration,
        f: impl FnOnce(&Bindings, &mut wasmtime::Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let mut lease = self.pool.checkout()?;
        match lease.get().call(what, limit, f) {
            Ok(r) => Ok(r),
            Err(f) => {
                lease.discard();
                Err(f)
            }
        }
    }
}

pub enum LoadedPlugin {
    Task(TaskPlugin),
    Tool(ToolPlugin),
}

impl LoadedPlugin {
    pub fn name(&self) -> &str {
        match self {
            LoadedPlugin::Task(t) => t.name(),
            LoadedPlugin::Tool(t) => t.name(),
        }
    }
}

/// A loaded task plugin. Send + Sync: score from any thread.
pub struct TaskPlugin {
    core: Core,
    info: PluginInfo,
    splits: Vec<String>,
    components: Vec<(String, f64)>,
    /// The component exports `references` (WIT ≥ 0.1.1).
    references: bool,
}

impl TaskPlugin {
    pub fn name(&self) -> &str {
        &self.core.name
    }
    pub fn path(&self) -> &Path {
        &self.core.path
    }
    /// The WIT package version the plugin was built against, e.g. "0.1.0".
    pub fn wit_version(&self) -> &str {
        &self.core.version
    }
    /// Whether the plugin exports the `references` interface (WIT ≥ 0.1.1).
    pub fn has_references(&self) -> bool {
        self.references
    }
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }
    pub fn splits(&self) -> &[String] {
        &self.splits
    }
    /// Reward component names and weights, in the order scores list them.
    pub fn components(&self) -> &[(String, f64)] {
        &self.components
    }
    /// Parallel instances this plugin scores with.
    pub fn instances(&self) -> usize {
        self.core.pool.max()
    }

    /// Creates every instance now (in parallel) instead of on first use.
    pub fn warm_up(&self) -> Result<()> {
        self.core.pool.warm_up().map_err(|f| anyhow!(f.message))
    }

    /// Starts one extra instance (Store + instantiate + `init`) and drops it: what replacing
    /// a poisoned instance costs. For the runtime benchmark.
    #[doc(hidden)]
    pub fn bench_start_instance(&self) -> Result<()> {
        self.core.pool.start_detached().map_err(|f| anyhow!(f.message))
    }

    pub fn list_tasks(&self, split: &str) -> Result<Vec<Task>> {
        if !self.splits.iter().any(|s| s == split) {
            bail!("plugin `{}` has no split `{split}` (it has: {})", self.core.name, self.splits.join(", "));
        }
        let tasks = self
            .core
            .with_instance("list-tasks", self.core.setup_limit, |b, s| match b {
                Bindings::Task { task: t, .. } => t.sigmaforge_plugin_tasks().call_list_tasks(s, split),
                Bindings::Tool(_) => unreachable!("a TaskPlugin holds task-world instances"),
            })
            .map_err(|f| anyhow!(f.message))?
            .map_err(|e| anyhow!("plugin `{}`: list-tasks({split}) failed: {e}", self.core.name))?;
        Ok(tasks.into_iter().map(Task::from).collect())
    }

    /// The reference answer of a train task, in the output form the task's prompt asks for:
    /// `Ok(Some)` / `Ok(None)` as the plugin says. `Err` when the plugin refuses (a test-split
    /// task, an unknown id), fails (trap, time limit, memory cap; the instance is replaced), or
    /// has no `references` interface, in which case the message names the plugin's and the
    /// host's WIT versions. Runs under the setup time limit, like `list-tasks`.
    pub fn reference_answer(&self, task_id: &str) -> Result<Option<String>> {
        if !self.references {
            bail!("{}", self.no_references_message());
        }
        let name = &self.core.name;
        self.core
            .with_instance("reference-answer", self.core.setup_limit, |b, s| match b {
                Bindings::Task { references: Some(r), .. } => r.call_reference_answer(s, task_id),
                Bindings::Task { references: None, .. } => Err(wasmtime::format_err!("the instance has no `references` export")),
                Bindings::Tool(_) => unreachable!("a TaskPlugin holds task-world instances"),
            })
            .map_err(|f| anyhow!(f.message))?
            .map_err(|e| anyhow!("plugin `{name}` refused the reference answer of task `{task_id}`: {e}"))
    }

    fn no_references_message(&self) -> String {
        let (name, version, host, pkg) = (&self.core.name, &self.core.version, contract::HOST_WIT_VERSION, contract::PACKAGE);
        let before = contract::Version::parse(version).is_some_and(|v| v < contract::Version { major: 0, minor: 1, patch: 1 });
        if before {
            format!(
                "plugin `{name}` was built against {pkg}@{version}, which has no reference answers; `sigmaforge sft` needs a plugin \
                 built against {pkg}@{host} (this host's version) that exports `references`"
            )
        } else {
            format!(
                "plugin `{name}` (built against {pkg}@{version}; this host: {host}) does not export `references`, so it has no reference \
                 answers; `sigmaforge sft` needs a plugin built with the reference-task-plugin world"
            )
        }
    }

    /// Scores one completion (on one warm instance).
    pub fn score(&self, task: &TaskRef, completion: &str) -> ScoreResult {
        match self.core.pool.checkout() {
            Ok(mut lease) => {
                let (result, poisoned) = self.score_on(lease.get(), task, completion);
                if poisoned {
                    lease.discard();
                }
                result
            }
            Err(f) => ScoreResult::failed(f.message),
        }
    }

    /// Scores a batch in parallel over the warm instances; results are in input order, one per
    /// input, whatever any completion does to its instance.
    pub fn score_batch(&self, batch: &[(TaskRef, String)]) -> Vec<ScoreResult> {
        let workers = self.core.pool.max().min(batch.len());
        if workers <= 1 {
            return batch.iter().map(|(t, c)| self.score(t, c)).collect();
        }
        let next = AtomicUsize::new(0);
        let mut results: Vec<Option<ScoreResult>> = vec![None; batch.len()];
        let done: Vec<Vec<(usize, ScoreResult)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        let mut lease = None;
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((task, completion)) = batch.get(i) else { break };
                            if lease.is_none() {
                                match self.core.pool.checkout() {
                                    Ok(l) => lease = Some(l),
                                    Err(f) => {
                                        out.push((i, ScoreResult::failed(f.message)));
                                        continue;
                                    }
                                }
                            }
                            let l = lease.as_mut().expect("checked out above");
                            let (result, poisoned) = self.score_on(l.get(), task, completion);
                            if poisoned {
                                lease.take().expect("present").discard();
                            }
                            out.push((i, result));
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("scoring workers do not panic")).collect()
        });
        for (i, r) in done.into_iter().flatten() {
            results[i] = Some(r);
        }
        results.into_iter().map(|r| r.expect("every index is scored once")).collect()
    }

    /// (result, instance poisoned)
    fn score_on(&self, inst: &mut crate::instance::Instance, task: &TaskRef, completion: &str) -> (ScoreResult, bool) {
        let wit_task = task.to_wit();
        let out = inst.call("score", self.core.call_limit, |b, s| match b {
            Bindings::Task { task: t, .. } => t.sigmaforge_plugin_reward().call_score(s, &wit_task, completion),
            Bindings::Tool(_) => unreachable!("a TaskPlugin holds task-world instances"),
        });
        match out {
            Err(f) => (ScoreResult::failed(f.message), f.poisoned),
            Ok(Err(msg)) => {
                let what = match task {
                    TaskRef::Id(id) => format!("task `{id}`"),
                    TaskRef::Reference(_) => "the reference".to_string(),
                };
                (ScoreResult::failed(format!("plugin `{}` refused {what}: {msg}{}", self.core.name, inst.memory_note())), false)
            }
            Ok(Ok(components)) => match validate::components(&self.core.name, &self.components, components) {
                Ok(c) => (ScoreResult::from_components(c), false),
                Err(e) => (ScoreResult::failed(e), false),
            },
        }
    }
}

/// A loaded tool plugin. Send + Sync.
pub struct ToolPlugin {
    core: Core,
    info: PluginInfo,
    spec: ToolSpec,
}

impl ToolPlugin {
    pub fn name(&self) -> &str {
        &self.core.name
    }
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }
    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    pub fn wit_version(&self) -> &str {
        &self.core.version
    }

    /// Runs the tool. Err is text to show the model: the tool's own error, or a sandbox
    /// failure (time limit, memory cap, trap) naming the plugin.
    pub fn invoke(&self, arguments: &str) -> Result<String, String> {
        self.try_invoke(arguments).unwrap_or_else(Err)
    }

    /// Like [`Self::invoke`], but keeps the two failures apart: `Ok(Err(..))` is the tool's own
    /// error (it ran and refused the call), `Err(..)` a sandbox failure (trap, time limit,
    /// memory cap) after which the instance was replaced. Rollouts tell the model which one.
    pub fn try_invoke(&self, arguments: &str) -> Result<Result<String, String>, String> {
        let out = self.core.with_instance("invoke", self.core.call_limit, |b, s| match b {
            Bindings::Tool(t) => t.sigmaforge_plugin_tool().call_invoke(s, arguments),
            Bindings::Task { .. } => unreachable!("a ToolPlugin holds tool-world instances"),
        });
        out.map_err(|f| f.message)
    }
}

/// The plugins of a run, by name.
#[derive(Default, Clone)]
pub struct PluginSet {
    pub tasks: BTreeMap<String, Arc<TaskPlugin>>,
    pub tools: BTreeMap<String, Arc<ToolPlugin>>,
}

impl PluginSet {
    pub fn task(&self, name: &str) -> Result<&Arc<TaskPlugin>> {
        self.tasks
            .get(name)
            .ok_or_else(|| anyhow!("no task plugin named `{name}` (loaded: {})", self.tasks.keys().cloned().collect::<Vec<_>>().join(", ")))
    }

    pub fn tool(&self, name: &str) -> Result<&Arc<ToolPlugin>> {
        self.tools
            .get(name)
            .ok_or_else(|| anyhow!("no tool plugin named `{name}` (loaded: {})", self.tools.keys().cloned().collect::<Vec<_>>().join(", ")))
    }
}

/// The report of `sigmaforge plugin inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub file: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
    pub world: World,
    pub wit_version: String,
    pub host_wit_version: String,
    /// Whether the plugin exports `references` (reference answers for `sigmaforge sft`).
    pub references: bool,
    pub info: Option<PluginInfo>,
    pub splits: Vec<SplitCount>,
    pub components: Vec<(String, f64)>,
    pub tool: Option<ToolSpec>,
    /// Why the plugin could not be started (e.g. its `init` needs a data directory).
    pub load_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitCount {
    pub split: String,
    pub tasks: Option<usize>,
    pub error: Option<String>,
}
