//! Live audit streaming and periodic signed checkpoints.
//!
//! One background thread follows the audit log: after every commit the
//! store pokes it (a non-blocking, coalescing notification; see
//! [`crate::store::AuditLog::on_commit`]), and it also polls once a second
//! so records written by other processes on the CA host (`mayfly revoke`)
//! are picked up too. It reads the new records *as stored* (with their seq
//! and chain hashes) through the store's [`AuditLog`] and hands each to the
//! configured sinks (JSON Lines file with size-based rotation, stdout,
//! syslog). Durability is the store's: certificates never wait for a sink, and
//! a failing sink is logged and counted, never retried into a backlog (use
//! `mayfly audit export --since` to backfill a gap; SIEMs de-duplicate on
//! `event.id`, the chain hash).
//!
//! The same thread signs a checkpoint of the chain head every
//! `checkpoint_every` records or `checkpoint_interval` (when something was
//! written), and once more at clean shutdown. Where streaming got to is
//! saved in the database with each checkpoint and at shutdown, so a restart
//! resumes there (records may be sent twice after a crash, never skipped).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::Clock;

use crate::audit::chain::{ChainWalker, StoredRecord};
use crate::audit::checkpoint::{self, AuditKey, AuditKeyError};
use crate::audit::export;
use crate::audit::syslog::{SyslogSender, SyslogTarget};
use crate::config::AuditConfig;
use crate::store::{AfterCommit, AuditLog, StoreError};

/// How often the log is polled for records written by other processes.
const POLL: Duration = Duration::from_secs(1);
/// Records read per batch.
const BATCH: usize = 512;
/// How long shutdown waits for the final checkpoint.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// Least time between two reads of new records: under load the writer
/// commits thousands of times a second, and one read per commit would
/// cost CPU that requests need; pokes that arrive meanwhile coalesce.
const MIN_PAUSE: Duration = Duration::from_millis(20);

/// Why streaming could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The audit key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] AuditKeyError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sink could not be opened.
    #[error("audit sink {sink}: {source}")]
    Sink {
        /// Which sink.
        sink: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The thread could not be started.
    #[error("starting the audit stream thread: {0}")]
    Thread(std::io::Error),
}

/// Counters of the streaming thread, for `/metrics`.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Records handed to the sinks.
    pub records: AtomicU64,
    /// Checkpoints signed.
    pub checkpoints: AtomicU64,
    /// Failed checkpoint writes (retried later).
    pub checkpoint_errors: AtomicU64,
    /// Per sink: (name, records it failed to take).
    pub sink_errors: Vec<(String, AtomicU64)>,
    /// Highest seq handed to the sinks.
    pub cursor: AtomicU64,
    /// Unix ms of the latest signed checkpoint (0: none yet).
    pub last_checkpoint_ms: AtomicU64,
    /// The seq the latest signed checkpoint covers.
    pub last_checkpoint_seq: AtomicU64,
}

