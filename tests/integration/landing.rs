//! The landing page at `/`, as a browser shows it: a real headless Chromium opens the page of a
//! real daemon watching a sandboxed systemd, one of whose units is crash-looping, at a desktop and
//! at a phone viewport. The page must show every unit the daemon knows (its `/api/units`
//! document) and only units systemd has, the looping one first and marked, in the cells and order
//! of `crashwatch status`; fit a phone without scrolling sideways; and load nothing but itself.
//!
//! The browser is driven by tests/support/landing_page.js (npm package playwright-core, which
//! scripts/test.sh installs into target/npm with Debian's chromium), which reports what it saw
//! as JSON; every judgement is made here.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_crashwatch");
const CHROMIUM: &str = "/usr/bin/chromium";
const CRASHY: &str = "crashy.service";
/// Long enough that, left unwrapped, its row alone would be wider than a phone.
const STEADY: &str = "steady-with-a-name-longer-than-a-phone-screen-is-wide.service";

/// Fails at once and is restarted, forever. Every 3 s: under systemd's default start limit (5
/// starts in 10 s), so systemd never gives up and the loop lasts as long as the test looks.
const LOOPING_UNIT: &str = "[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=3s\n";

/// Where scripts/test.sh installs playwright-core: `$CRASHWATCH_PLAYWRIGHT_CORE`, or target/npm.
fn playwright_core() -> PathBuf {
    match std::env::var_os("CRASHWATCH_PLAYWRIGHT_CORE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm/node_modules/playwright-core")
        }
    }
}

/// Why a browser cannot be driven here, or Ok.
fn browser_prerequisites() -> Result<(), String> {
    let mut missing = Vec::new();
    if find_in_path("node").is_none() {
        missing.push("node (Debian package nodejs)".to_owned());
    }
    if !Path::new(CHROMIUM).is_file() {
        missing.push(format!("{CHROMIUM} (Debian package chromium)"));
    }
    let playwright = playwright_core();
    if !playwright.join("package.json").is_file() {
        missing.push(format!(
            "playwright-core in {} (npm install --prefix target/npm playwright-core)",
            playwright.display()
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "needs {} to open the page in a browser (scripts/test.sh installs them)",
            missing.join(", ")
        ))
    }
}

/// A response's head and body for `method /`, over plain TCP.
fn raw(port: u16, method: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to crashwatch");
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        stream,
        "{method} / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("reading the answer");
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    (head, reply[split + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The size a PNG file says it has (its IHDR chunk).
fn png_size(path: &Path) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "{} is not a PNG",
        path.display()
    );
    let be = |at: usize| u64::from(u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()));
    (be(16), be(20))
}

