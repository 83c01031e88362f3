//! NCCL backend (feature `nccl`), through cudarc's safe bindings.
//!
//! cudarc loads libcuda and libnccl dynamically and *panics* when they are missing (measured,
//! trainer-notes B5), so every first touch of the driver is wrapped in `catch_unwind` and turned
//! into an error that says what is missing.
//!
//! Buffers handed to [`Collective::all_reduce_sum`] are host slices: they are copied to the
//! device, reduced there and copied back. A trainer whose gradients already live on the GPU
//! should call [`NcclCollective::comm`] and reduce the device buffers in place instead.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};

use crate::{Collective, LaunchEnv, TcpCollective};

pub struct NcclCollective {
    comm: Comm,
    stream: Arc<CudaStream>,
    /// The TCP rendezvous, kept for byte broadcasts (configs, RNG seeds), which are rare.
    control: TcpCollective,
}

fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        anyhow!("{what} failed: {msg} (is the NVIDIA driver and libnccl installed on this machine?)")
    })
}

impl NcclCollective {
    /// Rendezvous over TCP at `env.master`, share rank 0's NCCL id, and join the communicator on
    /// GPU `env.local_rank`.
    pub fn connect(env: &LaunchEnv, timeout: Duration) -> Result<Self> {
        let mut control = TcpCollective::connect(env, timeout)?;
        let ctx =
            guarded("opening the CUDA driver", || CudaContext::new(env.local_rank))?.map_err(|e| anyhow!("opening GPU {}: {e:?}", env.local_rank))?;
        let stream = ctx.default_stream();
        let mut id_bytes = if env.rank == 0 {
            let id = guarded("loading libnccl", Id::new)?.map_err(|e| anyhow!("creating the NCCL id: {e:?}"))?;
            id.internal().iter().map(|c| *c as u8).collect()
        } else {
            Vec::new()
        };
        control.broadcast(&mut id_bytes, 0).context("sharing the NCCL id")?;
        ensure!(id_bytes.len() == 128, "received an NCCL id of {} bytes, expected 128", id_bytes.len());
        let mut internal = [0 as std::ffi::c_char; 128];
        for (dst, src) in internal.iter_mut().zip(&id_bytes) {
            *dst = *src as std::ffi::c_char;
        }
        let comm = Comm::from_rank(stream.clone(), env.rank, env.world_size, Id::uninit(internal))
            .map_err(|e| anyhow!("joining the NCCL communicator as rank {} of {}: {e:?}", env.rank, env.world_size))?;
        Ok(NcclCollective { comm, stream, control })
    }

    /// The communicator, for reducing device buffers in place.
    pub fn comm(&self) -> &Comm {
        &self.comm
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()> {
        let mut dev = self.stream.clone_htod(data).map_err(|e| anyhow!("copying {} floats to the GPU: {e:?}", data.len()))?;
        self.comm.all_reduce_in_place(&mut dev, &ReduceOp::Sum).map_err(|e| anyhow!("NCCL all-reduce: {e:?}"))?;
        self.stream.memcpy_dtoh(&dev, data).map_err(|e| anyhow!("copying the reduced values back: {e:?}"))?;
        self.stream.synchronize().map_err(|e| anyhow!("synchronizing the stream: {e:?}"))?;
        Ok(())
    }

    fn reduce_sum(&mut self, data: &mut [f32], root: usize) -> Result<()> {
        let mut dev = self.stream.clone_htod(data).map_err(|e| anyhow!("copying {} floats to the GPU: {e:?}", data.len()))?;
        self.comm.reduce_in_place(&mut dev, &ReduceOp::Sum, root as i32).map_err(|e| anyhow!("NCCL reduce to rank {root}: {e:?}"))?;
        if self.comm.rank() == root {
            self.stream.memcpy_dtoh(&dev, data).map_err(|e| anyhow!("copying the reduced values back: {e:?}"))?;
        }
        self.stream.synchronize().map_err(|e| anyhow!("synchronizing the stream: {e:?}"))?;
        Ok(())
    }

    fn broadcast_f32(&mut self, data: &mut [f32], root: usize) -> Result<()> {
        let mut dev = self.stream.clone_htod(data).map_err(|e| anyhow!("copying {} floats to the GPU: {e:?}", data.len()))?;
        self.comm.broadcast_in_place(&mut dev, root as i32).map_err(|e| anyhow!("NCCL broadcast from rank {root}: {e:?}"))?;
        self.stream.memcpy_dtoh(&dev, data).map_err(|e| anyhow!("copying the broadcast values back: {e:?}"))?;
        self.stream.synchronize().map_err(|e| anyhow!("synchronizing the stream: {e:?}"))?;
        Ok(())
    }

    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<()> {
        self.control.broadcast(data, root)
    }
}
