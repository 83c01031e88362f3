//! Data-parallel collectives for the SigmaForge trainer.
//!
//! One process per GPU, launched the usual way (torchrun, `mpirun`-style wrappers, Slurm, or by
//! hand): each reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`
//! ([`LaunchEnv`]). Rollouts are split across ranks ([`shard`]), gradients are summed across
//! ranks ([`Collective::all_reduce_sum`]), and rank 0 owns checkpoints and metrics.
//!
//! Backends:
//! - [`SingleProcess`]: world size 1, every collective is a no-op. The default path, so a
//!   one-process run executes the same trainer code as a multi-GPU one.
//! - [`TcpCollective`]: a CPU all-reduce over TCP through rank 0, summing in rank order so every
//!   rank gets bit-identical results. It exists so that CI (no GPUs) can check that ranks agree
//!   on the update; it is not meant for real training traffic.
//! - `NcclCollective` (feature `nccl`): NCCL through cudarc, the engine that real multi-GPU and
//!   multi-node runs use. The NCCL unique id is exchanged over the same TCP rendezvous.
//!
//! Why not write our own ring all-reduce for GPUs: NCCL is the standard, topology-aware engine
//! every trainer uses (scaling past one machine uses existing engines: NCCL, not a new transport).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

#[cfg(feature = "nccl")]
mod nccl;
#[cfg(feature = "nccl")]
pub use nccl::NcclCollective;

/// Where this process sits in a data-parallel job, from the launcher's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world_size: usize,
    /// The GPU index on this node.
    pub local_rank: usize,
    /// `MASTER_ADDR:MASTER_PORT`, where rank 0 listens for the rendezvous.
    pub master: String,
}

impl LaunchEnv {
    /// A single-process job.
    pub fn single() -> Self {
        LaunchEnv { rank: 0, world_size: 1, local_rank: 0, master: "127.0.0.1:29500".into() }
    }

    /// Reads the launcher's variables; without `WORLD_SIZE` the job is a single process.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`LaunchEnv::from_env`], reading variables through `get` (for tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |key: &str| -> Result<Option<usize>> {
            match get(key) {
                None => Ok(None),
                Some(v) => {
                    v.trim().parse::<usize>().map(Some).with_context(|| format!("environment variable {key}={v:?} is not a non-negative integer"))
                }
            }
        };
        let Some(world_size) = num("WORLD_SIZE")? else {
            return Ok(Self::single());
        };
        ensure!(world_size >= 1, "WORLD_SIZE must be at least 1");
        let rank = num("RANK")?.context("WORLD_SIZE is set but RANK is not")?;
        ensure!(rank < world_size, "RANK={rank} must be below WORLD_SIZE={world_size}");
        let local_rank = num("LOCAL_RANK")?.unwrap_or(rank);
        let addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = num("MASTER_PORT")?.unwrap_or(29500);
        ensure!(port > 0 && port < 65536, "MASTER_PORT={port} is not a TCP port");
        Ok(LaunchEnv { rank, world_size, local_rank, master: format!("{addr}:{port}") })
    }

    /// Rank 0 writes checkpoints and metrics.
    pub fn is_primary(&self) -> bool {
        self.rank == 0
    }
}

/// The contiguous part of `0..n` that `rank` of `world` handles; the first `n % world` ranks take
/// one extra item, so the parts cover `0..n` exactly once.
pub fn shard(n: usize, rank: usize, world: usize) -> Range<usize> {
    let world = world.max(1);
    let base = n / world;
    let extra = n % world;
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start.min(n)..(start + len).min(n)
}

