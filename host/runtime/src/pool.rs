//! A bounded pool of warm instances of one plugin. Instances are created lazily (each runs the
//! plugin's `init`, which may load a large corpus) and reused; a poisoned one is dropped and a
//! fresh one takes its place on the next checkout.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use wasmtime::Engine;

use crate::instance::{Failure, Instance, Pre};
use crate::sandbox::Grants;

pub struct Pool {
    engine: Engine,
    pre: Pre,
    grants: Grants,
    init_limit: Duration,
    max: usize,
    state: Mutex<Slots>,
    freed: Condvar,
}

struct Slots {
    idle: Vec<Instance>,
    /// Instances that exist (idle or leased) or are being created.
    live: usize,
}

impl Pool {
    pub fn new(engine: Engine, pre: Pre, grants: Grants, init_limit: Duration, max: usize) -> Self {
        Pool { engine, pre, grants, init_limit, max: max.max(1), state: Mutex::new(Slots { idle: Vec::new(), live: 0 }), freed: Condvar::new() }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes an idle instance, or creates one while under the cap, or waits for one.
    pub fn checkout(&self) -> Result<Lease<'_>, Failure> {
        let mut slots = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(inst) = slots.idle.pop() {
                return Ok(Lease { pool: self, inst: Some(inst) });
            }
            if slots.live < self.max {
                slots.live += 1;
                drop(slots);
                return match Instance::start(&self.engine, &self.pre, &self.grants, self.init_limit) {
                    Ok(inst) => Ok(Lease { pool: self, inst: Some(inst) }),
                    Err(f) => {
                        self.release_slot();
                        Err(f)
                    }
                };
            }
            slots = self.freed.wait(slots).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Creates instances up to the cap, in parallel, so the first batch doesn't pay for `init`.
    pub fn warm_up(&self) -> Result<(), Failure> {
        let leases: Vec<Result<Lease<'_>, Failure>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.max).map(|_| s.spawn(|| self.checkout())).collect();
            handles.into_iter().map(|h| h.join().expect("checkout does not panic")).collect()
        });
        // Dropping the leases returns the instances to the idle list.
        leases.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }

    /// Starts an instance outside the pool (not counted, dropped by the caller's scope).
    pub fn start_detached(&self) -> Result<(), Failure> {
        Instance::start(&self.engine, &self.pre, &self.grants, self.init_limit).map(drop)
    }

    fn release_slot(&self) {
        let mut slots = self.state.lock().unwrap_or_else(|p| p.into_inner());
        slots.live -= 1;
        self.freed.notify_one();
    }

    fn give_back(&self, inst: Instance) {
        let mut slots = self.state.lock().unwrap_or_else(|p| p.into_inner());
        slots.idle.push(inst);
        self.freed.notify_one();
    }
}

/// A checked-out instance; returned to the pool on drop unless discarded.
pub struct Lease<'a> {
    pool: &'a Pool,
    inst: Option<Instance>,
}

impl Lease<'_> {
    pub fn get(&mut self) -> &mut Instance {
        self.inst.as_mut().expect("a lease holds its instance until dropped")
    }

    /// Drops the instance (its Store is poisoned); the pool will create a fresh one.
    pub fn discard(mut self) {
        self.inst = None;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        match self.inst.take() {
            Some(inst) => self.pool.give_back(inst),
            None => self.pool.release_slot(),
        }
    }
}
