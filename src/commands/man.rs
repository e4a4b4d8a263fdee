//! Manual pages rendered from the command line's own definition.
//!
//! The doc comments in [`crate::cli`] are already the `--help` text, so the pages are made from
//! them by clap_mangen rather than written by hand: a flag added there is documented in
//! `man crashwatch-run` without anyone remembering to. As git does, there is one page for the
//! program, crashwatch(1), which lists the commands, and one per command (crashwatch-run(1),
//! ...) with its options. The binary writes them itself (`crashwatch man --out-dir DIR --date DATE`,
//! a hidden command), so packaging needs no build step of its own.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::cli::Cli;
use std::process::ExitCode;

/// The manual's name, centred on each page's header line, as "Git Manual" is on git's.
const MANUAL: &str = "crashwatch manual";

/// Writes crashwatch.1 and one page per visible command into `out_dir` (created if missing) and
/// returns their paths, the program's page first. `date` is the pages' date, e.g. 2024-05-01:
/// the caller's choice, so a package built twice from the same source is the same.
pub fn write_pages(out_dir: &Path, date: &str) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)?;
    let mut program = Cli::command().disable_help_subcommand(true);
    // Building propagates the global flags (--log-level) into each command and names each
    // command's page after its full invocation ("crashwatch-run").
    program.build();
    let mut written = vec![write_page(&program, date, out_dir)?];
    for command in program.get_subcommands().filter(|c| !c.is_hide_set()) {
        written.push(write_page(command, date, out_dir)?);
    }
    Ok(written)
}

fn write_page(command: &clap::Command, date: &str, out_dir: &Path) -> std::io::Result<PathBuf> {
    // Every argument of `.TH` is given: groff drops an empty one, which would shift the source
    // into the date's place in the footer.
    let page = clap_mangen::Man::new(command.clone())
        .date(date)
        .source(concat!("crashwatch ", env!("CARGO_PKG_VERSION")))
        .manual(MANUAL);
    let path = out_dir.join(page.get_filename());
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    page.render(&mut file)?;
    file.flush()?;
    Ok(path)
}

/// `crashwatch man --out-dir DIR --date DATE`: the manual pages, for packaging. Prints each
/// page's path.
/// `crashwatch man`: writes the pages and prints their paths.
pub fn run(out_dir: &Path, date: &str) -> ExitCode {
    match crate::commands::man::write_pages(out_dir, date) {
        Ok(pages) => {
            for page in pages {
                println!("{}", page.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "crashwatch: writing the manual pages to {}: {e}",
                out_dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    /// A directory of this test's own under the system's temporary directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let path = std::env::temp_dir().join(format!("cw-man-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The command line as the pages describe it: built, so global flags are in every command.
    fn built_cli() -> clap::Command {
        let mut cli = Cli::command().disable_help_subcommand(true);
        cli.build();
        cli
    }

    /// A page as a reader sees it, rendered by groff with every warning turned on; the warnings
    /// are the error. A wide line keeps each flag on one line, so flags can be searched for.
    fn render(page: &Path) -> Result<String, String> {
        let out = match Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-rLL=300n", "-P-cbou"])
            .arg(page)
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) => out,
            Err(e) => return Err(format!("cannot run groff (Debian package groff-base): {e}")),
        };
        let warnings = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() || !warnings.trim().is_empty() {
            return Err(format!(
                "groff {} ({}): {warnings}",
                page.display(),
                out.status
            ));
        }
        // groff prints `\-` as U+2212 MINUS SIGN in UTF-8; a reader types a hyphen.
        Ok(String::from_utf8_lossy(&out.stdout).replace('\u{2212}', "-"))
    }

    #[test]
    fn pages_name_every_command_and_every_flag_of_run() {
        // scripts/test.sh installs groff; elsewhere a missing groff skips, except under CI=true.
        let groff = Command::new("groff")
            .arg("--version")
            .stdout(Stdio::null())
            .status();
        if groff.is_err() && std::env::var("CI").as_deref() != Ok("true") {
            eprintln!("skipping: needs groff (Debian package groff-base) to render the pages");
            return;
        }
        let scratch = Scratch::new("pages");
        let written = write_pages(&scratch.0, "2024-05-01").expect("writing the pages");
        let cli = built_cli();
        let commands: Vec<&clap::Command> =
            cli.get_subcommands().filter(|c| !c.is_hide_set()).collect();
        assert!(commands.iter().any(|c| c.get_name() == "run"));
        assert_eq!(written.len(), 1 + commands.len(), "{written:?}");

        let program = render(&scratch.0.join("crashwatch.1")).unwrap_or_else(|e| panic!("{e}"));
        let footer = program.lines().rev().find(|l| !l.trim().is_empty());
        let footer = footer.expect("a footer line");
        assert!(
            footer.starts_with(concat!("crashwatch ", env!("CARGO_PKG_VERSION")))
                && footer.contains("2024-05-01"),
            "footer {footer:?}"
        );
        for command in &commands {
            let name = command.get_name();
            let page = scratch.0.join(format!("crashwatch-{name}.1"));
            assert!(written.contains(&page), "no page for {name}: {written:?}");
            assert!(
                program.contains(&format!("crashwatch-{name}(1)")),
                "crashwatch(1) does not point to crashwatch-{name}(1):\n{program}"
            );
            render(&page).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(
            !written.iter().any(|p| p.ends_with("crashwatch-man.1")),
            "the hidden man command got a page: {written:?}"
        );

        let run = cli.find_subcommand("run").expect("a run command");
        let run_page =
            render(&scratch.0.join("crashwatch-run.1")).unwrap_or_else(|e| panic!("{e}"));
        let flags: Vec<String> = run
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long())
            .map(|long| format!("--{long}"))
            .collect();
        assert!(
            flags.contains(&"--web.listen-address".to_owned()),
            "{flags:?}"
        );
        assert!(flags.contains(&"--log-level".to_owned()), "{flags:?}");
        for flag in &flags {
            // A flag's own entry, not just a mention of it in another flag's text.
            let listed = run_page
                .lines()
                .any(|l| l.trim_start().split([',', ' ', '=']).any(|w| w == flag));
            assert!(
                listed,
                "crashwatch-run(1) does not list {flag}:\n{run_page}"
            );
        }
    }
}
