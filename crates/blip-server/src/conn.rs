//! The accept loop: HTTP/1 connections served by hyper, each with a clock that cuts off clients
//! that hold a connection without using it (axum::serve has no such timeouts):
//! - a new connection must send its first request's headers within `--header-read-timeout`;
//! - once a request's first bytes are in, its headers must complete within the same bound;
//! - between requests a kept-alive connection may stay silent for `--idle-timeout`;
//! - while a request is in flight the connection is not timed here: its body has
//!   `--body-read-timeout` (`routes::read_body`) and its answer `--request-timeout`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

/// The timeouts of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in flight and no byte of the next one yet (`first`: none has come at all).
    Waiting { since: Instant, first: bool },
    /// Bytes of a request's head have come; its headers are not complete.
    ReadingHead { since: Instant },
    /// Requests in flight (the handlers time themselves).
    Busy(usize),
}

/// Where one connection stands, shared by its stream and its service.
struct Clock {
    phase: Mutex<Phase>,
    timeouts: Timeouts,
    /// The task last waiting to read: woken when a request ends, so that the idle timer starts
    /// even if hyper polled the read side while the request was in flight.
    reader: Mutex<Option<std::task::Waker>>,
}

impl Clock {
    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut g = match self.phase.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = f(*g);
    }

    fn phase(&self) -> Phase {
        match self.phase.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    fn bytes_in(&self) {
        self.update(|p| match p {
            Phase::Waiting { .. } => Phase::ReadingHead {
                since: Instant::now(),
            },
            other => other,
        });
    }

    fn bytes_out(&self) {
        // A response still being written is not idle time.
        self.update(|p| match p {
            Phase::Waiting { first, .. } => Phase::Waiting {
                since: Instant::now(),
                first,
            },
            other => other,
        });
    }

    /// When the connection is cut off if nothing changes, and why.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        match self.phase() {
            Phase::Waiting { since, first: true } | Phase::ReadingHead { since } => Some((
                since + self.timeouts.header_read,
                "the request headers did not arrive within --header-read-timeout",
            )),
            Phase::Waiting {
                since,
                first: false,
            } => Some((
                since + self.timeouts.idle,
                "the connection was idle past --idle-timeout",
            )),
            Phase::Busy(_) => None,
        }
    }
}

/// Marks a request in flight on its connection while it lives.
struct InFlight(Arc<Clock>);

impl InFlight {
    fn start(clock: Arc<Clock>) -> InFlight {
        clock.update(|p| match p {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
        InFlight(clock)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|p| match p {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Waiting {
                since: Instant::now(),
                first: false,
            },
        });
        let waker = match self.0.reader.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A TCP stream whose reads fail with `TimedOut` when its connection's clock runs out.
struct TimedStream {
    io: TcpStream,
    clock: Arc<Clock>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.clock.bytes_in();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                match self.clock.reader.lock() {
                    Ok(mut g) => *g = Some(cx.waker().clone()),
                    Err(p) => *p.into_inner() = Some(cx.waker().clone()),
                }
                if let Some((deadline, why)) = self.clock.deadline() {
                    self.sleep.as_mut().reset(deadline.into());
                    if self.sleep.as_mut().poll(cx).is_ready() {
                        tracing::debug!("closing a connection: {why}");
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.bytes_out();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` until `stop` turns true; then stops accepting and gives open
/// connections `grace` to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin or stop.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let clock = Arc::new(Clock {
            phase: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                first: true,
            }),
            timeouts,
            reader: Mutex::new(None),
        });
        let io = TimedStream {
            io: stream,
            clock: clock.clone(),
            sleep: Box::pin(tokio::time::sleep(timeouts.header_read)),
        };
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let in_flight = InFlight::start(clock.clone());
                let app = app.clone();
                async move {
                    let response = app.oneshot(req.map(axum::body::Body::new)).await;
                    drop(in_flight);
                    response
                }
            });
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace passed with requests in flight; stopping");
    }
    Ok(())
}
