//! Running a command to its end: a bounded build step, and a command's output as text.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` (a build: `what` names it in messages) to its end, waiting at most `within`;
/// its stdout is dropped and its stderr is kept in a file, not a pipe (compiler errors
/// could fill a pipe and stall the build). Returns the exit status and the stderr text;
/// panics when the command cannot start or outlives `within` (it is killed then).
pub fn run_bounded(cmd: &mut Command, what: &str, within: Duration) -> (ExitStatus, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.reopen().unwrap()))
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status,
        std::fs::read_to_string(log.path()).unwrap_or_default(),
    )
}

/// Runs `cmd` to its end: its exit code (`None` when a signal ended it), stdout and
/// stderr as (lossy) text.
pub fn output_of(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
