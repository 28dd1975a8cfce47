//! A child process whose output goes to log files and which is killed, by
//! its pid, when the guard drops.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::wait_for;

/// A running program started by a test.
pub struct Proc {
    name: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout/stderr appended to
    /// `<log_dir>/<name>.stdout` and `<name>.stderr` (files, not pipes, so a
    /// chatty program never blocks and the logs outlive a restart).
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let open = |p: &Path| -> File {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open log file {}: {e}", p.display()))
        };
        cmd.stdin(Stdio::null())
            .stdout(open(&stdout_path))
            .stderr(open(&stderr_path));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            stdout_path,
            stderr_path,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the program wrote on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the program wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `Some(status)` once the program has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name))
    }

    /// Asks the program to stop with SIGTERM, waits up to `grace`, then
    /// kills it. Returns how it ended.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        // Not yet reaped, so the pid is still ours. `kill` is the shell's
        // builtin, present on every system (procps may not be).
        let _ = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &self.pid().to_string()])
            .status();
        if let Some(status) = wait_for(grace, Duration::from_millis(25), || self.exited()) {
            return status;
        }
        self.kill()
    }

    /// Kills the program with SIGKILL and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name))
    }

    /// A description for failure messages: how it ended and its output.
    pub fn report(&mut self) -> String {
        let state = match self.exited() {
            Some(status) => format!("exited with {status}"),
            None => "still running".to_string(),
        };
        format!(
            "{} (pid {}) {state}\n--- stdout\n{}\n--- stderr\n{}",
            self.name,
            self.pid(),
            self.stdout(),
            self.stderr()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // std's Child::kill sends SIGKILL to this child's pid only, and is a
        // no-op once the child was reaped, so it can never hit a reused pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