/// Collective operations across the ranks of a job.
/// Not `Send`: an NCCL communicator belongs to the thread that created it.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum over all ranks; every rank ends with the same (bit-identical) values.
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()>;
    /// Every rank ends with `root`'s bytes.
    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Element-wise sum over all ranks, delivered to `root` only (the other ranks' buffers are
    /// left as they were). Half the traffic of an all-reduce: ZeRO-2 sends each gradient to the
    /// one rank that updates that parameter.
    fn reduce_sum(&mut self, data: &mut [f32], root: usize) -> Result<()>;
    /// Every rank ends with `root`'s values (bit for bit): an owner sharing its updated
    /// parameters.
    fn broadcast_f32(&mut self, data: &mut [f32], root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<()> {
        let mut one = [0f32];
        self.all_reduce_sum(&mut one)
    }
    /// Sum divided by the world size: gradient averaging.
    fn all_reduce_mean(&mut self, data: &mut [f32]) -> Result<()> {
        self.all_reduce_sum(data)?;
        let n = self.world_size() as f32;
        if n > 1.0 {
            data.iter_mut().for_each(|x| *x /= n);
        }
        Ok(())
    }
}

/// World size 1: nothing to exchange.
#[derive(Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _data: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&mut self, _data: &mut Vec<u8>, _root: usize) -> Result<()> {
        Ok(())
    }
    fn reduce_sum(&mut self, _data: &mut [f32], _root: usize) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&mut self, _data: &mut [f32], _root: usize) -> Result<()> {
        Ok(())
    }
}

/// Which collective backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// NCCL when built with the `nccl` feature and GPUs are used; else TCP; single process when
    /// the world size is 1.
    Auto,
    Tcp,
    Nccl,
}

/// Connects this process to its job.
pub fn init(env: &LaunchEnv, backend: Backend, use_gpu: bool) -> Result<Box<dyn Collective>> {
    if env.world_size == 1 {
        return Ok(Box::new(SingleProcess));
    }
    match backend {
        Backend::Tcp => Ok(Box::new(TcpCollective::connect(env, Duration::from_secs(300))?)),
        Backend::Auto if !use_gpu => Ok(Box::new(TcpCollective::connect(env, Duration::from_secs(300))?)),
        Backend::Auto | Backend::Nccl => nccl_backend(env),
    }
}

#[cfg(feature = "nccl")]
fn nccl_backend(env: &LaunchEnv) -> Result<Box<dyn Collective>> {
    Ok(Box::new(NcclCollective::connect(env, Duration::from_secs(300))?))
}

#[cfg(not(feature = "nccl"))]
fn nccl_backend(_env: &LaunchEnv) -> Result<Box<dyn Collective>> {
    bail!("this sigmaforge was built without NCCL; rebuild with `--features cuda,nccl` for multi-GPU training, or use the TCP backend (CPU only)")
}

/// CPU all-reduce through rank 0 (a star): rank 0 receives every buffer, sums them in rank
/// order, and sends the sum back. O(world × size) traffic at rank 0: fine for tests and small
/// CPU jobs, which is all it is for.
pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: one stream per peer, index `rank - 1`. Other ranks: the stream to rank 0.
    peers: Vec<TcpStream>,
}

const HELLO: &[u8; 8] = b"SFDP0001";

/// How long a rank waits for a peer's data before it gives up (a GRPO step on a slow CPU can
/// take minutes, so this is generous; it only bounds a hang).
pub const READ_TIMEOUT: Duration = Duration::from_secs(600);

impl TcpCollective {
    /// Rank 0 listens on `env.master`; the others connect, retrying until `timeout`.
    pub fn connect(env: &LaunchEnv, timeout: Duration) -> Result<Self> {
        let mut peers = Vec::new();
        if env.rank == 0 {
            let listener =
                TcpListener::bind(&env.master).with_context(|| format!("rank 0 cannot listen on MASTER_ADDR:MASTER_PORT = {}", env.master))?;
            listener.set_nonblocking(true)?;
            let deadline = Instant::now() + timeout;
            let mut slots: Vec<Option<TcpStream>> = (1..env.world_size).map(|_| None).collect();
            let mut joined = 0;
            while joined < env.world_size - 1 {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false)?;
                        configure(&s)?;
                        let (rank, world) = read_hello(&mut s)?;
                        ensure!(world == env.world_size, "rank {rank} says WORLD_SIZE={world}, rank 0 has {}", env.world_size);
                        ensure!(rank >= 1 && rank < env.world_size, "a peer announced rank {rank}, outside 1..{}", env.world_size);
                        ensure!(slots[rank - 1].is_none(), "two processes announced RANK={rank}");
                        slots[rank - 1] = Some(s);
                        joined += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            let missing: Vec<usize> = slots.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i + 1).collect();
                            bail!("rank 0 waited {timeout:?} for ranks {missing:?} to join at {}", env.master);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e).context("accepting a peer"),
                }
            }
            peers = slots.into_iter().map(|s| s.expect("all joined")).collect();
        } else {
            let deadline = Instant::now() + timeout;
            let addr = env
                .master
                .to_socket_addrs()
                .with_context(|| format!("resolving MASTER_ADDR:MASTER_PORT = {}", env.master))?
                .next()
                .with_context(|| format!("{} resolves to no address", env.master))?;
            let mut stream = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(e).with_context(|| format!("rank {} cannot reach rank 0 at {}", env.rank, env.master)),
                }
            };
            configure(&stream)?;
            stream.write_all(HELLO)?;
            stream.write_all(&(env.rank as u64).to_le_bytes())?;
            stream.write_all(&(env.world_size as u64).to_le_bytes())?;
            peers.push(stream);
        }
        Ok(TcpCollective { rank: env.rank, world: env.world_size, peers })
    }
}

