//! The `Port` abstraction: anything frames come in from and go out to.
//!
//! A port splits into a receive half ([`PortRx`], owned by exactly one poll
//! thread) and a transmit half ([`PortTx`], shared by all poll threads behind
//! a mutex that is taken once per batch, never per packet).
//!
//! Implementations: [`crate::xsk`] (AF_XDP on a veth or NIC) and
//! [`MemPort`] (in-memory, for tests and benchmarks). VXLAN tunnel ports are
//! virtual: they encapsulate onto an underlay port (see [`crate::vxlan`]).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

/// Largest frame a port carries (Ethernet + VLAN tag, no jumbo frames).
pub const MAX_FRAME: usize = 2048;

/// Receive half of a port.
pub trait PortRx: Send {
    /// Receives up to `max` frames; they stay valid (and writable in place)
    /// until [`PortRx::release`]. Returns how many arrived.
    fn recv(&mut self, max: usize) -> usize;
    /// Frame `i` of the current batch (`i < recv()`'s result).
    fn frame(&mut self, i: usize) -> &mut [u8];
    /// All frames of the current batch at once (at most `out.len()`),
    /// each writable and borrowed until the next call on `self`: puts
    /// frame `i` in `out[i]` and returns how many were put.
    fn frames_mut<'a>(&'a mut self, out: &mut [&'a mut [u8]]) -> usize;
    /// Gives the current batch's buffers back (to the kernel, for AF_XDP).
    fn release(&mut self);
    /// A file descriptor that becomes readable when frames arrive, for the
    /// poll thread's idle wait. `None` if the port cannot be waited on.
    fn wait_fd(&self) -> Option<RawFd>;
}

/// Transmit half of a port.
pub trait PortTx: Send {
    /// Queues a copy of `frame`. Returns false (frame dropped) if the
    /// transmit ring is full.
    fn send(&mut self, frame: &[u8]) -> bool;
    /// Queues copies of `frames`, in order, as [`PortTx::send`] would one
    /// by one. Returns how many were queued and their total length (the
    /// rest were dropped).
    fn send_batch(&mut self, frames: &[&[u8]]) -> (usize, u64) {
        let (mut n, mut bytes) = (0, 0);
        for f in frames {
            if self.send(f) {
                n += 1;
                bytes += f.len() as u64;
            }
        }
        (n, bytes)
    }
    /// Submits queued frames and wakes the kernel if it asked for it.
    fn flush(&mut self);
    /// Submits queued frames but leaves waking the kernel to a later
    /// [`PortTx::flush`], so one wake-up sends the frames of several
    /// rounds ([`crate::txbatch`]). Returns true when frames wait for
    /// that wake-up; ports without one send at once.
    fn submit(&mut self) -> bool {
        self.flush();
        false
    }
}

/// What the kernel counted for a port below the switch: an AF_XDP socket's
/// `XDP_STATISTICS`. Frames the kernel dropped here never reached a poll
/// thread, so the switch's own counters cannot see them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelPortStats {
    /// Received frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Received frames dropped because the fill ring had no free frame.
    pub rx_fill_empty: u64,
    /// Received frames the socket dropped, all reasons: the kernel counts
    /// fill-ring-empty drops here too, and frames too long for a UMEM frame.
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill/RX or TX side.
    pub invalid_descs: u64,
    /// Times the kernel found the TX ring empty when asked to send.
    pub tx_ring_empty: u64,
    /// Times the switch woke the kernel to transmit (`sendto` calls); with
    /// `tx_packets` it shows how many frames one wake-up sent.
    pub tx_wakeups: u64,
}

impl KernelPortStats {
    /// Frames lost on receive, all reasons (`rx_dropped` already includes
    /// the fill-ring-empty ones; a full RX ring is counted apart).
    pub fn rx_lost(&self) -> u64 {
        self.rx_ring_full + self.rx_dropped
    }
}

/// Reads a port's [`KernelPortStats`]; outlives the port's split halves.
pub trait KernelStats: Send + Sync {
    /// Current values; `None` once the port is closed.
    fn read(&self) -> Option<KernelPortStats>;
}

/// A port that can be split into its halves.
pub trait Port: Send {
    /// Interface or port name.
    fn name(&self) -> &str;
    /// `afxdp`, `memory`, ...
    fn kind(&self) -> &'static str;
    /// The kernel's counters for this port, if it has any (AF_XDP sockets).
    fn kernel_stats(&self) -> Option<Arc<dyn KernelStats>> {
        None
    }
    /// Splits the port for the poll threads.
    fn split(self: Box<Self>) -> (Box<dyn PortRx>, Box<dyn PortTx>);
}

/// Shared queue of frames for an in-memory port.
pub type FrameQueue = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// An in-memory port: frames pushed into `inject` are received by the
/// switch; frames the switch sends appear in `sent`. Tests play the far end.
#[derive(Debug, Clone)]
pub struct MemPort {
    name: String,
    /// Frames waiting to be received by the switch.
    pub inject: FrameQueue,
    /// Frames sent by the switch.
    pub sent: FrameQueue,
}

impl MemPort {
    /// A new in-memory port.
    pub fn new(name: &str) -> Self {
        MemPort {
            name: name.to_string(),
            inject: Arc::default(),
            sent: Arc::default(),
        }
    }
}

impl Port for MemPort {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn split(self: Box<Self>) -> (Box<dyn PortRx>, Box<dyn PortTx>) {
        (
            Box::new(MemRx {
                q: self.inject,
                batch: Vec::new(),
                spare: Vec::new(),
            }),
            Box::new(MemTx { q: self.sent }),
        )
    }
}

/// Receive half of a [`MemPort`].
#[derive(Debug)]
pub struct MemRx {
    q: FrameQueue,
    batch: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

impl PortRx for MemRx {
    fn recv(&mut self, max: usize) -> usize {
        let Ok(mut q) = self.q.lock() else { return 0 };
        while self.batch.len() < max {
            match q.pop_front() {
                Some(f) => self.batch.push(f),
                None => break,
            }
        }
        self.batch.len()
    }
    fn frame(&mut self, i: usize) -> &mut [u8] {
        self.batch
            .get_mut(i)
            .map(|v| v.as_mut_slice())
            .unwrap_or(&mut [])
    }
    fn frames_mut<'a>(&'a mut self, out: &mut [&'a mut [u8]]) -> usize {
        let mut n = 0;
        for (o, f) in out.iter_mut().zip(self.batch.iter_mut()) {
            *o = f.as_mut_slice();
            n += 1;
        }
        n
    }
    fn release(&mut self) {
        self.spare.append(&mut self.batch);
        self.spare.truncate(64);
    }
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }
}

/// Transmit half of a [`MemPort`].
#[derive(Debug)]
pub struct MemTx {
    q: FrameQueue,
}

impl PortTx for MemTx {
    fn send(&mut self, frame: &[u8]) -> bool {
        match self.q.lock() {
            Ok(mut q) => {
                q.push_back(frame.to_vec());
                true
            }
            Err(_) => false,
        }
    }
    fn send_batch(&mut self, frames: &[&[u8]]) -> (usize, u64) {
        match self.q.lock() {
            Ok(mut q) => {
                let mut bytes = 0;
                for f in frames {
                    q.push_back(f.to_vec());
                    bytes += f.len() as u64;
                }
                (frames.len(), bytes)
            }
            Err(_) => (0, 0),
        }
    }
    fn flush(&mut self) {}
}
