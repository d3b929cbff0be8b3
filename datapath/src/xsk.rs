//! AF_XDP ports: one AF_XDP socket bound to one queue of a veth or NIC.
//!
//! This is the only module of ferrovs that contains `unsafe` code. It talks
//! to the kernel through libbpf's `xsk` API (via `libbpf-sys`):
//!
//! * every [`XskPort`] owns its own UMEM, an anonymous mmap of
//!   `frames * 2048` bytes. The first half of the frames belongs to the
//!   receive side (they circulate between the fill ring, the kernel and the
//!   RX ring), the second half to the transmit side (free list -> TX ring ->
//!   completion ring -> free list). The two halves never touch each other's
//!   frames or rings, which is what makes [`Port::split`] sound.
//! * libbpf attaches its default XDP program (redirect to an XSKMAP by RX
//!   queue) in native (driver) or generic (skb) mode. When the last port on
//!   an interface is dropped the program is removed again, unless it was
//!   already attached before ferrovs opened the interface.
//!
//! The hot path (`recv`/`frame`/`release`/`send`/`flush`) allocates nothing
//! and logs nothing; counters are published with one relaxed atomic add per
//! batch.

use std::cell::UnsafeCell;
use std::ffi::{c_void, CString};
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use libbpf_sys as bpf;
use thiserror::Error;

use crate::port::{KernelPortStats, KernelStats, Port, PortRx, PortTx, MAX_FRAME};

/// Size of one UMEM frame (and the largest frame a port can send).
const FRAME_SIZE: u32 = MAX_FRAME as u32;
/// Mask that turns any address inside a frame into the frame's start.
const FRAME_MASK: u64 = !(FRAME_SIZE as u64 - 1);
/// Upper bound of `sendto` kicks per flush (copy mode moves 32 frames per kick).
const MAX_KICKS: u32 = 256;

/// How the XDP program and the socket are attached to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XskMode {
    /// Native (driver) mode, falling back to generic (skb) mode.
    #[default]
    Auto,
    /// Native (driver) XDP; the socket uses zero-copy if the driver has it.
    Native,
    /// Generic (skb) XDP with a copy-mode socket; works on any interface.
    Skb,
}

impl fmt::Display for XskMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XskMode::Auto => "auto mode",
            XskMode::Native => "native mode",
            XskMode::Skb => "skb mode",
        })
    }
}

/// Options for [`XskPort::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskOptions {
    /// Queue (channel) of the interface to bind to.
    pub queue: u32,
    /// Attach mode.
    pub mode: XskMode,
    /// UMEM frames of 2048 bytes; half for receiving, half for sending.
    pub frames: u32,
    /// Size of the RX and TX descriptor rings (a power of two).
    pub ring_size: u32,
}

impl Default for XskOptions {
    fn default() -> Self {
        XskOptions {
            queue: 0,
            mode: XskMode::Auto,
            frames: 4096,
            ring_size: 2048,
        }
    }
}

/// Errors of opening or managing an AF_XDP port.
#[derive(Debug, Error)]
pub enum XskError {
    /// The interface does not exist (or its name is not a valid name).
    #[error("no such interface '{0}'")]
    NoSuchInterface(String),
    /// The options cannot work.
    #[error("{ifname}: invalid AF_XDP options: {reason}")]
    InvalidOptions {
        /// Interface name.
        ifname: String,
        /// What is wrong.
        reason: String,
    },
    /// A setup step failed in the kernel or in libbpf.
    #[error("{ifname}: {step}: {}", os_message(source))]
    Step {
        /// Interface name.
        ifname: String,
        /// The failing step, e.g. `bind AF_XDP socket (native mode)`.
        step: String,
        /// The OS error.
        source: io::Error,
    },
}

/// The OS error text without io::Error's ` (os error N)` suffix.
fn os_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if e.raw_os_error().is_some() => s[..i].to_string(),
        _ => s,
    }
}

/// Packet counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames submitted for transmission.
    pub tx_packets: u64,
    /// Bytes submitted for transmission.
    pub tx_bytes: u64,
    /// Frames `send` refused (no free TX frame, TX ring full, bad length).
    pub tx_dropped: u64,
    /// The socket's kernel statistics (all 0 once the port is closed).
    pub kernel: KernelPortStats,
}

/// Userspace counters, shared between the halves and [`XskStats`].
#[derive(Debug, Default)]
struct Counters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    tx_wakeups: AtomicU64,
}

impl Counters {
    /// The userspace counters (kernel statistics left at 0).
    fn snapshot(&self) -> PortCounters {
        PortCounters {
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
            ..PortCounters::default()
        }
    }
}

/// Interfaces with open ports: (ifindex, xdp mode flags, open ports, whether
/// ferrovs attached the XDP program and must remove it).
static ATTACHED: Mutex<Vec<Attachment>> = Mutex::new(Vec::new());

