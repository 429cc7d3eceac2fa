//! Hook mode's backstop. Whatever the hook body does — panics, blocks on a lock, a FIFO, a full stderr pipe, a hung
//! filesystem — the process exits 0 with nothing on stdout by its deadline plus `MARGIN`. State on disk is
//! crash-safe by design (atomic writes; stop tickets outlive whoever drives them), so ending at any point loses
//! nothing a finisher or a sweep cannot pick up.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::commands::hook;
use crate::config::Config;
use crate::model::deadline::Deadline;
use crate::store::Store;

/// How long past its deadline a hook may run at most: the watchdog wakes `WAKE` after it and gives its last
/// report (event, stderr line) `REPORT_WAIT` before it ends the process anyway.
pub(crate) const MARGIN: Duration = Duration::from_millis(100);
const WAKE: Duration = Duration::from_millis(50);
const REPORT_WAIT: Duration = Duration::from_millis(50);

/// The message of the last panic, kept by the panic hook instead of printed (no backtrace in an agent's UI).
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Runs a hook `body` under the backstop: a panic is caught and reported, and a watchdog ends the process (exit 0)
/// at `deadline` plus `MARGIN` if the body has not returned by then.
pub(crate) fn run_guarded(deadline: Deadline, state_dir: Option<&Path>, body: impl FnOnce()) {
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(info.to_string().replace('\n', " "));
        }
    }));
    start_watchdog(deadline.later(WAKE), state_dir.map(Path::to_path_buf));
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
        let message = LAST_PANIC
            .lock()
            .ok()
            .and_then(|mut last| last.take())
            .unwrap_or_else(|| "a panic".to_owned());
        report(state_dir, &format!("internal error, caught: {message}"));
    }
}

/// One stderr line and, when the state root opens, one event; for problems found before the hook body runs.
pub(crate) fn report(state_dir: Option<&Path>, line: &str) {
    let store = Config::new(state_dir, false)
        .and_then(|config| Store::open(&config.state_dir))
        .ok();
    hook::report(store.as_ref(), line);
}

fn start_watchdog(at: Deadline, state_dir: Option<PathBuf>) {
    std::thread::spawn(move || {
        while !at.expired() {
            at.sleep(at.remaining());
        }
        // The report may block too (a full stderr pipe): it gets its own thread and a bounded wait.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            report(
                state_dir.as_deref(),
                &format!(
                    "deadline passed (+{}): the hook was ended; what it left stays for the finisher or a sweep",
                    humantime::format_duration(MARGIN)
                ),
            );
            let _ = done.send(());
        });
        let _ = finished.recv_timeout(REPORT_WAIT);
        // SAFETY: `_exit` ends the process at once, running no destructors or atexit handlers (which could block on
        // a lock the stuck body holds); nothing on disk depends on them, and nothing was written to stdout.
        unsafe { libc::_exit(0) }
    });
}
