//! Handing freed heap memory back to the system.
//!
//! glibc gives each thread that allocates its own arena and keeps what is freed there
//! for reuse by that arena. Ingest frees a whole batch (tens of MB) at a time while the
//! producer and the runtime's other threads allocate beside it, so without a trim the
//! arenas fill one after another and the resident size creeps up with the length of the
//! run (1M-trip run: 404–641 MB peak, 4 arenas of 64 MB each fully resident).

/// Returns the free pages of every arena to the kernel (`malloc_trim(0)`); a no-op
/// where the C library is not glibc.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no
    // live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks of at least this size get their own mapping, returned to the kernel on free.
pub const MAPPED_BLOCK_BYTES: usize = 1 << 20;

/// Makes glibc map every block of [`MAPPED_BLOCK_BYTES`] or more on its own, so that
/// freeing it hands it straight back to the kernel. By default glibc raises that
/// threshold (up to 32 MiB) each time such a block is freed, after which a batch's
/// column buffers are carved from the arenas and stay resident. A no-op where the C
/// library is not glibc, or when the user set the threshold (`MALLOC_MMAP_THRESHOLD_`,
/// `GLIBC_TUNABLES`).
///
/// 1M-trip `tripflow run`: peak 224–254 MiB against 263–357 MiB without it, same time;
/// 256 KiB was no better (259–293 MiB).
pub fn map_large_blocks() {
    let user_set = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"));
    if user_set {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes how later allocations are placed; called before any
    // thread but the main one exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MAPPED_BLOCK_BYTES as libc::c_int);
    }
}