#[derive(Debug, Clone, Copy)]
struct Attachment {
    ifindex: u32,
    mode_flags: u32,
    ports: u32,
    owned: bool,
}

/// The UMEM memory: an anonymous private mapping.
#[derive(Debug)]
struct Area {
    ptr: *mut u8,
    len: usize,
}

impl Area {
    fn new(len: usize) -> io::Result<Area> {
        // SAFETY: anonymous mapping with no address hint; the result is checked
        // against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Area {
            ptr: p.cast::<u8>(),
            len,
        })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping created in `Area::new`; the
        // socket and UMEM that referenced it are deleted before (see Shared).
        unsafe {
            libc::munmap(self.ptr.cast::<c_void>(), self.len);
        }
    }
}

/// The four ring handles libbpf fills in. They live in one heap allocation
/// whose address libbpf keeps (for the fill and completion rings, and for the
/// RX/TX rings in `xsk_socket__delete`), so it must not move or be freed
/// before the socket is deleted.
#[derive(Debug, Default)]
struct Rings {
    rx: UnsafeCell<bpf::xsk_ring_cons>,
    tx: UnsafeCell<bpf::xsk_ring_prod>,
    fill: UnsafeCell<bpf::xsk_ring_prod>,
    comp: UnsafeCell<bpf::xsk_ring_cons>,
}

/// Everything both halves share. Dropped when the last half goes.
struct Shared {
    name: String,
    ifindex: u32,
    mode: XskMode,
    xsk: *mut bpf::xsk_socket,
    umem: *mut bpf::xsk_umem,
    fd: RawFd,
    registered: bool,
    rx_frames: u32,
    tx_frames: u32,
    counters: Arc<Counters>,
    // Dropped after `Drop::drop` has deleted the socket and the UMEM:
    rings: Box<Rings>,
    area: Area,
}

// SAFETY: the raw pointers refer to libbpf objects and mappings owned by this
// struct. libbpf's socket and UMEM objects are only used during construction
// (single-threaded) and in Drop (exclusive). The rings are partitioned: the RX
// and fill rings are only used by the one XskRx, the TX and completion rings
// only by the one XskTx, and the UMEM frames are partitioned the same way.
// `fd` is only used for thread-safe syscalls (poll/recvfrom/sendto/getsockopt).
unsafe impl Send for Shared {}
// SAFETY: see the Send impl: no shared-reference method mutates anything
// through the pointers except via the partition described there.
unsafe impl Sync for Shared {}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("ifindex", &self.ifindex)
            .field("mode", &self.mode)
            .field("fd", &self.fd)
            .field("rx_frames", &self.rx_frames)
            .field("tx_frames", &self.tx_frames)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn kernel_stats(&self) -> Option<bpf::xdp_statistics> {
        let mut st = bpf::xdp_statistics::default();
        let mut len = std::mem::size_of::<bpf::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `st` is a writable xdp_statistics and `len` its size; the
        // kernel writes at most `len` bytes. `fd` is open while `self` lives.
        let r = unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut st as *mut bpf::xdp_statistics).cast::<c_void>(),
                &mut len,
            )
        };
        (r == 0).then_some(st)
    }

    /// The socket's kernel statistics in the port's terms.
    fn kernel_port_stats(&self) -> Option<KernelPortStats> {
        self.kernel_stats().map(|st| KernelPortStats {
            rx_ring_full: st.rx_ring_full,
            rx_fill_empty: st.rx_fill_ring_empty_descs,
            rx_dropped: st.rx_dropped,
            invalid_descs: st.rx_invalid_descs + st.tx_invalid_descs,
            tx_ring_empty: st.tx_ring_empty_descs,
            tx_wakeups: self.counters.tx_wakeups.load(Ordering::Relaxed),
        })
    }

    fn counters(&self) -> PortCounters {
        PortCounters {
            kernel: self.kernel_port_stats().unwrap_or_default(),
            ..self.counters.snapshot()
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: `xsk` is null or the socket created in `open_mode`; nothing
        // uses it any more (both halves are gone). libbpf accepts null.
        unsafe { bpf::xsk_socket__delete(self.xsk) };
        self.xsk = ptr::null_mut();
        // SAFETY: `umem` is null or the UMEM created in `open_mode`, whose only
        // socket was deleted just above. libbpf accepts null.
        unsafe { bpf::xsk_umem__delete(self.umem) };
        self.umem = ptr::null_mut();
        if self.registered {
            unregister(self.ifindex);
        }
    }
}

