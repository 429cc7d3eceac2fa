//! Entry point: run the command line and map the outcome to an exit code (table in `error.rs`).

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(session_reaper::run())
}
