//! Process file descriptors, the platform twins behind one module (as pueue's `process_helper`): Linux opens, signals
//! and polls pidfds; elsewhere there are none, and `act::signal` falls back to verify-then-kill.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::{any_exited, exited, open, signal, signal_group};

#[cfg(not(target_os = "linux"))]
mod portable;
#[cfg(not(target_os = "linux"))]
pub(crate) use portable::{any_exited, exited, open, signal, signal_group};