/// Records one more open port on `ifindex` (caller holds the registry lock).
/// `owned` says whether ferrovs attached the XDP program.
fn register(list: &mut Vec<Attachment>, ifindex: u32, mode_flags: u32, owned: bool) {
    match list.iter_mut().find(|a| a.ifindex == ifindex) {
        Some(a) => a.ports += 1,
        None => list.push(Attachment {
            ifindex,
            mode_flags,
            ports: 1,
            owned,
        }),
    }
}

/// Forgets one port on `ifindex`; the last one removes the XDP program if
/// ferrovs attached it.
fn unregister(ifindex: u32) {
    let mut list = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pos) = list.iter().position(|a| a.ifindex == ifindex) else {
        return;
    };
    let a = &mut list[pos];
    a.ports = a.ports.saturating_sub(1);
    if a.ports == 0 {
        let a = list.swap_remove(pos);
        if a.owned {
            // Best effort: there is nobody to report a failure to in Drop.
            let _ = set_xdp_fd(a.ifindex, -1, a.mode_flags);
        }
    }
}

fn set_xdp_fd(ifindex: u32, fd: i32, flags: u32) -> io::Result<()> {
    let Ok(idx) = i32::try_from(ifindex) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: plain netlink request with integer arguments.
    let r = unsafe { bpf::bpf_set_link_xdp_fd(idx, fd, flags) };
    if r < 0 {
        Err(io::Error::from_raw_os_error(-r))
    } else {
        Ok(())
    }
}

fn xdp_prog_id(ifindex: u32, flags: u32) -> io::Result<u32> {
    let Ok(idx) = i32::try_from(ifindex) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let mut id: u32 = 0;
    // SAFETY: `id` is a valid u32 out-parameter.
    let r = unsafe { bpf::bpf_get_link_xdp_id(idx, &mut id, flags) };
    if r < 0 {
        Err(io::Error::from_raw_os_error(-r))
    } else {
        Ok(id)
    }
}

/// Looks up an interface index by name.
pub fn ifindex(ifname: &str) -> Result<u32, XskError> {
    let missing = || XskError::NoSuchInterface(ifname.to_string());
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(missing());
    }
    let c = CString::new(ifname).map_err(|_| missing())?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(missing())
    } else {
        Ok(idx)
    }
}

/// Removes any XDP program (native and generic) from `ifname`, e.g. one left
/// behind by a crashed switch. Not needed after a clean shutdown: dropping
/// the last [`XskPort`] of an interface already does it.
pub fn detach_xdp(ifname: &str) -> Result<(), XskError> {
    let idx = ifindex(ifname)?;
    for (flags, what) in [
        (bpf::XDP_FLAGS_DRV_MODE, "native mode"),
        (bpf::XDP_FLAGS_SKB_MODE, "skb mode"),
    ] {
        let step = |source| XskError::Step {
            ifname: ifname.to_string(),
            step: format!("detach XDP program ({what})"),
            source,
        };
        if xdp_prog_id(idx, flags).map_err(step)? != 0 {
            set_xdp_fd(idx, -1, flags).map_err(step)?;
        }
    }
    Ok(())
}

/// Whether this kernel supports AF_XDP sockets (and we may create them).
pub fn af_xdp_available() -> bool {
    // SAFETY: plain socket(2) call; the fd is closed right away if valid.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned here.
    unsafe { libc::close(fd) };
    true
}