impl StreamStats {
    /// Prometheus text for these counters.
    pub fn render_prometheus(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP mayfly_audit_streamed_total Audit records handed to the audit sinks.\n");
        s.push_str("# TYPE mayfly_audit_streamed_total counter\n");
        s.push_str(&format!(
            "mayfly_audit_streamed_total {}\n",
            self.records.load(Ordering::Relaxed)
        ));
        s.push_str("# HELP mayfly_audit_sink_errors_total Audit records a sink failed to take (dropped for that sink).\n");
        s.push_str("# TYPE mayfly_audit_sink_errors_total counter\n");
        for (name, n) in &self.sink_errors {
            s.push_str(&format!(
                "mayfly_audit_sink_errors_total{{sink=\"{name}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        s.push_str("# HELP mayfly_audit_checkpoints_total Signed audit checkpoints written.\n");
        s.push_str("# TYPE mayfly_audit_checkpoints_total counter\n");
        s.push_str(&format!(
            "mayfly_audit_checkpoints_total {}\n",
            self.checkpoints.load(Ordering::Relaxed)
        ));
        s.push_str(
            "# HELP mayfly_audit_checkpoint_errors_total Failed attempts to write a checkpoint.\n",
        );
        s.push_str("# TYPE mayfly_audit_checkpoint_errors_total counter\n");
        s.push_str(&format!(
            "mayfly_audit_checkpoint_errors_total {}\n",
            self.checkpoint_errors.load(Ordering::Relaxed)
        ));
        s
    }

    /// Gauges that need the log's head seq and the time: how far the
    /// sinks and the signed checkpoints trail the log.
    pub fn render_lag(&self, head: u64, now_ms: u64) -> String {
        let mut s = String::new();
        if !self.sink_errors.is_empty() {
            s.push_str("# HELP mayfly_audit_sink_lag_records Audit records stored but not yet handed to the audit sinks.\n");
            s.push_str("# TYPE mayfly_audit_sink_lag_records gauge\n");
            s.push_str(&format!(
                "mayfly_audit_sink_lag_records {}\n",
                head.saturating_sub(self.cursor.load(Ordering::Relaxed))
            ));
        }
        s.push_str("# HELP mayfly_audit_unsigned_records Audit records after the latest signed checkpoint.\n");
        s.push_str("# TYPE mayfly_audit_unsigned_records gauge\n");
        s.push_str(&format!(
            "mayfly_audit_unsigned_records {}\n",
            head.saturating_sub(self.last_checkpoint_seq.load(Ordering::Relaxed))
        ));
        let last = self.last_checkpoint_ms.load(Ordering::Relaxed);
        if last > 0 {
            s.push_str("# HELP mayfly_audit_last_checkpoint_timestamp_seconds When the latest signed audit checkpoint was made (unix seconds).\n");
            s.push_str("# TYPE mayfly_audit_last_checkpoint_timestamp_seconds gauge\n");
            s.push_str(&format!(
                "mayfly_audit_last_checkpoint_timestamp_seconds {}\n",
                last / 1000
            ));
            s.push_str("# HELP mayfly_audit_checkpoint_age_seconds Seconds since the latest signed audit checkpoint.\n");
            s.push_str("# TYPE mayfly_audit_checkpoint_age_seconds gauge\n");
            s.push_str(&format!(
                "mayfly_audit_checkpoint_age_seconds {}\n",
                now_ms.saturating_sub(last) / 1000
            ));
        }
        s
    }
}

/// An audit sink: takes one record (and its JSON line) at a time.
pub trait Sink: Send {
    /// Short name for logs and metrics (`jsonl_file`, `stdout`, `syslog`).
    fn name(&self) -> &'static str;
    /// Delivers one record.
    fn send(&mut self, r: &StoredRecord, line: &str) -> std::io::Result<()>;
    /// Flushes buffered output (after each batch).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// JSON Lines file with size-based rotation: `FILE` → `FILE.1` → … →
/// `FILE.<keep>`, the oldest dropped.
pub struct JsonlFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    out: Option<BufWriter<File>>,
    size: u64,
}

impl JsonlFile {
    /// Opens (appending to) `path`, creating its directory (0750) if needed.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<JsonlFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                use std::os::unix::fs::DirBuilderExt;
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(dir)?;
            }
        }
        let mut f = JsonlFile {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            out: None,
            size: 0,
        };
        f.reopen()?;
        Ok(f)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.out = Some(BufWriter::with_capacity(64 * 1024, file));
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(&self.path, self.rotated(1))?;
        }
        self.reopen()
    }
}