fn configure(s: &TcpStream) -> Result<()> {
    s.set_nodelay(true)?;
    // A peer that died closes its sockets (the read fails at once); one that hangs must fail
    // the step after a while, not stall the job forever.
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    Ok(())
}

fn read_hello(s: &mut TcpStream) -> Result<(usize, usize)> {
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).context("reading a peer's greeting")?;
    ensure!(&magic == HELLO, "a connection to the rendezvous port is not a SigmaForge rank");
    Ok((read_u64(s)? as usize, read_u64(s)? as usize))
}

fn read_u64(s: &mut TcpStream) -> Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Why a transfer with `who` failed, in words a user can act on: a closed connection means the
/// peer process is gone, a timeout that it stopped answering.
fn peer_error(e: std::io::Error, who: &str, doing: &str) -> anyhow::Error {
    use std::io::ErrorKind::*;
    let why = match e.kind() {
        UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted => {
            format!("{who} closed the connection (it exited or failed; see its log)")
        }
        WouldBlock | TimedOut => format!("{who} did not answer within {READ_TIMEOUT:?} (stuck, or much slower than this rank)"),
        _ => format!("{e}"),
    };
    anyhow::anyhow!("{doing} {who}: {why}")
}

fn write_f32s(s: &mut TcpStream, data: &[f32], who: &str) -> Result<()> {
    let mut bytes = Vec::with_capacity(8 + data.len() * 4);
    bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for x in data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    s.write_all(&bytes).map_err(|e| peer_error(e, who, "sending to"))
}

