//! A sandbox with a real systemd-journald, for the tests of history read from the journal.
//!
//! crashwatch reads history with journalctl, so the tests need what journalctl reads in
//! production: journal files written by a real journald from a real PID 1's messages, not JSON
//! lines written by hand. With `SDTEST_JOURNAL=1` the sandbox script runs the host's
//! systemd-journald inside the sandbox, keeping the journal in memory under the sandbox's /run,
//! which the host sees at `<sandbox>/run/log/journal`; journalctl reads it from there with
//! `--directory`.
//!
//! On 254 and 257 journald is that version's own, and so are the journal files. The host's 252
//! journalctl reads them (their one newer header flag is a compatible one), and crashwatch in
//! production reads with whatever journalctl the host has, so [`Sandbox::journalctl`] stays the
//! host's; [`Sandbox::journalctl_inside`] is the version's own, for comparison.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{find_in_path, wait_until, Sandbox, SystemdVersion};

impl Sandbox {
    /// A sandbox whose systemd logs to its own journald. Returns once journald has opened its
    /// journal file, so every later message of PID 1 is in it.
    /// The host's systemd 252.
    pub fn start_with_journal() -> Result<Sandbox, String> {
        Sandbox::start_version_with_journal(SystemdVersion::V252)
    }

    /// [`Sandbox::start_with_journal`] with systemd `version` and its own journald.
    pub fn start_version_with_journal(version: SystemdVersion) -> Result<Sandbox, String> {
        Sandbox::start_journal(version, &[])
    }

    /// [`Sandbox::start_with_journal`] with more of the sandbox script's settings (`env`).
    pub fn start_with_journal_and(env: &[(&str, &str)]) -> Result<Sandbox, String> {
        Sandbox::start_journal(SystemdVersion::V252, env)
    }

    fn start_journal(version: SystemdVersion, env: &[(&str, &str)]) -> Result<Sandbox, String> {
        if find_in_path("journalctl").is_none() {
            return Err("needs journalctl (package systemd) to read the sandbox's journal".into());
        }
        let mut env = env.to_vec();
        env.push(("SDTEST_JOURNAL", "1"));
        let sandbox = Sandbox::start_version(version, &env)?;
        let opened = wait_until(Duration::from_secs(20), || {
            sandbox.journal_files() > 0
                && sandbox
                    .journalctl(&["--quiet", "-o", "cat", "SYSLOG_IDENTIFIER=systemd-journald"])
                    .stdout
                    .starts_with(b"Journal started")
        });
        if !opened {
            return Err(format!(
                "journald in the sandbox did not open {}\n{}",
                sandbox.journal_dir().display(),
                sandbox.log_tail(30)
            ));
        }
        Ok(sandbox)
    }

    /// The directory for `journalctl --directory` (and crashwatch's `[history]
    /// journal_directory`): it holds the machine-id directory journald writes into.
    pub fn journal_dir(&self) -> PathBuf {
        self.dir().join("run/log/journal")
    }

    fn journal_files(&self) -> usize {
        let Ok(machines) = std::fs::read_dir(self.journal_dir()) else {
            return 0;
        };
        machines
            .flatten()
            .filter_map(|m| std::fs::read_dir(m.path()).ok())
            .flat_map(|files| files.flatten())
            .filter(|f| f.file_name().to_string_lossy().ends_with(".journal"))
            .count()
    }

    /// `journalctl --directory=<the sandbox's journal> <args>` on the host, within 30 s.
    pub fn journalctl(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("30")
            .arg("journalctl")
            .arg(format!("--directory={}", self.journal_dir().display()))
            .arg("--no-pager")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running journalctl")
    }

    /// `journalctl --directory=/run/log/journal <args>` inside the sandbox, within 30 s: the
    /// journalctl of the sandbox's own systemd version, on the same files as
    /// [`Sandbox::journalctl`] (the sandbox's /run is `<sandbox>/run` on the host).
    pub fn journalctl_inside(&self, args: &[&str]) -> Output {
        let mut command = vec!["journalctl", "--directory=/run/log/journal", "--no-pager"];
        command.extend_from_slice(args);
        self.run_inside(30, &command)
    }

    /// How many messages with `message_id` PID 1 wrote about `unit`.
    pub fn journal_count(&self, unit: &str, message_id: &str) -> usize {
        let args = journal_count_args(unit, message_id);
        let out = self.journalctl(&args.each_ref().map(String::as_str));
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// [`Sandbox::journal_count`] read by the sandbox's own journalctl.
    pub fn journal_count_inside(&self, unit: &str, message_id: &str) -> usize {
        let args = journal_count_args(unit, message_id);
        let out = self.journalctl_inside(&args.each_ref().map(String::as_str));
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

fn journal_count_args(unit: &str, message_id: &str) -> [String; 6] {
    [
        "--quiet".into(),
        "-o".into(),
        "cat".into(),
        "_PID=1".into(),
        format!("UNIT={unit}"),
        format!("MESSAGE_ID={message_id}"),
    ]
}
