//! The log writer of `mayfly serve`: log lines are written to stderr by a
//! thread of their own, many lines per write.
//!
//! The server logs one line per certificate. Written straight to stderr,
//! each line was a `write` system call on the async worker that served
//! the request (a pipe or journald's socket, which wakes the reader), a
//! few per cent of a certificate's CPU under load. Here a worker appends
//! the line to a shared buffer under a mutex, which costs no system call;
//! only the line that finds the buffer empty wakes the writer thread.
//! That thread waits a few milliseconds for more lines, then writes the
//! whole buffer at once.
//!
//! Only those per-certificate lines wait ([`ISSUANCE_TARGET`], at INFO or
//! below). Any other line (start-up, reloads, warnings, errors) is written
//! at once by the thread that logs it, together with the lines buffered
//! before it, so the order is kept and a warning is never late.
//!
//! Lines are never dropped: a buffer that grows past [`MAX_BUFFERED`]
//! makes the logging worker write it itself. A line reaches stderr at
//! most [`GATHER`] after it was logged, and [`Flush`] (held by `serve`
//! until it returns) writes what is left before the process exits. A
//! process killed with SIGKILL loses the issuance lines of its last few
//! milliseconds; the audit log, which is written before any certificate
//! leaves the CA, loses nothing.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The target (module) of the per-certificate log lines, the only ones
/// that wait for the writer thread.
pub const ISSUANCE_TARGET: &str = mayfly::service::ISSUANCE_LOG_TARGET;
/// How long the writer thread gathers lines after the first one.
const GATHER: Duration = Duration::from_millis(10);
/// Buffered bytes past which the logging thread writes them itself.
const MAX_BUFFERED: usize = 1 << 20;

struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Where lines go: stderr (tests collect them).
    out: fn(&[u8]),
    /// No writer thread: every line is written at once.
    direct: bool,
}

fn to_stderr(bytes: &[u8]) {
    let _ = std::io::stderr().write_all(bytes);
}

/// A `MakeWriter` for `tracing_subscriber` whose lines go to stderr
/// through the writer thread.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

/// Writes what is still buffered when dropped.
pub struct Flush {
    shared: Arc<Shared>,
}

/// One line being formatted; `tracing_subscriber` writes each event with
/// one `write_all`, so a line is appended whole.
pub struct Line<'a> {
    sink: &'a LogSink,
    /// Waits for the writer thread (else written at once).
    batched: bool,
}

impl LogSink {
    /// Starts the writer thread. If it cannot start, lines are written to
    /// stderr by the thread that logs them.
    pub fn start() -> (LogSink, Flush) {
        LogSink::start_to(to_stderr)
    }

    fn start_to(out: fn(&[u8])) -> (LogSink, Flush) {
        let shared = |direct| {
            Arc::new(Shared {
                buf: Mutex::new(Vec::with_capacity(64 * 1024)),
                wake: Condvar::new(),
                out,
                direct,
            })
        };
        let threaded = shared(false);
        let s = threaded.clone();
        let shared = match std::thread::Builder::new()
            .name("mayfly-log".into())
            .spawn(move || writer_loop(&s))
        {
            Ok(_) => threaded,
            // Without the thread nobody would wake for the first line:
            // every line is written at once instead.
            Err(_) => shared(true),
        };
        let sink = LogSink {
            shared: shared.clone(),
        };
        (sink, Flush { shared })
    }

    fn append(&self, line: &[u8], batched: bool) {
        let sh = &*self.shared;
        let mut g = sh.buf.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = g.is_empty();
        g.extend_from_slice(line);
        // Without a writer thread every line is written at once.
        if !batched || sh.direct || g.len() > MAX_BUFFERED {
            // Written under the lock, so lines keep their order.
            (sh.out)(&g);
            g.clear();
            return;
        }
        drop(g);
        if was_empty {
            sh.wake.notify_one();
        }
    }
}

fn writer_loop(shared: &Shared) {
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut g = shared.buf.lock().unwrap_or_else(|p| p.into_inner());
            while g.is_empty() {
                g = shared.wake.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        }
        std::thread::sleep(GATHER);
        {
            let mut g = shared.buf.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *g, &mut out);
            // Written under the lock, so a line the logging thread writes
            // itself (buffer full) cannot overtake these.
            (shared.out)(&out);
        }
        out.clear();
    }
}

