//! Exact IEEE floats inside guests on a host that flushes denormals.
//!
//! The trainer runs its tensor math with flush-to-zero and denormals-are-zero set in the x86
//! MXCSR register (`sigmaforge_model::process`), and threads inherit that mode. WebAssembly's
//! floats are IEEE 754 with subnormals, and a plugin's result must not depend on which host
//! thread ran it, so every call into a guest clears the two flags for its duration
//! ([`IeeeFloats`]) and puts the caller's mode back afterwards.

/// While alive, this thread computes with subnormals (MXCSR FTZ and DAZ cleared); dropping it
/// restores the mode it found. A no-op off x86-64.
pub(crate) struct IeeeFloats {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

/// MXCSR bits: flush-to-zero (results) and denormals-are-zero (inputs).
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

#[cfg(target_arch = "x86_64")]
fn read_csr() -> u32 {
    let mut csr: u32 = 0;
    // SAFETY: stmxcsr stores this thread's SSE control register into `csr`.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
    csr
}

#[cfg(target_arch = "x86_64")]
fn write_csr(csr: u32) {
    // SAFETY: ldmxcsr loads a value read by `read_csr` with at most the two flush bits changed.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly, preserves_flags)) };
}

impl IeeeFloats {
    pub(crate) fn enter() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let saved = read_csr();
            if saved & FTZ_DAZ != 0 {
                write_csr(saved & !FTZ_DAZ);
            }
            IeeeFloats { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        IeeeFloats {}
    }
}

impl Drop for IeeeFloats {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.saved & FTZ_DAZ != 0 {
            write_csr(self.saved);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn subnormals_inside_the_guard_and_the_callers_mode_after() {
        std::thread::spawn(|| {
            let tiny = || std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32);
            write_csr(read_csr() | FTZ_DAZ);
            assert_eq!(tiny(), 0.0, "the host mode flushes");
            {
                let _guard = IeeeFloats::enter();
                assert!(tiny() > 0.0, "a guest computes subnormals");
            }
            assert_eq!(tiny(), 0.0, "the host mode is back");
        })
        .join()
        .unwrap();
    }
}