/// Pins the calling thread to CPU `core` (best effort: an invalid core
/// leaves the thread unpinned).
pub fn pin_current_thread(core: usize) {
    if core >= libc::CPU_SETSIZE as usize {
        return;
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` is below CPU_SETSIZE (checked above), so CPU_SET stays
    // inside `set`.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 means
    // the calling thread.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Sets the calling thread's timer slack (how late the kernel may end its
/// sleeps, 50 µs by default) to `ns` nanoseconds, so the poll threads'
/// short naps end on time. Best effort.
pub fn set_current_thread_timer_slack(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes
    // only the calling thread's timer slack; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0);
    }
}

/// Sets the calling thread's niceness (-20..19; Linux keeps it per
/// thread). Lowering it below the current value needs `CAP_SYS_NICE`.
pub fn set_current_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority takes plain integers; PRIO_PROCESS with id 0 is
    // the calling thread on Linux. No memory is passed.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's niceness.
pub fn current_thread_nice() -> i32 {
    // SAFETY: getpriority takes plain integers; PRIO_PROCESS with id 0 is
    // the calling thread on Linux. It cannot fail for the calling thread,
    // and -1 is a valid niceness, so errno is not consulted.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Raises RLIMIT_MEMLOCK so older kernels can pin the UMEM. Failure is not
/// fatal: kernels since 5.11 account the memory to the cgroup instead.
fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `lim` is a valid rlimit for the duration of the call.
    unsafe {
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
    }
}

/// An AF_XDP port on one queue of an interface. See the module docs.
#[derive(Debug)]
pub struct XskPort {
    name: String,
    rx: XskRx,
    tx: XskTx,
}

impl XskPort {
    /// Opens an AF_XDP socket on `ifname` (loading and attaching libbpf's
    /// default XDP program if the interface has none) and fills the fill
    /// ring. Needs CAP_NET_ADMIN (and CAP_BPF/CAP_SYS_ADMIN).
    pub fn open(ifname: &str, opts: XskOptions) -> Result<XskPort, XskError> {
        let idx = ifindex(ifname)?;
        let invalid = |reason: String| XskError::InvalidOptions {
            ifname: ifname.to_string(),
            reason,
        };
        if !opts.ring_size.is_power_of_two() || !(64..=65536).contains(&opts.ring_size) {
            return Err(invalid(format!(
                "ring size {} is not a power of two between 64 and 65536",
                opts.ring_size
            )));
        }
        if !(128..=1 << 20).contains(&opts.frames) {
            return Err(invalid(format!(
                "{} frames is outside 128..=1048576",
                opts.frames
            )));
        }
        raise_memlock();
        let shared = match opts.mode {
            XskMode::Native | XskMode::Skb => open_mode(ifname, idx, &opts, opts.mode)?,
            XskMode::Auto => match open_mode(ifname, idx, &opts, XskMode::Native) {
                Ok(s) => s,
                Err(native) => {
                    let first = match &native {
                        XskError::Step { step, source, .. } => {
                            format!("{step}: {}", os_message(source))
                        }
                        other => other.to_string(),
                    };
                    open_mode(ifname, idx, &opts, XskMode::Skb).map_err(|e| match e {
                        XskError::Step {
                            ifname,
                            step,
                            source,
                        } => XskError::Step {
                            ifname,
                            step: format!("{step} [after {first}]"),
                            source,
                        },
                        other => other,
                    })?
                }
            },
        };
        Ok(XskPort::from_shared(shared))
    }

    fn from_shared(shared: Shared) -> XskPort {
        let rx_frames = shared.rx_frames;
        let tx_frames = shared.tx_frames;
        let name = shared.name.clone();
        let shared = Arc::new(shared);
        let mut rx = XskRx {
            shared: Arc::clone(&shared),
            idx: 0,
            n: 0,
            stash: Vec::with_capacity(rx_frames as usize),
        };
        // Hand all receive frames to the kernel (the fill ring holds them all).
        rx.stash.extend(
            (0..rx_frames)
                .rev()
                .map(|i| u64::from(i) * u64::from(FRAME_SIZE)),
        );
        rx.refill();
        let tx = XskTx {
            free: (rx_frames..rx_frames + tx_frames)
                .rev()
                .map(|i| u64::from(i) * u64::from(FRAME_SIZE))
                .collect(),
            shared,
            queued: 0,
            queued_bytes: 0,
            outstanding: 0,
            dropped: 0,
            kick_pending: false,
        };
        XskPort { name, rx, tx }
    }

    /// The mode actually in use: [`XskMode::Native`] or [`XskMode::Skb`].
    pub fn mode(&self) -> XskMode {
        self.rx.shared.mode
    }

    /// Interface index.
    pub fn ifindex(&self) -> u32 {
        self.rx.shared.ifindex
    }

    /// Current counters.
    pub fn counters(&self) -> PortCounters {
        self.rx.shared.counters()
    }

    /// A handle that reads the counters also after [`Port::split`].
    pub fn stats(&self) -> XskStats {
        XskStats {
            counters: Arc::clone(&self.rx.shared.counters),
            shared: Arc::downgrade(&self.rx.shared),
        }
    }
}

impl Port for XskPort {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "afxdp"
    }
    fn kernel_stats(&self) -> Option<Arc<dyn KernelStats>> {
        Some(Arc::new(self.stats()))
    }
    fn split(self: Box<Self>) -> (Box<dyn PortRx>, Box<dyn PortTx>) {
        let XskPort { rx, tx, .. } = *self;
        (Box::new(rx), Box::new(tx))
    }
}

/// Reads a port's counters, also after the port was split.
#[derive(Debug, Clone)]
pub struct XskStats {
    counters: Arc<Counters>,
    shared: Weak<Shared>,
}

impl XskStats {
    /// Current counters; the kernel's drop counters are 0 once the port is closed.
    pub fn get(&self) -> PortCounters {
        match self.shared.upgrade() {
            Some(s) => s.counters(),
            None => self.counters.snapshot(),
        }
    }
}

impl KernelStats for XskStats {
    fn read(&self) -> Option<KernelPortStats> {
        self.shared.upgrade().and_then(|s| s.kernel_port_stats())
    }
}

/// Creates UMEM and socket in one mode (Native or Skb).
fn open_mode(ifname: &str, idx: u32, opts: &XskOptions, mode: XskMode) -> Result<Shared, XskError> {
    let step = |step: &str, source: io::Error| XskError::Step {
        ifname: ifname.to_string(),
        step: format!("{step} ({mode})"),
        source,
    };
    let rx_frames = opts.frames / 2;
    let tx_frames = opts.frames - rx_frames;
    let (mode_flags, bind_flags) = match mode {
        XskMode::Skb => (bpf::XDP_FLAGS_SKB_MODE, bpf::XDP_COPY),
        _ => (bpf::XDP_FLAGS_DRV_MODE, 0),
    };
    let len = opts.frames as usize * FRAME_SIZE as usize;
    let area = Area::new(len).map_err(|e| step("allocate UMEM memory", e))?;
    let mut sh = Shared {
        name: ifname.to_string(),
        ifindex: idx,
        mode,
        xsk: ptr::null_mut(),
        umem: ptr::null_mut(),
        fd: -1,
        registered: false,
        rx_frames,
        tx_frames,
        counters: Arc::default(),
        rings: Box::default(),
        area,
    };

    let ucfg = bpf::xsk_umem_config {
        fill_size: rx_frames.next_power_of_two(),
        comp_size: tx_frames.next_power_of_two(),
        frame_size: FRAME_SIZE,
        frame_headroom: 0,
        flags: 0,
    };
    // SAFETY: the area is a live mapping of `len` bytes owned by `sh` (which
    // deletes the UMEM before unmapping); the ring handles live in `sh.rings`,
    // a heap allocation that stays put until after the UMEM is deleted.
    let r = unsafe {
        bpf::xsk_umem__create(
            &mut sh.umem,
            sh.area.ptr.cast::<c_void>(),
            len as u64,
            sh.rings.fill.get(),
            sh.rings.comp.get(),
            &ucfg,
        )
    };
    if r != 0 {
        sh.umem = ptr::null_mut();
        return Err(step("register UMEM", io::Error::from_raw_os_error(-r)));
    }

    let scfg = bpf::xsk_socket_config {
        rx_size: opts.ring_size,
        tx_size: opts.ring_size,
        libbpf_flags: 0,
        xdp_flags: bpf::XDP_FLAGS_UPDATE_IF_NOEXIST | mode_flags,
        bind_flags: (bpf::XDP_USE_NEED_WAKEUP | bind_flags) as u16,
    };
    let cname = CString::new(ifname).map_err(|_| XskError::NoSuchInterface(ifname.to_string()))?;
    // Hold the registry lock so a concurrent close on the same interface
    // cannot remove the program between our check and the attach.
    let mut list = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
    let pre = xdp_prog_id(idx, mode_flags).unwrap_or(0);
    // SAFETY: `cname` is NUL-terminated; `sh.umem` is the UMEM created above;
    // the RX/TX ring handles live in `sh.rings` (stable heap address) until
    // after `xsk_socket__delete` in Shared's Drop.
    let r = unsafe {
        bpf::xsk_socket__create(
            &mut sh.xsk,
            cname.as_ptr(),
            opts.queue,
            sh.umem,
            sh.rings.rx.get(),
            sh.rings.tx.get(),
            &scfg,
        )
    };
    if r != 0 {
        sh.xsk = ptr::null_mut();
        return Err(step("bind AF_XDP socket", io::Error::from_raw_os_error(-r)));
    }
    // A program we did not find before the socket was created is ours.
    register(&mut list, idx, mode_flags, pre == 0);
    drop(list);
    sh.registered = true;
    // SAFETY: `sh.xsk` is the socket just created.
    sh.fd = unsafe { bpf::xsk_socket__fd(sh.xsk) };
    Ok(sh)
}

/// Receive half of an [`XskPort`].
pub struct XskRx {
    shared: Arc<Shared>,
    /// First RX ring index of the current batch.
    idx: u32,
    /// Frames in the current batch.
    n: u32,
    /// Frame addresses waiting to go back into the fill ring.
    stash: Vec<u64>,
}

impl fmt::Debug for XskRx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskRx")
            .field("port", &self.shared.name)
            .field("batch", &self.n)
            .field("stash", &self.stash.len())
            .finish()
    }
}

impl XskRx {
    fn rx_ring(&self) -> *mut bpf::xsk_ring_cons {
        self.shared.rings.rx.get()
    }
    fn fill_ring(&self) -> *mut bpf::xsk_ring_prod {
        self.shared.rings.fill.get()
    }

    fn desc(&self, i: u32) -> bpf::xdp_desc {
        // SAFETY: only called for i < n: the slot idx+i was peeked and not yet
        // released, so the kernel does not write it; the RX ring is only used
        // by this half.
        unsafe { *bpf::_xsk_ring_cons__rx_desc(self.rx_ring(), self.idx.wrapping_add(i)) }
    }

    /// Moves stashed frames into the fill ring.
    fn refill(&mut self) {
        let want = self.stash.len() as u32;
        if want == 0 {
            return;
        }
        let fill = self.fill_ring();
        let mut fidx: u32 = 0;
        // SAFETY: the fill ring is only used by this half; `fidx` is a valid out-param.
        let got = unsafe { bpf::_xsk_ring_prod__reserve(fill, u64::from(want), &mut fidx) } as u32;
        for k in 0..got {
            let Some(addr) = self.stash.pop() else { break };
            // SAFETY: slot fidx+k is within the `got` slots just reserved.
            unsafe { *bpf::_xsk_ring_prod__fill_addr(fill, fidx.wrapping_add(k)) = addr };
        }
        if got > 0 {
            // SAFETY: submits exactly the slots reserved and written above.
            unsafe { bpf::_xsk_ring_prod__submit(fill, u64::from(got)) };
        }
    }

    fn kick(&self) {
        // SAFETY: zero-length non-blocking receive on our own socket; null
        // buffer and address pointers are allowed with length 0.
        unsafe {
            libc::recvfrom(
                self.shared.fd,
                ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
                ptr::null_mut(),
            );
        }
    }
}

impl PortRx for XskRx {
    fn recv(&mut self, max: usize) -> usize {
        if self.n > 0 {
            self.release();
        }
        let max = max.min(u32::MAX as usize) as u64;
        if max == 0 {
            return 0;
        }
        let mut idx: u32 = 0;
        // SAFETY: the RX ring is only used by this half; `idx` is a valid out-param.
        let n = unsafe { bpf::_xsk_ring_cons__peek(self.rx_ring(), max, &mut idx) } as u32;
        if n == 0 {
            // SAFETY: reads the fill ring's flags word, mapped while the socket lives.
            if unsafe { bpf::_xsk_ring_prod__needs_wakeup(self.fill_ring()) } != 0 {
                self.kick();
            }
            return 0;
        }
        self.idx = idx;
        self.n = n;
        let bytes: u64 = (0..n).map(|i| u64::from(self.desc(i).len)).sum();
        let c = &self.shared.counters;
        c.rx_packets.fetch_add(u64::from(n), Ordering::Relaxed);
        c.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        n as usize
    }

    fn frame(&mut self, i: usize) -> &mut [u8] {
        if i >= self.n as usize {
            return &mut [];
        }
        let d = self.desc(i as u32);
        let (Ok(addr), Ok(len)) = (usize::try_from(d.addr), usize::try_from(d.len)) else {
            return &mut [];
        };
        match addr.checked_add(len) {
            Some(end) if end <= self.shared.area.len => {}
            _ => return &mut [],
        }
        // SAFETY: addr..addr+len lies inside the UMEM mapping (checked above),
        // which lives as long as `self.shared`. The kernel handed this frame to
        // userspace through the RX ring and gets it back only in `release`,
        // which needs `&mut self`, so the returned borrow ends before that.
        // Frames of one batch are distinct, and `&mut self` prevents two
        // frames being borrowed at once.
        unsafe { std::slice::from_raw_parts_mut(self.shared.area.ptr.add(addr), len) }
    }

    fn frames_mut<'a>(&'a mut self, out: &mut [&'a mut [u8]]) -> usize {
        let n = (self.n as usize).min(out.len());
        let area = self.shared.area.len;
        for (i, o) in out.iter_mut().enumerate().take(n) {
            let d = self.desc(i as u32);
            let (Ok(addr), Ok(len)) = (usize::try_from(d.addr), usize::try_from(d.len)) else {
                *o = &mut [];
                continue;
            };
            match addr.checked_add(len) {
                Some(end) if end <= area => {}
                _ => {
                    *o = &mut [];
                    continue;
                }
            }
            // SAFETY: as in `frame`: addr..addr+len lies inside the UMEM
            // mapping (checked above), which lives as long as `self.shared`;
            // the kernel handed the frame to userspace through the RX ring
            // and gets it back only in `release`, which needs `&mut self`,
            // borrowed here for 'a. The descriptors of one batch name
            // distinct UMEM frames (each address is given to the fill ring
            // once), so the slices handed out together never overlap.
            *o = unsafe { std::slice::from_raw_parts_mut(self.shared.area.ptr.add(addr), len) };
        }
        n
    }

    fn release(&mut self) {
        let n = self.n;
        if n == 0 {
            return;
        }
        for i in 0..n {
            let addr = self.desc(i).addr & FRAME_MASK;
            if self.stash.len() < self.stash.capacity() {
                self.stash.push(addr);
            }
        }
        // SAFETY: gives back exactly the `n` slots peeked in `recv`; their
        // addresses were copied into the stash above.
        unsafe { bpf::_xsk_ring_cons__release(self.rx_ring(), u64::from(n)) };
        self.n = 0;
        self.refill();
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.shared.fd)
    }
}

/// Transmit half of an [`XskPort`].
pub struct XskTx {
    shared: Arc<Shared>,
    /// Free TX frame addresses.
    free: Vec<u64>,
    /// Descriptors written to the TX ring but not yet submitted.
    queued: u32,
    queued_bytes: u64,
    /// Submitted frames not yet seen on the completion ring.
    outstanding: u32,
    /// Drops not yet published to the counters.
    dropped: u64,
    /// Submitted frames the kernel may not have been told about yet.
    kick_pending: bool,
}

impl fmt::Debug for XskTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskTx")
            .field("port", &self.shared.name)
            .field("free", &self.free.len())
            .field("queued", &self.queued)
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

impl XskTx {
    fn tx_ring(&self) -> *mut bpf::xsk_ring_prod {
        self.shared.rings.tx.get()
    }

    /// Moves completed frames back to the free list.
    fn reap(&mut self) {
        let room = (self.free.capacity() - self.free.len()) as u64;
        if room == 0 {
            return;
        }
        let comp = self.shared.rings.comp.get();
        let mut idx: u32 = 0;
        // SAFETY: the completion ring is only used by this half.
        let n = unsafe { bpf::_xsk_ring_cons__peek(comp, room, &mut idx) } as u32;
        if n == 0 {
            return;
        }
        for k in 0..n {
            // SAFETY: slot idx+k is within the `n` slots just peeked.
            let addr = unsafe { *bpf::_xsk_ring_cons__comp_addr(comp, idx.wrapping_add(k)) };
            self.free.push(addr & FRAME_MASK);
        }
        // SAFETY: releases exactly the slots peeked above.
        unsafe { bpf::_xsk_ring_cons__release(comp, u64::from(n)) };
        self.outstanding = self.outstanding.saturating_sub(n);
    }

    /// Tells the kernel to transmit. In copy mode one call sends at most a
    /// small batch and fails with EAGAIN if more is left, so repeat a bit.
    /// Returns whether the kernel has taken everything it can for now.
    fn kick(&mut self) -> bool {
        for _ in 0..MAX_KICKS {
            self.shared
                .counters
                .tx_wakeups
                .fetch_add(1, Ordering::Relaxed);
            // SAFETY: zero-length non-blocking send on our own socket; null
            // buffer and address are allowed with length 0.
            let r = unsafe {
                libc::sendto(
                    self.shared.fd,
                    ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    ptr::null(),
                    0,
                )
            };
            if r >= 0 {
                return true;
            }
            match io::Error::last_os_error().raw_os_error() {
                // Frames left in the TX ring: reap so the kernel has
                // completion-ring room, then kick again.
                Some(libc::EAGAIN) | Some(libc::EINTR) => self.reap(),
                // Temporarily out of buffers: try again at the next flush.
                Some(libc::ENOBUFS) | Some(libc::EBUSY) => return false,
                // Link down or similar: nothing a retry would change now.
                _ => return true,
            }
        }
        false
    }
}

impl PortTx for XskTx {
    fn send(&mut self, frame: &[u8]) -> bool {
        if frame.is_empty() || frame.len() > FRAME_SIZE as usize {
            self.dropped += 1;
            return false;
        }
        if self.free.is_empty() {
            self.reap();
        }
        let Some(addr) = self.free.pop() else {
            self.dropped += 1;
            return false;
        };
        let tx = self.tx_ring();
        let mut idx: u32 = 0;
        // SAFETY: the TX ring is only used by this half.
        if unsafe { bpf::_xsk_ring_prod__reserve(tx, 1, &mut idx) } != 1 {
            self.free.push(addr);
            self.dropped += 1;
            return false;
        }
        // SAFETY: `addr` is a free TX frame (owned by userspace, not in any
        // ring) whose FRAME_SIZE bytes lie inside the UMEM mapping, and
        // frame.len() <= FRAME_SIZE. Source and destination cannot overlap:
        // `frame` is a borrowed slice not pointing into a free frame.
        unsafe {
            ptr::copy_nonoverlapping(
                frame.as_ptr(),
                self.shared.area.ptr.add(addr as usize),
                frame.len(),
            );
        }
        // SAFETY: slot `idx` was just reserved; the descriptor pointer is valid.
        unsafe {
            let d = bpf::_xsk_ring_prod__tx_desc(tx, idx);
            (*d).addr = addr;
            (*d).len = frame.len() as u32;
            (*d).options = 0;
        }
        self.queued += 1;
        self.queued_bytes += frame.len() as u64;
        true
    }

    fn send_batch(&mut self, frames: &[&[u8]]) -> (usize, u64) {
        let fits = |f: &&[u8]| !f.is_empty() && f.len() <= FRAME_SIZE as usize;
        if self.free.len() < frames.len() {
            self.reap();
        }
        let n = frames.len();
        // One reservation for the whole batch when every frame fits, a TX
        // frame is free for each and the ring has room; otherwise frame by
        // frame, as `send` does.
        let mut idx: u32 = 0;
        let reserved = n > 0
            && n <= self.free.len()
            && u32::try_from(n).is_ok()
            && frames.iter().all(fits)
            // SAFETY: the TX ring is only used by this half; `idx` is a
            // valid out-param. The kernel reserves all `n` slots or none.
            && unsafe { bpf::_xsk_ring_prod__reserve(self.tx_ring(), n as u64, &mut idx) }
                == n as u64;
        if !reserved {
            let (mut sent, mut bytes) = (0, 0);
            for f in frames {
                if self.send(f) {
                    sent += 1;
                    bytes += f.len() as u64;
                }
            }
            return (sent, bytes);
        }
        let tx = self.tx_ring();
        let area = self.shared.area.ptr;
        let mut bytes = 0u64;
        // Exactly `n` free TX frames (n <= free.len(), checked above), one
        // per frame and reserved slot.
        let base = self.free.len() - n;
        for (k, (f, addr)) in frames.iter().zip(self.free.drain(base..)).enumerate() {
            // SAFETY: `addr` is a free TX frame (owned by userspace, not in
            // any ring) whose FRAME_SIZE bytes lie inside the UMEM mapping,
            // and f.len() <= FRAME_SIZE (checked above). Source and
            // destination cannot overlap: `f` is a borrowed slice not
            // pointing into a free frame.
            unsafe {
                ptr::copy_nonoverlapping(f.as_ptr(), area.add(addr as usize), f.len());
            }
            // SAFETY: slot idx+k is one of the `n` slots just reserved; the
            // descriptor pointer is valid.
            unsafe {
                let d = bpf::_xsk_ring_prod__tx_desc(tx, idx.wrapping_add(k as u32));
                (*d).addr = addr;
                (*d).len = f.len() as u32;
                (*d).options = 0;
            }
            bytes += f.len() as u64;
        }
        self.queued += n as u32;
        self.queued_bytes += bytes;
        (n, bytes)
    }

    fn flush(&mut self) {
        self.submit();
        if self.kick_pending {
            // SAFETY: reads the TX ring's flags word, mapped while the socket lives.
            let wake = unsafe { bpf::_xsk_ring_prod__needs_wakeup(self.tx_ring()) } != 0;
            self.kick_pending = wake && !self.kick();
        }
        self.reap();
    }

    fn submit(&mut self) -> bool {
        let c = &self.shared.counters;
        if self.queued > 0 {
            // SAFETY: submits exactly the descriptors reserved and written in `send`.
            unsafe { bpf::_xsk_ring_prod__submit(self.tx_ring(), u64::from(self.queued)) };
            c.tx_packets
                .fetch_add(u64::from(self.queued), Ordering::Relaxed);
            c.tx_bytes.fetch_add(self.queued_bytes, Ordering::Relaxed);
            self.outstanding += self.queued;
            self.queued = 0;
            self.kick_pending = true;
            self.queued_bytes = 0;
        }
        if self.dropped > 0 {
            c.tx_dropped.fetch_add(self.dropped, Ordering::Relaxed);
            self.dropped = 0;
        }
        self.kick_pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_is_named() {
        let e = XskPort::open("fvs-nonexist0", XskOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "no such interface 'fvs-nonexist0'");
        let e = ifindex("a-name-that-is-far-too-long").unwrap_err();
        assert!(matches!(e, XskError::NoSuchInterface(_)));
    }

    #[test]
    fn step_error_format() {
        let e = XskError::Step {
            ifname: "veth-a".into(),
            step: format!("bind AF_XDP socket ({})", XskMode::Native),
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert_eq!(
            e.to_string(),
            "veth-a: bind AF_XDP socket (native mode): Device or resource busy"
        );
    }

    #[test]
    fn thread_nice_is_per_thread() {
        let before = current_thread_nice();
        let want = (before + 7).min(19);
        let inside = std::thread::spawn(move || {
            set_current_thread_nice(want).unwrap();
            current_thread_nice()
        })
        .join()
        .unwrap();
        assert_eq!(inside, want);
        assert_eq!(current_thread_nice(), before, "other threads keep theirs");
    }

    #[test]
    fn bad_ring_size_rejected() {
        let opts = XskOptions {
            ring_size: 1000,
            ..XskOptions::default()
        };
        let e = XskPort::open("lo", opts).unwrap_err();
        assert!(e.to_string().contains("ring size 1000"), "{e}");
    }
}
