//! Tick-paced reading of producing connections, the socket side: [`PacedIo`] wraps a connection's TCP stream so
//! that its session can stop being woken by each arriving segment (a raised `SO_RCVLOWAT`: epoll reports the socket
//! readable only once that many bytes wait) and instead read what is there once per tick, with a plain
//! non-blocking `recv` that does not depend on tokio's cached readiness (which the raised mark keeps stale).
//! The session decides when a connection is paced (`session` module); [`Pace`] is how it tells the socket.

use std::io::Read as _;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes that must wait in a paced socket before epoll wakes its reader between ticks. Far above what a producer
/// sends in a tick at its usual rates (a few hundred bytes per run), far below the receive buffer: a burst still
/// wakes the reader at once, so the buffer never fills because of the pacing.
pub const PACED_LOW_WATER: u32 = 32 * 1024;

/// What a session tells its socket: whether it is paced, and that the next read must look at the socket itself.
#[derive(Debug)]
pub struct Pace {
    /// The wanted `SO_RCVLOWAT` (1: every byte wakes the reader, the kernel's default).
    low_water: AtomicU32,
    /// Set at a tick (and when pacing ends): the next reads `recv` directly until the socket is empty.
    drain: AtomicBool,
}

impl Pace {
    pub fn new() -> Arc<Pace> {
        Arc::new(Pace { low_water: AtomicU32::new(1), drain: AtomicBool::new(false) })
    }

    /// Paces the connection (raised low-water mark) or stops (every byte wakes it again, and what the old mark
    /// held back is read at once).
    pub fn set_paced(&self, paced: bool) {
        self.low_water.store(if paced { PACED_LOW_WATER } else { 1 }, Ordering::Relaxed);
        self.drain.store(true, Ordering::Relaxed);
    }

    /// A tick: the next reads take whatever the socket holds.
    pub fn drain(&self) {
        self.drain.store(true, Ordering::Relaxed);
    }
}

/// A connection's TCP stream, read the way its [`Pace`] says (as a plain stream without one: pacing is off).
pub struct PacedIo {
    tcp: TcpStream,
    pace: Option<Arc<Pace>>,
    /// The `SO_RCVLOWAT` the socket has now.
    low_water: u32,
}

impl PacedIo {
    pub fn new(tcp: TcpStream, pace: Option<Arc<Pace>>) -> PacedIo {
        PacedIo { tcp, pace, low_water: 1 }
    }
}

/// Sets `SO_RCVLOWAT` (Linux's epoll honours it: a socket is not reported readable below the mark).
fn set_low_water(tcp: &TcpStream, bytes: u32) -> std::io::Result<()> {
    let value = bytes as libc::c_int;
    // SAFETY: the descriptor is owned by `tcp`, open for the duration of the call; the option value is a valid
    // `c_int` that outlives the call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

impl AsyncRead for PacedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(pace) = &this.pace else { return Pin::new(&mut this.tcp).poll_read(cx, buf) };
        let wanted = pace.low_water.load(Ordering::Relaxed);
        if wanted != this.low_water {
            // A socket that refuses the option is simply read as it arrives.
            if let Err(e) = set_low_water(&this.tcp, wanted) {
                tracing::debug!(error = %e, "SO_RCVLOWAT refused");
            }
            this.low_water = wanted;
        }
        if pace.drain.load(Ordering::Relaxed) {
            let socket = socket2::SockRef::from(&this.tcp);
            match (&*socket).read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Empty: back to readiness (registered below, woken by the mark or the next tick).
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => pace.drain.store(false, Ordering::Relaxed),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for PacedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
