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

    /// What the kernel says of a program that is still running: its state,
    /// CPU time and where each thread waits, to tell a hung program from a
    /// slow one in a failure message. Empty once it has exited.
    pub fn where_it_waits(&self) -> String {
        let base = PathBuf::from(format!("/proc/{}", self.pid()));
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let state = read(base.join("status"))
            .lines()
            .filter(|l| l.starts_with("State:") || l.starts_with("Threads:"))
            .collect::<Vec<_>>()
            .join(", ");
        // utime and stime, fields 14 and 15 of stat (after the command name).
        let stat = read(base.join("stat"));
        let ticks: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().skip(11).take(2).collect())
            .unwrap_or_default();
        let mut threads: Vec<String> = std::fs::read_dir(base.join("task"))
            .map(|d| {
                d.flatten()
                    .map(|t| {
                        let comm = read(t.path().join("comm"));
                        let wchan = read(t.path().join("wchan"));
                        format!("{}:{}", comm.trim(), wchan.trim())
                    })
                    .collect()
            })
            .unwrap_or_default();
        threads.sort();
        format!("{state}, cpu ticks (user system) {ticks:?}, threads waiting in {threads:?}")
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

/// The stderr of `child` (spawned with `Stdio::piped()` there), read into
/// a shared string by a thread of its own. Join the thread before reading
/// the end of the output: it can lag behind the child's exit.
pub fn capture_stderr(
    child: &mut Child,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    std::thread::JoinHandle<()>,
) {
    use std::io::Read as _;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let sink = text.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, reader)
}

/// Waits up to 20 s for `mayfly ssh` to print its approval prompt into
/// `stderr` and returns the request id it names.
pub fn approval_id_in(stderr: &std::sync::Mutex<String>) -> String {
    const PROMPT: &str = "mayfly request approve ";
    let start = std::time::Instant::now();
    loop {
        let text = stderr.lock().expect("lock").clone();
        if let Some(pos) = text.find(&format!("{PROMPT}apr_")) {
            let rest = &text[pos + PROMPT.len()..];
            return rest.split_whitespace().next().expect("id").to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no approval prompt: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
