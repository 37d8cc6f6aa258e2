//! One replica process: spawned in its own process group, its output pumped line by line to the
//! console and its log file, stopped with SIGTERM then SIGKILL to the whole group.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::console::Console;
use crate::launch::ReplicaLaunch;
use crate::{Error, Result};

/// A running replica process.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    pgid: Option<Pid>,
    pumps: Vec<JoinHandle<()>>,
}

/// The Kubernetes exit code of a status: the code, or 128 + the signal number.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

impl Proc {
    /// Starts the replica in a new process group, appending its output to `log`.
    pub(crate) fn spawn(
        launch: &ReplicaLaunch,
        log: &Path,
        console: &Arc<Console>,
        colour: usize,
    ) -> Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io("opening log", log, e))?;
        let file = Arc::new(Mutex::new(file));
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .envs(&launch.env)
            .current_dir(&launch.working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if !launch.env.contains_key("PYTHONUNBUFFERED") {
            // Line-by-line logs from Python replicas (stdout is a pipe, not a terminal).
            command.env("PYTHONUNBUFFERED", "1");
        }
        let mut child = command
            .spawn()
            .map_err(|e| Error::io("starting", &launch.program, e))?;
        let pgid = i32::try_from(child.id()).ok().map(Pid::from_raw);
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(out, launch.short_name.clone(), colour, console, &file));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(err, launch.short_name.clone(), colour, console, &file));
        }
        Ok(Proc { child, pgid, pumps })
    }

    /// The exit code, once the process has exited; then the rest of its group is killed.
    pub(crate) fn poll(&mut self) -> Option<i32> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.signal(Signal::SIGKILL);
                Some(exit_code(status))
            }
            Ok(None) => None,
            Err(_) => Some(255),
        }
    }

    /// Sends a signal to the whole process group (ignoring a group that is already gone).
    pub(crate) fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, signal);
        }
    }

    /// Waits up to `limit` for the process to exit.
    pub(crate) fn wait_for(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(code) = self.poll() {
                return Some(code);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the group, then reap.
    pub(crate) fn kill(&mut self) -> i32 {
        self.signal(Signal::SIGKILL);
        let code = self.child.wait().map_or(255, exit_code);
        self.signal(Signal::SIGKILL);
        code
    }

    /// Waits (briefly) for the output pumps to drain.
    pub(crate) fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        for pump in std::mem::take(&mut self.pumps) {
            while !pump.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if pump.is_finished() {
                let _ = pump.join();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Never leave a replica behind, whatever path dropped us.
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
        self.signal(Signal::SIGKILL);
    }
}

fn pump<R: Read + Send + 'static>(
    stream: R,
    prefix: String,
    colour: usize,
    console: &Arc<Console>,
    file: &Arc<Mutex<File>>,
) -> JoinHandle<()> {
    let console = Arc::clone(console);
    let file = Arc::clone(file);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Ok(mut f) = file.lock() {
                        let _ = f.write_all(&buf);
                    }
                    let text = String::from_utf8_lossy(&buf);
                    console.line(&prefix, colour, text.trim_end_matches(['\n', '\r']));
                }
            }
        }
    })
}