fn flush(shared: &Shared) {
    let mut g = shared.buf.lock().unwrap_or_else(|p| p.into_inner());
    (shared.out)(&g);
    g.clear();
}

impl Drop for Flush {
    fn drop(&mut self) {
        flush(&self.shared);
    }
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sink.append(buf, self.batched);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            sink: self,
            batched: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        Line {
            sink: self,
            batched: meta.target() == ISSUANCE_TARGET && *meta.level() >= tracing::Level::INFO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn collect(bytes: &[u8]) {
        WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        WRITTEN.lock().unwrap().extend_from_slice(bytes);
    }

    fn idle(out: fn(&[u8])) -> LogSink {
        // No writer thread: what is appended stays in the buffer.
        LogSink {
            shared: Arc::new(Shared {
                buf: Mutex::new(Vec::new()),
                wake: Condvar::new(),
                out,
                direct: false,
            }),
        }
    }

    fn buffered(s: &LogSink) -> Vec<u8> {
        s.shared.buf.lock().unwrap().clone()
    }

    fn ignore(_: &[u8]) {}

    #[test]
    fn lines_are_kept_whole_and_in_order_until_flushed() {
        let s = idle(ignore);
        for i in 0..3 {
            s.append(format!("line {i}\n").as_bytes(), true);
        }
        assert_eq!(buffered(&s), b"line 0\nline 1\nline 2\n");
        flush(&s.shared);
        assert!(buffered(&s).is_empty(), "flushing empties the buffer");
    }

    #[test]
    fn the_writer_thread_writes_lines_logged_together_in_one_write() {
        let (s, _flush) = LogSink::start_to(collect);
        for i in 0..50 {
            s.append(format!("line {i}\n").as_bytes(), true);
        }
        let want: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while WRITTEN.lock().unwrap().len() < want.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "the lines were never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            String::from_utf8(WRITTEN.lock().unwrap().clone()).unwrap(),
            want
        );
        // One write unless the test thread was paused for the whole
        // gathering time; a write per line is what the sink is there to stop.
        let writes = WRITES.load(std::sync::atomic::Ordering::SeqCst);
        assert!(writes < 10, "50 lines took {writes} writes");
        assert!(buffered(&s).is_empty());
    }

    #[test]
    fn a_full_buffer_is_written_by_the_thread_that_logs() {
        let s = idle(ignore);
        let line = vec![b'x'; 4096];
        for _ in 0..(MAX_BUFFERED / line.len() + 1) {
            s.append(&line, true);
        }
        assert!(
            buffered(&s).len() <= MAX_BUFFERED,
            "the buffer stays bounded"
        );
    }

    static URGENT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn collect_urgent(bytes: &[u8]) {
        URGENT.lock().unwrap().extend_from_slice(bytes);
    }

    #[test]
    fn only_issuance_lines_wait_and_any_other_line_writes_them_first() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let s = idle(collect_urgent);
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_writer(s.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: ISSUANCE_TARGET, "certificate issued 1");
            tracing::info!(target: ISSUANCE_TARGET, "certificate issued 2");
            assert!(URGENT.lock().unwrap().is_empty(), "issuance lines wait");
            tracing::warn!(target: ISSUANCE_TARGET, "a warning");
        });
        let written = String::from_utf8(URGENT.lock().unwrap().clone()).unwrap();
        let order: Vec<_> = ["issued 1", "issued 2", "a warning"]
            .iter()
            .map(|w| {
                written
                    .find(w)
                    .unwrap_or_else(|| panic!("{w} not written: {written}"))
            })
            .collect();
        assert!(order.windows(2).all(|p| p[0] < p[1]), "in order: {written}");
        assert!(buffered(&s).is_empty());
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(s.clone()),
            ),
            || tracing::info!(target: "mayfly::server", "mayfly CA serving"),
        );
        assert!(
            String::from_utf8(URGENT.lock().unwrap().clone())
                .unwrap()
                .contains("mayfly CA serving"),
            "a start-up line is written at once"
        );
    }
}
