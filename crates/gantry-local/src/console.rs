//! The terminal: replica log lines with coloured prefixes, notices, and a live status line.

use std::io::Write;
use std::sync::Mutex;

/// How the console writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleOptions {
    /// ANSI colours on the prefixes.
    pub color: bool,
    /// Replica logs go to stderr instead of stdout (when stdout carries JSON/YAML).
    pub logs_to_stderr: bool,
    /// Keep a live status line at the bottom of stderr (only on a terminal).
    pub status_line: bool,
}

/// Serialises all terminal output so log lines, notices and the status line never interleave.
#[derive(Debug)]
pub struct Console {
    options: ConsoleOptions,
    status: Mutex<String>,
}

const COLOURS: [&str; 6] = ["36", "33", "35", "32", "34", "31"];

impl Console {
    /// A console writing to this process's stdout and stderr.
    pub fn new(options: ConsoleOptions) -> Self {
        Self {
            options,
            status: Mutex::new(String::new()),
        }
    }

    fn with_lock(&self, f: impl FnOnce(&mut String)) {
        let mut status = match self.status.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut status);
    }

    fn clear(&self, status: &str) {
        if self.options.status_line && !status.is_empty() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }

    fn redraw(&self, status: &str) {
        if self.options.status_line && !status.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{status}");
            let _ = err.flush();
        }
    }

    /// One line of a replica's output, prefixed `[worker-1]`.
    pub fn line(&self, prefix: &str, colour: usize, text: &str) {
        self.with_lock(|status| {
            self.clear(status);
            let line = if self.options.color {
                let code = COLOURS[colour % COLOURS.len()];
                format!("\x1b[{code}m[{prefix}]\x1b[0m {text}\n")
            } else {
                format!("[{prefix}] {text}\n")
            };
            if self.options.logs_to_stderr {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            }
            self.redraw(status);
        });
    }

    /// A message from gantry itself, on stderr.
    pub fn notice(&self, text: &str) {
        self.with_lock(|status| {
            self.clear(status);
            let line = if self.options.color {
                format!("\x1b[1mgantry:\x1b[0m {text}\n")
            } else {
                format!("gantry: {text}\n")
            };
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            self.redraw(status);
        });
    }

    /// Replaces the status line (a no-op unless enabled).
    pub fn set_status(&self, text: String) {
        if !self.options.status_line {
            return;
        }
        self.with_lock(|status| {
            self.clear(status);
            *status = text;
            self.redraw(status);
        });
    }

    /// Removes the status line for good.
    pub fn finish(&self) {
        self.with_lock(|status| {
            self.clear(status);
            status.clear();
        });
    }
}
