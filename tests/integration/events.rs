//! The event record's file under a real crash loop: rotation by size, reopening on SIGHUP after
//! an outside rotation, and a disk that fills up and frees again. In every case each line is one
//! whole JSON record, and the records that were kept follow each other without a gap: the
//! `restarts` count of the `restart` lines (crashwatch's running count, checked against systemd's
//! `NRestarts`) goes up by one from line to line, across files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const CRASHY: &str = "crashy.service";

fn sandbox_with_crashy() -> Sandbox {
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(CRASHY, CRASHY_UNIT);
    sb.pin_loaded(&[CRASHY]);
    sb
}

/// Every record in `path`, which must hold whole lines only: no torn or partial last line, each
/// line one JSON object. A missing file has none.
fn whole_records(path: &Path) -> Vec<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a partial line: {:?}",
        path.display(),
        &text[text.rfind('\n').map_or(0, |i| i + 1)..]
    );
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{} line {}: not JSON ({e}): {line}", path.display(), i + 1)
            });
            assert!(
                value.is_object(),
                "{} line {}: {line}",
                path.display(),
                i + 1
            );
            value
        })
        .collect()
}

/// The `restarts` count of each `restart` line of the crashy unit, in order.
fn restart_counts(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .filter(|e| e["unit"] == CRASHY && e["event"] == "transition")
        .filter(|e| e["transition"] == "restart")
        .map(|e| e["restarts"].as_u64().expect("restarts is a count"))
        .collect()
}

/// Asserts that `counts` go up by one from each to the next and end at `last`.
fn assert_contiguous(counts: &[u64], last: u64, what: &str) {
    assert!(!counts.is_empty(), "no restart lines in {what}");
    let first = counts[0];
    let expected: Vec<u64> = (first..=last).collect();
    assert_eq!(
        counts, expected,
        "restart lines in {what} are not contiguous up to NRestarts {last}"
    );
}

/// The names in `dir` that belong to the record at `path` (the file and its rotations).
fn record_files(dir: &Path, path: &Path) -> Vec<String> {
    let stem = path
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&stem))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Stops the loop and waits until crashwatch has counted every restart systemd made; returns
/// that count.
fn stop_and_settle(sb: &Sandbox, cw: &Crashwatch) -> u64 {
    sb.systemctl_ok(&["stop", CRASHY]);
    thread::sleep(Duration::from_secs(1));
    assert_counts_match(sb, cw, CRASHY)
}

fn events_errors(cw: &Crashwatch, error_type: &str) -> f64 {
    cw.metric(
        "crashwatch_errors_total",
        &[("component", "events"), ("error_type", error_type)],
    )
    .unwrap_or(0.0)
}

#[test]
fn rotation_under_a_fast_loop_keeps_whole_contiguous_records_in_max_files() {
    require_sandbox!();
    let sb = sandbox_with_crashy();
    let cw = Crashwatch::spawn(
        &sb,
        &["--events-max-size", "4KiB", "--events-max-files", "3"],
    );
    let path = cw.events_path().to_owned();
    let dir = path.parent().expect("a directory").to_owned();
    sb.systemctl_ok(&["start", CRASHY]);

    // A restart makes some 2 KB of records, so 30 of them rotate the 4 KiB file a dozen times
    // and delete the oldest files several times over. Watched all along: never more than the
    // live file and 3 rotated ones.
    let mut most = Vec::new();
    let looped = wait_until(Duration::from_secs(90), || {
        let names = record_files(&dir, &path);
        if names.len() > most.len() {
            most = names;
        }
        sb.n_restarts(CRASHY) >= 30
    });
    assert!(looped, "{CRASHY} did not restart 30 times in 90 s");
    let n = stop_and_settle(&sb, &cw);
    assert!(
        most.len() <= 4,
        "more than 3 rotated files at once: {most:?}"
    );
    assert_eq!(
        record_files(&dir, &path),
        [
            "events.jsonl",
            "events.jsonl.1",
            "events.jsonl.2",
            "events.jsonl.3"
        ]
    );

    // Oldest first; every rotated file within the cap, every line whole.
    let mut records = Vec::new();
    for file in [3, 2, 1].map(|k| rotated(&path, k)).iter().chain([&path]) {
        let len = std::fs::metadata(file).expect("a file of the record").len();
        assert!(len <= 4096, "{} has {len} bytes", file.display());
        records.extend(whole_records(file));
    }
    let counts = restart_counts(&records);
    assert_contiguous(&counts, n, "the rotated files");
    assert!(
        counts[0] > 1,
        "the oldest records were not deleted: {counts:?}"
    );
    assert_eq!(events_errors(&cw, "write_failed"), 0.0);
    assert_eq!(events_errors(&cw, "rotate_failed"), 0.0);
    assert_eq!(
        cw.metric(
            "crashwatch_sink_events_dropped_total",
            &[("sink", "events")]
        )
        .unwrap_or(0.0),
        0.0
    );
}