impl Sink for JsonlFile {
    fn name(&self) -> &'static str {
        "jsonl_file"
    }

    fn send(&mut self, _r: &StoredRecord, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.max_bytes > 0 && self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        if self.out.is_none() {
            self.reopen()?;
        }
        let written = match self.out.as_mut() {
            Some(out) => out
                .write_all(line.as_bytes())
                .and_then(|_| out.write_all(b"\n")),
            None => Err(std::io::Error::other("not open")),
        };
        match written {
            Ok(()) => {
                self.size += len;
                Ok(())
            }
            Err(e) => {
                // Reopen next time (the file may have been removed).
                self.out = None;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// JSON Lines on standard output (logs go to standard error).
pub struct Stdout;

impl Sink for Stdout {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn send(&mut self, _r: &StoredRecord, line: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

/// RFC 5424 syslog over UDP or TCP.
pub struct Syslog(SyslogSender);

impl Syslog {
    /// A sink for `target` (connects on first record).
    pub fn new(target: SyslogTarget, clock: Arc<dyn Clock>) -> Syslog {
        Syslog(SyslogSender::new(target, clock))
    }
}

impl Sink for Syslog {
    fn name(&self) -> &'static str {
        "syslog"
    }

    fn send(&mut self, r: &StoredRecord, line: &str) -> std::io::Result<()> {
        self.0.send(r, line).map_err(std::io::Error::other)
    }
}

/// The sinks `[audit]` configures.
pub fn open_sinks(
    cfg: &AuditConfig,
    clock: &Arc<dyn Clock>,
) -> Result<Vec<Box<dyn Sink>>, StreamError> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(path) = &cfg.jsonl_file {
        let f = JsonlFile::open(path, cfg.jsonl_max_bytes, cfg.jsonl_keep).map_err(|source| {
            StreamError::Sink {
                sink: format!("jsonl_file {}", path.display()),
                source,
            }
        })?;
        sinks.push(Box::new(f));
    }
    if cfg.jsonl_stdout {
        sinks.push(Box::new(Stdout));
    }
    if let Some(t) = &cfg.syslog {
        sinks.push(Box::new(Syslog::new(t.clone(), clock.clone())));
    }
    Ok(sinks)
}

enum Msg {
    Committed,
    Stop,
}

/// Handle to the streaming thread.
pub struct AuditStream {
    tx: SyncSender<Msg>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<StreamStats>,
    done: mpsc::Receiver<()>,
}

struct Worker {
    db: Arc<dyn AuditLog>,
    /// Drives the store's futures on this thread.
    rt: tokio::runtime::Runtime,
    key: Arc<AuditKey>,
    sinks: Vec<Box<dyn Sink>>,
    stats: Arc<StreamStats>,
    cfg: AuditConfig,
    cursor: u64,
    saved_cursor: u64,
    last_checkpoint_seq: u64,
    /// Monotonic clock time of the last checkpoint.
    last_checkpoint_at: Duration,
    /// Monotonic clock time each sink's last error was logged.
    error_logged_at: Vec<Option<Duration>>,
    clock: Arc<dyn Clock>,
}

impl AuditStream {
    /// Loads (or creates) `data_dir/audit_key`, opens the sinks and starts
    /// the thread, which reads `log`. Returns the handle; register
    /// [`AuditStream::hook`] with [`AuditLog::on_commit`].
    pub fn start(
        cfg: &AuditConfig,
        data_dir: &Path,
        log: Arc<dyn AuditLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<AuditStream, StreamError> {
        let (key, created) = AuditKey::load_or_generate(data_dir)?;
        if created {
            tracing::info!(fingerprint = %key.fingerprint(),
                path = %data_dir.join(checkpoint::PUB_FILE).display(),
                "generated the audit checkpoint key; keep a copy of audit_key.pub off this host \
                 for `mayfly audit verify --key`");
        }
        AuditStream::start_with_key(cfg, key, log, clock)
    }

    /// As [`AuditStream::start`] with a given key.
    pub fn start_with_key(
        cfg: &AuditConfig,
        key: AuditKey,
        log: Arc<dyn AuditLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<AuditStream, StreamError> {
        let sinks = open_sinks(cfg, &clock)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(StreamError::Thread)?;
        let db = log;
        // Read where to start on a thread of our own: the caller may be
        // inside an async runtime, where blocking on a future is refused.
        let (head, last_cp, saved, last_cp_ms) = std::thread::scope(|s| {
            s.spawn(|| -> Result<_, StoreError> {
                let head = rt.block_on(db.head())?.map(|(s, _)| s).unwrap_or(0);
                let last_cp = rt
                    .block_on(db.last_checkpoint())?
                    .map(|(seq, _)| seq)
                    .unwrap_or(0);
                // When the latest checkpoint was signed, for its age gauge.
                let counter = rt.block_on(db.chain_meta())?.checkpoint_counter;
                let last_cp_ms = rt
                    .block_on(db.checkpoints(counter.saturating_sub(1) as i64, 1))?
                    .into_iter()
                    .find_map(|(_, c)| c.ok())
                    .map_or(0, |c| c.time_ms.max(0) as u64);
                Ok((head, last_cp, rt.block_on(db.stream_cursor())?, last_cp_ms))
            })
            .join()
        })
        .map_err(|_| {
            StreamError::Thread(std::io::Error::other("reading the audit log head failed"))
        })??;
        let cursor = match saved {
            Some(c) if c <= head => c,
            Some(c) => {
                tracing::error!(cursor = c, head,
                    "audit: the log ends before records already streamed (seq {c}); it was truncated. Run `mayfly audit verify`");
                head
            }
            // First start with sinks: stream what is new from now on.
            None => head,
        };
        let stats = Arc::new(StreamStats {
            sink_errors: sinks
                .iter()
                .map(|s| (s.name().to_string(), AtomicU64::new(0)))
                .collect(),
            cursor: AtomicU64::new(cursor),
            last_checkpoint_ms: AtomicU64::new(last_cp_ms),
            last_checkpoint_seq: AtomicU64::new(last_cp),
            ..StreamStats::default()
        });
        let (tx, rx) = mpsc::sync_channel::<Msg>(1);
        let (done_tx, done) = mpsc::channel();
        let worker = Worker {
            db,
            rt,
            key: Arc::new(key),
            error_logged_at: vec![None; sinks.len()],
            sinks,
            stats: stats.clone(),
            cfg: cfg.clone(),
            cursor,
            saved_cursor: cursor,
            last_checkpoint_seq: last_cp,
            last_checkpoint_at: clock.monotonic(),
            clock,
        };
        let thread = std::thread::Builder::new()
            .name("mayfly-audit-stream".into())
            .spawn(move || {
                worker.run(rx);
                let _ = done_tx.send(());
            })
            .map_err(StreamError::Thread)?;
        Ok(AuditStream {
            tx,
            thread: Some(thread),
            stats,
            done,
        })
    }

    /// The after-commit hook for the store ([`AuditLog::on_commit`]): a
    /// coalescing, never-blocking poke.
    pub fn hook(&self) -> AfterCommit {
        let tx = self.tx.clone();
        Box::new(move || {
            let _ = tx.try_send(Msg::Committed);
        })
    }

    /// The thread's counters.
    pub fn stats(&self) -> Arc<StreamStats> {
        self.stats.clone()
    }

    /// Streams what is left, signs a final checkpoint and stops (waits at
    /// most 10 s).
    pub fn shutdown(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if self.done.recv_timeout(SHUTDOWN_WAIT).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            tracing::warn!("audit stream did not finish within {SHUTDOWN_WAIT:?}");
        }
    }

    /// Lets the thread run on its own until the process exits (it holds
    /// the store, so the store's writer outlives every caller).
    pub fn detach(mut self) {
        self.thread.take();
    }
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        self.check_tail();
        let mut last_read = self.clock.monotonic();
        loop {
            let stop = match rx.recv_timeout(POLL) {
                Ok(Msg::Committed) => {
                    let since = self.clock.monotonic().saturating_sub(last_read);
                    if since < MIN_PAUSE {
                        std::thread::sleep(MIN_PAUSE - since);
                    }
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => true,
            };
            last_read = self.clock.monotonic();
            self.drain();
            let head = self.head();
            let pending = head.saturating_sub(self.last_checkpoint_seq);
            let due = pending >= self.cfg.checkpoint_every
                || (pending > 0
                    && self
                        .clock
                        .monotonic()
                        .saturating_sub(self.last_checkpoint_at)
                        >= self.cfg.checkpoint_interval);
            if due || (stop && pending > 0) {
                self.checkpoint();
            }
            if stop {
                self.save_cursor();
                break;
            }
        }
    }

    fn head(&self) -> u64 {
        if !self.sinks.is_empty() {
            return self.cursor;
        }
        match self.rt.block_on(self.db.head()) {
            Ok(h) => h.map(|(s, _)| s).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "audit: reading the log head failed");
                self.last_checkpoint_seq
            }
        }
    }

    /// At start: the last checkpoint must still match the log, and the
    /// records after it must chain. Problems are logged, not fatal.
    fn check_tail(&mut self) {
        let Ok(Some((cp_seq, cp_hash))) = self.rt.block_on(self.db.last_checkpoint()) else {
            return;
        };
        let mut walker = ChainWalker::after(cp_seq, cp_hash);
        match self.rt.block_on(self.db.record(cp_seq)) {
            Ok(Some(Ok(r))) if r.hash == Some(cp_hash) => {}
            _ => {
                tracing::error!(seq = cp_seq,
                    "audit: the record at the last signed checkpoint is missing or changed; the log was truncated or rewritten. Run `mayfly audit verify`");
                return;
            }
        }
        let scanned = (|| -> Result<(), StoreError> {
            let mut next = cp_seq + 1;
            loop {
                let rows = self.rt.block_on(self.db.scan(next, BATCH))?;
                let n = rows.len();
                for row in rows {
                    match row {
                        Ok(r) => {
                            next = r.seq + 1;
                            walker.push(&r);
                        }
                        Err(b) => {
                            next = b.seq + 1;
                            walker.malformed(b.seq, b.what);
                        }
                    }
                }
                if n < BATCH {
                    return Ok(());
                }
            }
        })();
        if let Err(e) = scanned {
            tracing::warn!(error = %e, "audit: checking the log tail failed");
        } else if let Some(p) = walker.problems().first() {
            tracing::error!(problem = %p,
                "audit: the log after the last checkpoint does not chain; run `mayfly audit verify`");
        }
    }

    fn drain(&mut self) {
        if self.sinks.is_empty() {
            return;
        }
        loop {
            let rows = match self.rt.block_on(self.db.scan(self.cursor + 1, BATCH)) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "audit: reading new records for the sinks failed");
                    return;
                }
            };
            let n = rows.len();
            for row in rows {
                match row {
                    Ok(r) => {
                        let line = export::to_json(&r);
                        for i in 0..self.sinks.len() {
                            if let Err(e) = self.sinks[i].send(&r, &line) {
                                self.sink_failed(i, &e);
                            }
                        }
                        self.cursor = r.seq;
                        self.stats.records.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(bad) => {
                        tracing::error!(seq = bad.seq, reason = %bad.what,
                            "audit: record cannot be read, not streamed; run `mayfly audit verify`");
                        self.cursor = bad.seq;
                    }
                }
            }
            for i in 0..self.sinks.len() {
                if let Err(e) = self.sinks[i].flush() {
                    self.sink_failed(i, &e);
                }
            }
            self.stats.cursor.store(self.cursor, Ordering::Relaxed);
            let pending = self.cursor.saturating_sub(self.last_checkpoint_seq);
            if pending >= self.cfg.checkpoint_every {
                self.checkpoint();
            }
            if n < BATCH {
                return;
            }
        }
    }

    fn sink_failed(&mut self, i: usize, e: &std::io::Error) {
        if let Some((_, n)) = self.stats.sink_errors.get(i) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        // One log line per sink per minute, not one per record.
        let quiet = self
            .error_logged_at
            .get(i)
            .copied()
            .flatten()
            .is_some_and(|t| self.clock.monotonic().saturating_sub(t) < Duration::from_secs(60));
        if !quiet {
            let name = self.sinks.get(i).map(|s| s.name()).unwrap_or("?");
            tracing::warn!(sink = name, error = %e,
                "audit sink failed; records are dropped for this sink (issuance is not affected; backfill with `mayfly audit export --since`)");
            if let Some(slot) = self.error_logged_at.get_mut(i) {
                *slot = Some(self.clock.monotonic());
            }
        }
    }

    fn checkpoint(&mut self) {
        let key = self.key.clone();
        let fp = key.fingerprint();
        let sign = Box::new(move |seq: u64, hash: &crate::audit::chain::Hash, t: i64| {
            key.sign(seq, hash, t).map_err(|e| e.to_string())
        });
        match self.rt.block_on(self.db.write_checkpoint(
            &fp,
            crate::clock::unix_ms(self.clock.now()) as i64,
            sign,
        )) {
            Ok(Some(cp)) => {
                self.last_checkpoint_seq = cp.seq;
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .last_checkpoint_seq
                    .store(cp.seq, Ordering::Relaxed);
                self.stats
                    .last_checkpoint_ms
                    .store(cp.time_ms.max(0) as u64, Ordering::Relaxed);
                tracing::debug!(seq = cp.seq, "audit checkpoint signed");
            }
            Ok(None) => {
                if let Ok(Some((s, _))) = self.rt.block_on(self.db.last_checkpoint()) {
                    self.last_checkpoint_seq = s;
                }
            }
            Err(e) => {
                self.stats.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "audit: writing a checkpoint failed; retrying later");
            }
        }
        self.last_checkpoint_at = self.clock.monotonic();
        self.save_cursor();
    }

    fn save_cursor(&mut self) {
        if self.sinks.is_empty() || self.cursor == self.saved_cursor {
            return;
        }
        match self.rt.block_on(self.db.set_stream_cursor(self.cursor)) {
            Ok(()) => self.saved_cursor = self.cursor,
            Err(e) => tracing::warn!(error = %e, "audit: saving the stream position failed"),
        }
    }
}

