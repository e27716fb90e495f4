//! The thread that owns the usage database, so that nothing on the request
//! path or in the supervisor's event loop ever waits on SQLite: the sampler
//! sends batches ([`UsageWriter::send`], which never blocks), the thread
//! records each in one transaction and runs `maintain` at start and a little
//! after each hour begins. Errors are logged and never stop berth: a batch
//! that cannot be recorded is lost, the next one is tried.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::{HOUR_MS, Sample, UsageDb, UsageError, to_ms};

/// Batches waiting for the thread. At one batch per `meter_interval` (10 s)
/// that is five minutes of a stalled disk before samples are dropped, and at
/// 1,000 tenants with a few apps each (some 1 MiB a batch) a bounded cost.
pub(super) const QUEUE: usize = 32;

/// `maintain` runs this long after each hour begins, once the last samples
/// of the hour before have come in (a later one is added to its hour anyway).
const MAINTAIN_AFTER_HOUR: Duration = Duration::from_secs(60);

enum Msg {
    Batch(Vec<Sample>),
    /// Answered once everything sent before it is recorded.
    Flush(mpsc::Sender<()>),
}

/// A handle on the writer thread. Dropping it (or [`UsageWriter::shutdown`])
/// records what was sent and joins the thread.
pub struct UsageWriter {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl UsageWriter {
    /// Opens (creates, migrates) the database at `path` here, so that a
    /// database berth cannot use is reported at start, then hands it to the
    /// thread.
    pub fn spawn(path: PathBuf, raw_days: u32, keep_days: u32) -> Result<UsageWriter, UsageError> {
        let db = UsageDb::open(&path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let seen = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("usage-writer".into())
            .spawn(move || run(db, rx, raw_days, keep_days, &seen))
            .map_err(UsageError::Thread)?;
        Ok(UsageWriter {
            tx: Some(tx),
            thread: Some(thread),
            dropped,
        })
    }

    /// Queues a batch for recording. Never blocks: when the queue is full
    /// (the disk stalls) the batch is dropped and its samples counted.
    pub fn send(&self, batch: Vec<Sample>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Batch(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Batch(b)) | TrySendError::Disconnected(Msg::Batch(b))) => {
                self.dropped.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }

    /// Samples dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every batch sent before is recorded (or failed). Blocks:
    /// for tests and a clean stop, never for the event loop. False when the
    /// thread is gone.
    pub fn flush(&self) -> bool {
        let Some(tx) = &self.tx else { return false };
        let (done, wait) = mpsc::channel();
        tx.send(Msg::Flush(done)).is_ok() && wait.recv().is_ok()
    }

    /// Records what was sent and joins the thread.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for UsageWriter {
    fn drop(&mut self) {
        // The thread drains the queue, then sees the channel closed.
        self.tx.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("usage: the writer thread panicked");
        }
    }
}

fn run(mut db: UsageDb, rx: Receiver<Msg>, raw_days: u32, keep_days: u32, dropped: &AtomicU64) {
    let mut next_maintain = Instant::now();
    let mut dropped_seen = 0;
    loop {
        if Instant::now() >= next_maintain {
            if let Err(e) = db.maintain(SystemTime::now(), raw_days, keep_days) {
                tracing::warn!("usage: rollup and retention failed (tried again next hour): {e}");
            }
            next_maintain = Instant::now() + until_next_hour(SystemTime::now());
        }
        let msg = match rx.recv_timeout(next_maintain.saturating_duration_since(Instant::now())) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match msg {
            Msg::Batch(batch) => {
                if let Err(e) = db.record(&batch) {
                    tracing::warn!("usage: {} samples not recorded: {e}", batch.len());
                }
            }
            Msg::Flush(done) => {
                let _ = done.send(());
            }
        }
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped != dropped_seen {
            tracing::warn!(
                "usage: {} samples dropped: the database did not keep up ({} in all)",
                now_dropped - dropped_seen,
                now_dropped
            );
            dropped_seen = now_dropped;
        }
    }
}

/// From `now` to [`MAINTAIN_AFTER_HOUR`] past the next hour.
fn until_next_hour(now: SystemTime) -> Duration {
    let into_hour = to_ms(now).rem_euclid(HOUR_MS) as u64;
    Duration::from_millis(HOUR_MS as u64 - into_hour) + MAINTAIN_AFTER_HOUR
}