fn read_f32s_into(s: &mut TcpStream, out: &mut [f32], who: &str) -> Result<()> {
    let n = read_u64(s).map_err(|e| match e.downcast::<std::io::Error>() {
        Ok(io) => peer_error(io, who, "receiving from"),
        Err(e) => e,
    })? as usize;
    ensure!(n == out.len(), "{who} sent {n} values where {} were expected: the ranks disagree on the model", out.len());
    let mut bytes = vec![0u8; n * 4];
    s.read_exact(&mut bytes).map_err(|e| peer_error(e, who, "receiving from"))?;
    for (x, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *x = f32::from_le_bytes(chunk.try_into().unwrap());
    }
    Ok(())
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()> {
        if self.rank == 0 {
            let mut incoming = vec![0f32; data.len()];
            for (i, peer) in self.peers.iter_mut().enumerate() {
                read_f32s_into(peer, &mut incoming, &format!("rank {}", i + 1))?;
                for (acc, x) in data.iter_mut().zip(&incoming) {
                    *acc += *x;
                }
            }
            for (i, peer) in self.peers.iter_mut().enumerate() {
                write_f32s(peer, data, &format!("rank {}", i + 1))?;
            }
        } else {
            let root = &mut self.peers[0];
            write_f32s(root, data, "rank 0")?;
            read_f32s_into(root, data, "rank 0")?;
        }
        Ok(())
    }

    fn reduce_sum(&mut self, data: &mut [f32], root: usize) -> Result<()> {
        ensure!(root < self.world, "reduce to rank {root} in a job of {} ranks", self.world);
        // Rank 0 sums in rank order (as in the all-reduce, so results match it bit for bit)
        // and forwards the sum to `root` when that is another rank.
        if self.rank == 0 {
            // Sum in place when rank 0 is the root; otherwise in a copy, leaving its buffer be.
            let mut copy = Vec::new();
            let sum: &mut [f32] = if root == 0 {
                data
            } else {
                copy.extend_from_slice(data);
                &mut copy
            };
            let mut incoming = vec![0f32; sum.len()];
            for (i, peer) in self.peers.iter_mut().enumerate() {
                read_f32s_into(peer, &mut incoming, &format!("rank {}", i + 1))?;
                for (acc, x) in sum.iter_mut().zip(&incoming) {
                    *acc += *x;
                }
            }
            if root != 0 {
                write_f32s(&mut self.peers[root - 1], sum, &format!("rank {root}"))?;
            }
        } else {
            let hub = &mut self.peers[0];
            write_f32s(hub, data, "rank 0")?;
            if self.rank == root {
                read_f32s_into(hub, data, "rank 0")?;
            }
        }
        Ok(())
    }

    fn broadcast_f32(&mut self, data: &mut [f32], root: usize) -> Result<()> {
        ensure!(root < self.world, "broadcast from rank {root} in a job of {} ranks", self.world);
        // Through rank 0 (the star's hub): the root sends to it, it sends to everyone else.
        if self.rank == 0 {
            if root != 0 {
                read_f32s_into(&mut self.peers[root - 1], data, &format!("rank {root}"))?;
            }
            for (i, peer) in self.peers.iter_mut().enumerate() {
                if i + 1 != root {
                    write_f32s(peer, data, &format!("rank {}", i + 1))?;
                }
            }
        } else if self.rank == root {
            write_f32s(&mut self.peers[0], data, "rank 0")?;
        } else {
            read_f32s_into(&mut self.peers[0], data, "rank 0")?;
        }
        Ok(())
    }

    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<()> {
        ensure!(root == 0, "the TCP backend broadcasts bytes from rank 0 only");
        if self.rank == 0 {
            for (i, peer) in self.peers.iter_mut().enumerate() {
                let who = format!("rank {}", i + 1);
                peer.write_all(&(data.len() as u64).to_le_bytes()).map_err(|e| peer_error(e, &who, "broadcasting to"))?;
                peer.write_all(data).map_err(|e| peer_error(e, &who, "broadcasting to"))?;
            }
        } else {
            let s = &mut self.peers[0];
            let mut len = [0u8; 8];
            s.read_exact(&mut len).map_err(|e| peer_error(e, "rank 0", "receiving a broadcast from"))?;
            data.resize(u64::from_le_bytes(len) as usize, 0);
            s.read_exact(data).map_err(|e| peer_error(e, "rank 0", "receiving a broadcast from"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_env_defaults_to_single_process() {
        let env = LaunchEnv::from_vars(|_| None).unwrap();
        assert_eq!(env, LaunchEnv::single());
        assert!(env.is_primary());
    }

    #[test]
    fn launch_env_reads_torchrun_variables_and_rejects_bad_ones() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let env = LaunchEnv::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap();
        assert_eq!(env, LaunchEnv { rank: 2, world_size: 4, local_rank: 0, master: "10.0.0.1:1234".into() });
        let err = LaunchEnv::from_vars(vars(&[("WORLD_SIZE", "2"), ("RANK", "2")])).unwrap_err().to_string();
        assert!(err.contains("RANK=2"), "{err}");
        let err = LaunchEnv::from_vars(vars(&[("WORLD_SIZE", "two")])).unwrap_err().to_string();
        assert!(err.contains("WORLD_SIZE"), "{err}");
        assert!(LaunchEnv::from_vars(vars(&[("WORLD_SIZE", "2")])).is_err(), "RANK is required");
    }

    #[test]
    fn shards_cover_every_item_once() {
        for n in 0..20 {
            for world in 1..6 {
                let mut seen = vec![0; n];
                for rank in 0..world {
                    for i in shard(n, rank, world) {
                        seen[i] += 1;
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "n={n} world={world}: {seen:?}");
            }
        }
        assert_eq!(shard(10, 0, 3), 0..4);
        assert_eq!(shard(10, 2, 3), 7..10);
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Runs `f(rank, collective)` on `world` TCP-connected ranks (threads); results by rank.
    fn on_tcp_ranks<T: Send + 'static>(world: usize, f: fn(usize, &mut dyn Collective) -> T) -> Vec<T> {
        let master = format!("127.0.0.1:{}", free_port());
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let env = LaunchEnv { rank, world_size: world, local_rank: rank, master: master.clone() };
                std::thread::spawn(move || f(rank, init(&env, Backend::Tcp, false).unwrap().as_mut()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn tcp_all_reduce_gives_every_rank_the_same_sum() {
        let results = on_tcp_ranks(3, |rank, c| {
            let mut data: Vec<f32> = (0..5).map(|i| (rank * 10 + i) as f32 * 0.1).collect();
            c.all_reduce_sum(&mut data).unwrap();
            let mut mean = vec![rank as f32; 2];
            c.all_reduce_mean(&mut mean).unwrap();
            let mut bytes = if rank == 0 { b"config".to_vec() } else { Vec::new() };
            c.broadcast(&mut bytes, 0).unwrap();
            c.barrier().unwrap();
            (data, mean, bytes)
        });
        for (data, mean, bytes) in &results {
            assert_eq!(data, &results[0].0, "ranks must agree bit for bit");
            assert!((data[0] - 3.0).abs() < 1e-5, "0 + 1 + 2 = 3: {data:?}");
            assert_eq!(mean, &vec![1.0, 1.0]);
            assert_eq!(bytes, b"config");
        }
    }

    #[test]
    fn tcp_reduce_reaches_the_root_and_broadcast_leaves_every_rank_with_the_roots_values() {
        let world = 3;
        let results = on_tcp_ranks(world, |rank, c| {
            let world = c.world_size();
            let mut reduced = Vec::new();
            for root in 0..world {
                let mut data = vec![rank as f32 + 1.0, 0.5 * rank as f32];
                c.reduce_sum(&mut data, root).unwrap();
                reduced.push(data);
            }
            let mut shared = Vec::new();
            for root in 0..world {
                let mut data = if rank == root { vec![root as f32 * 10.0 + 0.25, -1.5] } else { vec![f32::NAN; 2] };
                c.broadcast_f32(&mut data, root).unwrap();
                shared.push(data);
            }
            (reduced, shared)
        });
        for (rank, (reduced, shared)) in results.iter().enumerate() {
            for root in 0..world {
                if rank == root {
                    assert_eq!(reduced[root], vec![6.0, 1.5], "root {root} gets 1 + 2 + 3 and 0 + 0.5 + 1");
                } else {
                    assert_eq!(reduced[root], vec![rank as f32 + 1.0, 0.5 * rank as f32], "rank {rank}'s buffer must be untouched");
                }
                assert_eq!(shared[root], vec![root as f32 * 10.0 + 0.25, -1.5], "rank {rank} after the broadcast from {root}");
            }
        }
    }

    #[test]
    fn mismatched_buffers_are_an_error_not_a_hang() {
        let master = format!("127.0.0.1:{}", free_port());
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let env = LaunchEnv { rank, world_size: 2, local_rank: rank, master: master.clone() };
                std::thread::spawn(move || {
                    let mut c = TcpCollective::connect(&env, Duration::from_secs(10)).unwrap();
                    let mut data = vec![1f32; 3 + rank];
                    c.all_reduce_sum(&mut data).map_err(|e| e.to_string())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let root = results[0].as_ref().unwrap_err();
        assert!(root.contains("disagree"), "{root}");
    }

    #[test]
    fn a_peer_that_exits_is_named_in_the_error() {
        let master = format!("127.0.0.1:{}", free_port());
        let env1 = LaunchEnv { rank: 1, world_size: 2, local_rank: 1, master: master.clone() };
        let quitter = std::thread::spawn(move || {
            let c = TcpCollective::connect(&env1, Duration::from_secs(10)).unwrap();
            drop(c); // the process "dies" before its first all-reduce
        });
        let env0 = LaunchEnv { rank: 0, world_size: 2, local_rank: 0, master };
        let mut root = TcpCollective::connect(&env0, Duration::from_secs(10)).unwrap();
        quitter.join().unwrap();
        let err = root.all_reduce_sum(&mut [1.0, 2.0]).unwrap_err().to_string();
        assert!(err.contains("rank 1 closed the connection"), "{err}");
    }

    #[test]
    fn missing_ranks_time_out_with_their_numbers() {
        let env = LaunchEnv { rank: 0, world_size: 3, local_rank: 0, master: format!("127.0.0.1:{}", free_port()) };
        let err = TcpCollective::connect(&env, Duration::from_millis(200)).err().unwrap().to_string();
        assert!(err.contains("[1, 2]"), "{err}");
    }
}