#[test]
fn sighup_after_a_rename_writes_on_in_a_fresh_file_at_the_path() {
    require_sandbox!();
    let sb = sandbox_with_crashy();
    let mut cw = Crashwatch::spawn(&sb, &[]);
    let path = cw.events_path().to_owned();
    sb.systemctl_ok(&["start", CRASHY]);
    let begun = wait_until(Duration::from_secs(30), || {
        restart_counts(&whole_records(&path)).len() >= 2
    });
    assert!(begun, "no restart lines in {}", path.display());

    // What logrotate does without copytruncate: move the file away, then signal.
    let moved = path.with_file_name("events.jsonl-20240501");
    std::fs::rename(&path, &moved).expect("moving the record away");
    cw.hangup();
    let fresh = wait_until(Duration::from_secs(30), || {
        !restart_counts(&whole_records(&path)).is_empty()
    });
    assert!(
        fresh,
        "no fresh record at {} after SIGHUP\n{}",
        path.display(),
        cw.stderr()
    );
    let n = stop_and_settle(&sb, &cw);
    assert_eq!(cw.exit_status(), None, "SIGHUP stopped crashwatch");

    let before = whole_records(&moved);
    let after = whole_records(&path);
    assert!(
        !restart_counts(&before).is_empty(),
        "nothing before the move"
    );
    let mut records = before;
    records.extend(after);
    let counts = restart_counts(&records);
    assert_eq!(counts[0], 1, "{counts:?}");
    assert_contiguous(&counts, n, "the moved and the fresh file");
    assert!(
        cw.stderr().contains("Reopened the event record"),
        "{}",
        cw.stderr()
    );
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_writes_counted_and_whole_then_they_resume() {
    require_sandbox!();
    if find_in_path("mount").is_none() || find_in_path("umount").is_none() {
        skip("needs mount and umount (package mount) for a small tmpfs");
        return;
    }
    let sb = sandbox_with_crashy();
    let dir = TempDir::new("cw-full");
    let tmpfs = Tmpfs::mount(dir.path(), "64k");
    // Most of the 64 KiB taken, so the record fills the rest within a few restarts.
    let filler = tmpfs.0.join("filler");
    std::fs::write(&filler, vec![b'x'; 40 * 1024]).expect("writing the filler");
    let path = tmpfs.0.join("events.jsonl");
    let started = Instant::now();
    let cw = Crashwatch::spawn_with_events(sb.bus_address(), Some(&path), &[]);
    sb.systemctl_ok(&["start", CRASHY]);

    let failing = wait_until(Duration::from_secs(60), || {
        events_errors(&cw, "write_failed") >= 5.0
    });
    assert!(
        failing,
        "writes to the full tmpfs were not counted\n{}",
        cw.stderr()
    );
    // Every record either whole in the file or not in it at all: a write the disk cut short
    // was cut back off.
    let written = whole_records(&path).len();
    assert!(written > 0, "nothing was written before the disk filled");

    // Room again: the next records are written.
    std::fs::remove_file(&filler).expect("removing the filler");
    let resumed = wait_until(Duration::from_secs(30), || {
        whole_records(&path).len() > written
    });
    assert!(
        resumed,
        "no record written after space was freed\n{}",
        cw.stderr()
    );
    // Counting never waited for the disk.
    let n = stop_and_settle(&sb, &cw);
    assert!(n >= 5, "NRestarts {n}");
    assert!(whole_records(&path).len() > written);

    // The failures were logged at a bounded rate: the first, then one line per 10 s at most.
    let logged = cw.stderr().matches("A sink failed to write.").count();
    let allowed = 2 + (started.elapsed().as_secs() / 10) as usize;
    assert!(
        (1..=allowed).contains(&logged),
        "{logged} log lines for write failures in {:?}\n{}",
        started.elapsed(),
        cw.stderr()
    );
    drop(cw);
    drop(tmpfs);
}
