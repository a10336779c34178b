//! Process settings that make the engine fast on the CPU (threads, allocator).

/// Prepares this process for the engine on the CPU. Call it first thing in `main`, before any
/// thread starts:
///
/// - fixes candle's CPU thread count (`RAYON_NUM_THREADS`) to this machine's parallelism unless
///   the user set it: without it candle asks the OS for the CPU count on every tensor operation,
///   which costs about a third of a small UNet call;
/// - on glibc, makes `malloc` keep freed memory for reuse (no `mmap` below 32 MiB, no trimming
///   below 2 GiB, 64 MiB of padding) unless `GLIBC_TUNABLES` or a `MALLOC_*` variable says
///   otherwise or `GENIE_KEEP_FREED_MEMORY=0`: every tensor operation allocates a fresh output,
///   and with glibc's defaults those buffers go back to the kernel and are faulted in and zeroed
///   again, which cost 17 % of an SD 1.5 UNet step at 128 px on 2 cores (BENCHMARKS.md). The
///   price: the process keeps its peak heap until it exits.
pub fn tune_cpu_process() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    keep_freed_memory();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    let user_tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc"))
        || std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"))
        || std::env::var_os("GENIE_KEEP_FREED_MEMORY").is_some_and(|v| v == "0");
    if user_tuned {
        return;
    }
    // SAFETY: mallopt only sets allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