impl Drop for AuditStream {
    fn drop(&mut self) {
        // Dropping without shutdown/detach: stop the thread, do not wait.
        if self.thread.is_some() {
            let _ = self.tx.try_send(Msg::Stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn starts_inside_an_async_runtime_and_signs_a_checkpoint_at_shutdown() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = crate::store::open(&crate::store::StoreConfig {
            backend: crate::config::StoreBackend::SQLite,
            sqlite_path: d.path().join("m.db"),
            busy_timeout: Duration::from_secs(1),
            mode: crate::store::OpenMode::Create,
            postgres: None,
        })
        .expect("store");
        let cfg = AuditConfig::default();
        let stream = AuditStream::start_with_key(
            &cfg,
            AuditKey::ephemeral(),
            store.audit_shared(),
            Arc::new(crate::clock::SystemClock::new()),
        )
        .expect("stream starts from async code");
        store.audit().on_commit(stream.hook());
        let rec = crate::audit::AuditRecord::new(crate::audit::EventKind::Disabled, 1, "r");
        store.audit().append(rec).await.expect("append");
        let stats = stream.stats();
        tokio::task::spawn_blocking(move || stream.shutdown())
            .await
            .expect("shutdown");
        assert_eq!(stats.checkpoints.load(Ordering::Relaxed), 1);
        assert_eq!(
            store
                .audit()
                .last_checkpoint()
                .await
                .expect("read")
                .map(|c| c.0),
            Some(1)
        );
    }

    fn rec(seq: u64) -> StoredRecord {
        StoredRecord {
            seq,
            event: "cert_issued".into(),
            request_id: "r".into(),
            ..StoredRecord::default()
        }
    }

    #[test]
    fn jsonl_file_rotates_by_size_and_keeps_n_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("logs/audit.jsonl");
        let mut f = JsonlFile::open(&p, 100, 2).expect("open");
        let line = "x".repeat(39); // 40 bytes with the newline
        for i in 0..7 {
            f.send(&rec(i), &line).expect("send");
        }
        f.flush().expect("flush");
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        // 7 lines of 40 bytes, at most 2 per file: current has 1, .1 and .2 have 2, the rest dropped.
        assert_eq!(size(&p), 40);
        assert_eq!(size(&f.rotated(1)), 80);
        assert_eq!(size(&f.rotated(2)), 80);
        assert!(!f.rotated(3).exists());
    }
}
