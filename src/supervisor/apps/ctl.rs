//! What `berth ctl` does to an app's processes: stop them and hold the app
//! stopped ([`AppManager::hold`]: no process starts, so requests get 503,
//! until [`AppManager::release`]); a restart is rolling
//! ([`AppManager::restart`], `rolling.rs`). A held app stays held across
//! reloads while the configuration has it.

use nix::sys::signal::Signal;

use super::{AppManager, stop};
use crate::ipc::AppId;

impl AppManager {
    /// Whether `id` is held stopped by `berth ctl stop`.
    pub fn is_stopped(&self, id: &AppId) -> bool {
        self.held.contains(id)
    }

    /// Holds `id` stopped: its processes are stopped (SIGTERM, then SIGKILL
    /// after the grace period) and its CGI scripts sent SIGTERM. Returns
    /// the slots stopped, for the front end; None when it was held already.
    pub fn hold(&mut self, id: &AppId) -> Option<Vec<u32>> {
        if !self.held.insert(id.clone()) {
            return None;
        }
        for run in self.cgi.iter().filter(|r| r.id == *id) {
            run.leader.signal_group(Signal::SIGTERM);
        }
        Some(self.stop_processes(id))
    }

    /// Ends a hold; whether there was one. A crash loop's backoff is
    /// forgotten: the admin asked for it to run.
    pub fn release(&mut self, id: &AppId) -> bool {
        let held = self.held.remove(id);
        if let Some(state) = self.apps.get_mut(id) {
            state.failures = 0;
            state.retry_at = None;
        }
        held
    }

    fn stop_processes(&mut self, id: &AppId) -> Vec<u32> {
        let Some(state) = self.apps.get_mut(id) else {
            return Vec::new();
        };
        let mut slots = Vec::new();
        for (slot, proc) in std::mem::take(&mut state.procs) {
            stop(id, slot, proc, state.limits);
            slots.push(slot);
        }
        slots
    }
}