/// The units systemd has, loaded or not, by name.
fn systemd_units(sb: &Sandbox) -> Vec<String> {
    let out = sb.systemctl(&["list-units", "--all", "--plain", "--no-legend", "--full"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// `crashwatch status` split into cells: its columns stand two spaces or more apart.
fn status_rows(port: u16) -> Vec<Vec<String>> {
    let out = Command::new(BIN)
        .args(["status", "--address", &format!("127.0.0.1:{port}")])
        .env_remove("CRASHWATCH_CONFIG")
        .output()
        .expect("running crashwatch status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .take_while(|line| !line.is_empty())
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The unit names of the document in the order the table promises: given up first, then
/// crash-looping, then by restarts in the window, then by name.
fn promised_order(document: &Value) -> Vec<&str> {
    let mut units: Vec<&Value> = document["units"]
        .as_array()
        .expect("units")
        .iter()
        .collect();
    let key = |u: &Value| {
        (
            !u["gave_up"].as_bool().unwrap_or(false),
            !u["crashlooping"].as_bool().unwrap_or(false),
            u64::MAX - u["restarts_in_window"].as_u64().unwrap_or(0),
        )
    };
    units.sort_by(|a, b| {
        key(a)
            .cmp(&key(b))
            .then(a["unit"].as_str().cmp(&b["unit"].as_str()))
    });
    units.iter().filter_map(|u| u["unit"].as_str()).collect()
}

#[test]
fn a_browser_shows_the_loop_first_on_a_desktop_and_on_a_phone() {
    require_sandbox!();
    if let Err(reason) = browser_prerequisites() {
        skip(&reason);
        return;
    }
    let sb = Sandbox::start().unwrap_or_else(|e| panic!("{e}"));
    sb.write_unit(CRASHY, LOOPING_UNIT);
    sb.write_unit(STEADY, "[Service]\nExecStart=/bin/sleep infinity\n");
    sb.pin_loaded(&[CRASHY, STEADY]);
    let cw = Crashwatch::spawn(&sb, &["--threshold", "3", "--window", "60s"]);
    sb.systemctl_ok(&["start", STEADY, CRASHY]);
    cw.expect_flagged(CRASHY, 40);
    let port = cw.port();

    // HEAD answers as GET does, without the page.
    let (head, body) = raw(port, "GET");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8"),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).contains("<table>"));
    let (head, body) = raw(port, "HEAD");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8"),
        "{head}"
    );
    assert!(body.is_empty(), "HEAD answered with a body");

    let dir = TempDir::new("cw-landing");
    let page_url = format!("http://127.0.0.1:{port}/");
    let api_url = format!("http://127.0.0.1:{port}/api/units");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/landing_page.js");
    let out = Command::new("timeout")
        .arg("180")
        .arg("node")
        .arg(&script)
        .arg(playwright_core())
        .arg(CHROMIUM)
        .arg(&page_url)
        .arg(&api_url)
        .arg(dir.path())
        .output()
        .expect("running node");
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the browser's report is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let cli = status_rows(port);
    let systemd = systemd_units(&sb);

    let visits = report["visits"].as_array().expect("visits");
    assert_eq!(visits.len(), 2, "{report:#}");
    for visit in visits {
        let name = visit["name"].as_str().unwrap_or("?");
        let dom = &visit["dom"];
        let said = format!("{name}: {visit:#}");
        assert_eq!(visit["status"], 200, "{said}");
        assert_eq!(visit["contentType"], "text/html; charset=utf-8", "{said}");

        // Nothing but the page itself: no script, no asset, no error.
        assert_eq!(strings(&visit["requests"]), [page_url.as_str()], "{said}");
        assert_eq!(dom["scripts"], 0, "{said}");
        assert_eq!(
            visit["pageErrors"].as_array().map(Vec::len),
            Some(0),
            "{said}"
        );
        let errors: Vec<&Value> = visit["console"]
            .as_array()
            .expect("console")
            .iter()
            .filter(|m| m["type"] == "error")
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:?}\n{said}");

        // What it is and where to go.
        assert_eq!(dom["h1"], "crashwatch", "{said}");
        assert!(
            dom["description"]
                .as_str()
                .is_some_and(|d| d.contains("crash-loop detection")),
            "{said}"
        );
        let links = strings(&dom["links"]);
        assert!(
            links.contains(&"metrics") && links.contains(&"api/units"),
            "{said}"
        );

        // The table: the daemon's units, as its API said them at the moment the page was made.
        let document = &visit["document"];
        let units = document["units"].as_array().expect("the document's units");
        let rows = dom["rows"].as_array().expect("rows");
        assert_eq!(
            rows.len(),
            units.len(),
            "a row per unit the daemon knows\n{said}"
        );
        let shown: Vec<&str> = rows.iter().filter_map(|r| r["cells"][0].as_str()).collect();
        assert_eq!(shown, promised_order(document), "{said}");
        for unit in &shown {
            assert!(
                systemd.iter().any(|u| u == unit),
                "{unit} is not a unit of systemd's\n{said}"
            );
        }
        assert!(shown.contains(&STEADY), "{said}");
        assert_eq!(shown[0], CRASHY, "the looping unit comes first\n{said}");
        assert_eq!(strings(&dom["headings"]), cli[0], "{said}");

        let entry = |unit: &str| {
            units
                .iter()
                .find(|u| u["unit"] == unit)
                .unwrap_or_else(|| panic!("{unit} is not in the document\n{said}"))
        };
        let crashy = entry(CRASHY);
        assert_eq!(crashy["crashlooping"], true, "{said}");
        let crash = &crashy["last_crash"];
        assert_eq!(crash["exit_status"], 1, "{said}");
        let looping_row = &rows[0];
        assert_eq!(looping_row["class"], "looping", "{said}");
        assert_eq!(
            strings(&looping_row["cells"]),
            [
                CRASHY.to_owned(),
                "systemd".to_owned(),
                format!(
                    "{}/{}",
                    crashy["state"].as_str().unwrap(),
                    crashy["substate"].as_str().unwrap()
                ),
                "LOOPING".to_owned(),
                format!(
                    "{}/{} in 1m",
                    crashy["restarts_in_window"], crashy["threshold"]
                ),
                format!("{} exit-code (exited 1)", crash["time"].as_str().unwrap()),
            ],
            "{said}"
        );
        let steady_row = rows
            .iter()
            .find(|r| r["cells"][0] == STEADY)
            .expect("the steady unit's row");
        assert_eq!(steady_row["class"], "", "{said}");
        assert_eq!(
            strings(&steady_row["cells"]),
            [STEADY, "systemd", "active/running", "no", "0/3 in 1m", "-"],
            "{said}"
        );
        assert_ne!(
            looping_row["background"], steady_row["background"],
            "the looping row does not stand out\n{said}"
        );
        assert_eq!(
            dom["summary"],
            format!("{} units watched, 1 crash-looping.", units.len()),
            "{said}"
        );

        // The same rows as `crashwatch status`: names in the same order, the same markers.
        let cli_rows = &cli[1..];
        assert_eq!(cli_rows.len(), rows.len(), "{cli:?}\n{said}");
        for (row, line) in rows.iter().zip(cli_rows) {
            let cells = strings(&row["cells"]);
            assert_eq!(
                (cells[0], cells[1], cells[3]),
                (&*line[0], &*line[1], &*line[3]),
                "{cli:?}"
            );
        }

        // Every row is there to see, and the page is no wider than the screen.
        let width = visit["viewport"]["width"].as_f64().expect("viewport width");
        assert_eq!(dom["innerWidth"].as_f64(), Some(width), "{said}");
        assert!(
            dom["scrollWidth"].as_f64().is_some_and(|w| w <= width),
            "overflows\n{said}"
        );
        let table = &dom["table"];
        assert!(
            table["display"] != "none" && table["visibility"] == "visible",
            "{said}"
        );
        assert!(table["height"].as_f64().is_some_and(|h| h > 0.0), "{said}");
        assert!(
            table["right"].as_f64().is_some_and(|r| r <= width),
            "{said}"
        );
        for row in rows {
            assert!(
                row["box"]["height"].as_f64().is_some_and(|h| h > 0.0),
                "{row}"
            );
            assert!(
                row["box"]["right"].as_f64().is_some_and(|r| r <= width),
                "{row}"
            );
        }
    }

    // The screenshots: the viewport's size, and something drawn on them.
    let images = report["images"].as_array().expect("images");
    assert_eq!(images.len(), 4, "{report:#}");
    for visit in visits {
        let width = visit["viewport"]["width"].as_u64().unwrap();
        let height = visit["viewport"]["height"].as_u64().unwrap();
        let shots = strings(&visit["screenshots"]);
        assert_eq!(shots.len(), 2, "{visit:#}");
        for (n, shot) in shots.iter().enumerate() {
            let path = Path::new(shot);
            assert!(path.starts_with(dir.path()), "{shot}");
            let image = images.iter().find(|i| i["file"] == *shot).expect("decoded");
            let size = png_size(path);
            assert_eq!(
                (image["width"].as_u64(), image["height"].as_u64()),
                (Some(size.0), Some(size.1)),
                "{image}"
            );
            if n == 0 {
                assert_eq!(size, (width, height), "{shot}");
            } else {
                assert!(
                    size.0 > 0 && size.0 <= width && size.1 > 0,
                    "{shot}: {size:?}"
                );
            }
            // Background, text, lines and the looping row's colour at least.
            assert!(
                image["colours"].as_u64().is_some_and(|c| c > 3),
                "blank? {image}"
            );
            eprintln!("screenshot {shot} ({}x{})", size.0, size.1);
        }
    }
}
