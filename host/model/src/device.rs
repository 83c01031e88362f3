//! Choosing the compute device without ever letting a CUDA library panic.
//!
//! cudarc panics (instead of returning an error) when libcuda cannot be loaded, so the probe runs
//! under `catch_unwind`, and a build without the `cuda` feature says so instead of trying.

use anyhow::{Result, bail};
use candle_core::Device;

/// `request`: "cpu", "cuda" (or "cuda:N"), or "auto" (CUDA when usable, else CPU).
/// Returns the device and a one-line description for logs.
pub fn select_device(request: &str) -> Result<(Device, String)> {
    let cpu = || (Device::Cpu, format!("cpu ({} threads)", candle_core::utils::get_num_threads()));
    match request {
        "cpu" => Ok(cpu()),
        "auto" => match try_cuda(0) {
            Ok(d) => Ok(d),
            Err(why) => {
                let (d, desc) = cpu();
                Ok((d, format!("{desc}; no GPU used: {why}")))
            }
        },
        r if r == "cuda" || r.starts_with("cuda:") => {
            let ordinal = match r.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse().map_err(|_| anyhow::anyhow!("device {r:?}: expected cuda:<number>"))?,
            };
            try_cuda(ordinal).map_err(|why| anyhow::anyhow!("device {r:?} is not usable: {why}"))
        }
        other => bail!("unknown device {other:?}; expected \"cpu\", \"cuda\", \"cuda:N\" or \"auto\""),
    }
}

#[cfg(feature = "cuda")]
fn try_cuda(ordinal: usize) -> Result<(Device, String), String> {
    let probe = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    match probe {
        Ok(Ok(d)) => Ok((d, format!("cuda:{ordinal}"))),
        Ok(Err(e)) => Err(format!("CUDA device {ordinal} could not be opened: {e}")),
        Err(_) => Err("the CUDA driver library (libcuda) could not be loaded; is there an NVIDIA GPU and driver?".into()),
    }
}

#[cfg(not(feature = "cuda"))]
fn try_cuda(_ordinal: usize) -> Result<(Device, String), String> {
    Err("this sigmaforge was built without the `cuda` feature (rebuild with `--features cuda` on a machine with the CUDA toolkit)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_work_without_a_gpu_and_bad_names_are_errors() {
        assert!(matches!(select_device("cpu").unwrap().0, Device::Cpu));
        let (d, desc) = select_device("auto").unwrap();
        #[cfg(not(feature = "cuda"))]
        {
            assert!(matches!(d, Device::Cpu));
            assert!(desc.contains("without the `cuda` feature"), "{desc}");
            let err = select_device("cuda").unwrap_err().to_string();
            assert!(err.contains("cuda"), "{err}");
        }
        // A CUDA build: `auto` takes the GPU when one is usable, else falls back to the CPU and
        // says why; `cuda` without a usable GPU is an error, not a panic inside cudarc.
        #[cfg(feature = "cuda")]
        match select_device("cuda") {
            Ok(_) => assert!(matches!(d, Device::Cuda(_)), "auto ignored a usable GPU: {desc}"),
            Err(e) => {
                assert!(matches!(d, Device::Cpu) && desc.contains("no GPU used"), "{desc}");
                assert!(e.to_string().contains("is not usable"), "{e}");
            }
        }
        let _ = (d, desc);
        assert!(select_device("tpu").unwrap_err().to_string().contains("tpu"));
        #[cfg(not(feature = "cuda"))]
        assert!(select_device("cuda:x").is_err());
    }
}
