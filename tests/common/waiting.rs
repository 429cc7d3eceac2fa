//! What every real-client test waits with: a pipe read to its end on a thread of its own, and a condition polled
//! until a deadline (never a fixed sleep as synchronisation).

use std::io::Read;
use std::thread;
use std::time::{Duration, Instant};

/// Reads `pipe` to its end on a thread of its own (a client that fills its stdout must never block on us).
pub(crate) fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// True once `done` holds, looking every 25 ms until `limit` has passed.
pub(crate) fn poll(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(25));
    }
    done()
}
