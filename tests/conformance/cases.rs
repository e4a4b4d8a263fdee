//! The matrix's rows: real systemd behaviours, each with the verdict expected from systemd (the
//! truth) and from crashwatch.
//!
//! Every unit counts its own runs: its ExecStart (or ExecStartPre, where that is what fails)
//! first appends a line to `@DIR@/runs`, then `exec`s the program, so the exit code or signal
//! systemd sees is the program's, not a wrapper's. In unit files `$$` is a literal `$`.
//!
//! Most loops run with `StartLimitIntervalSec=0` and are stopped by the case once they have been
//! flagged: the start limit has cases of its own, and a loop that systemd ends by itself would
//! make every other case a start-limit case too.

use crate::model::{applies_everywhere, Case, Cond, End, Expect, Needs, Replay, Step, N};
use crate::versions::{self, SystemdVersion};

/// `ExecStart=` that counts the run, then runs `rest` in the same shell.
fn counted(rest: &str) -> String {
    format!("ExecStart=/bin/sh -c 'echo run >> @DIR@/runs; {rest}'\n")
}

fn service(unit_section: &str, service_section: &str) -> String {
    format!("[Unit]\n{unit_section}\n[Service]\n{service_section}")
}

/// A loop that systemd itself never stops: no start limit, a quick restart.
fn looping(exec: &str, extra: &str) -> String {
    service(
        "StartLimitIntervalSec=0\n",
        &format!("{}Restart=always\nRestartSec=500ms\n{extra}", counted(exec)),
    )
}

fn base(name: &'static str, why: &'static str, unit: &'static str, text: String) -> Case {
    Case {
        name,
        why,
        unit,
        files: vec![(unit, text)],
        pin: vec![unit],
        threshold: 3,
        window_secs: 20,
        steps: vec![Step::Start(unit)],
        expect: Expect::single_failure("exit-code"),
        replay: Replay::SameAsLive,
        not_applicable: applies_everywhere,
        needs: None,
    }
}

/// Waits for `runs` runs, then stops the unit while it waits in auto-restart, so the stop never
/// races a run that is just starting.
fn stop_mid_loop(unit: &'static str, runs: u64) -> Vec<Step> {
    vec![
        Step::Wait(Cond::Runs(runs), 40),
        Step::Wait(Cond::Sub(unit, "auto-restart"), 15),
        Step::Stop(unit),
    ]
}

/// Start, then wait until the unit has failed and had time to show it is not restarted.
fn start_and_fail(unit: &'static str) -> Vec<Step> {
    vec![
        Step::Start(unit),
        Step::Wait(Cond::Runs(1), 10),
        Step::Wait(Cond::Sub(unit, "failed"), 15),
        Step::Sleep(1000),
    ]
}

fn loop_case(
    name: &'static str,
    why: &'static str,
    unit: &'static str,
    text: String,
    reason: &'static str,
) -> Case {
    let mut c = base(name, why, unit, text);
    c.steps = [vec![Step::Start(unit)], stop_mid_loop(unit, 5)].concat();
    c.expect = Expect::stopped_loop(reason);
    c
}

fn before_254(v: SystemdVersion) -> Option<&'static str> {
    (versions::number(v) < 254).then_some(
        "RestartSteps= and RestartMaxDelaySec= came with systemd 254; older versions ignore them \
         as unknown settings, so the case would only repeat a plain loop",
    )
}

pub fn all() -> Vec<Case> {
    let mut cases = Vec::new();

    // ---------------------------------------------------------------------------- Restart=
    {
        let mut c = base(
            "Restart=no",
            "one failure is one crash; nothing restarts it, so no restart and no loop",
            "restart-no.service",
            service("", &format!("{}Restart=no\n", counted("exec /bin/false"))),
        );
        c.steps = start_and_fail(c.unit);
        c.expect.exec_main = Some((1, 1));
        cases.push(c);
    }
    {
        let unit = "restart-on-success.service";
        let mut c = base(
            "Restart=on-success, clean exits",
            "on-success restarts exit 0 only; a clean exit that systemd follows with a scheduled \
             restart is a stop nobody asked for, so each is a crash (reason success) and the \
             unit loops like any other",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!(
                    "{}Restart=on-success\nRestartSec=500ms\n",
                    counted("sleep 0.2; exit 0")
                ),
            ),
        );
        c.steps = [vec![Step::Start(unit)], stop_mid_loop(unit, 5)].concat();
        c.expect = Expect::stopped_loop("success");
        c.expect.result = Some("success");
        cases.push(c);
    }
    {
        let mut c = base(
            "Restart=on-success, exit 1",
            "on-success does not restart a failure: one crash, no restart",
            "on-success-fail.service",
            service("", &format!("{}Restart=on-success\n", counted("exit 1"))),
        );
        c.steps = start_and_fail(c.unit);
        c.expect.exec_main = Some((1, 1));
        cases.push(c);
    }
    {
        let unit = "restart-on-failure.service";
        let mut c = loop_case(
            "Restart=on-failure, exit 1",
            "every run fails and is restarted automatically: restarts = runs - 1, flagged at the \
             3rd restart, ended by the stop",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!(
                    "{}Restart=on-failure\nRestartSec=500ms\n",
                    counted("exec /bin/false")
                ),
            ),
            "exit-code",
        );
        c.expect.result = Some("exit-code");
        cases.push(c);
    }
    {
        let mut c = base(
            "Restart=on-abnormal, exit 1",
            "on-abnormal restarts signals, timeouts and the watchdog, not exit codes: one crash",
            "abnormal-exit.service",
            service("", &format!("{}Restart=on-abnormal\n", counted("exit 1"))),
        );
        c.steps = start_and_fail(c.unit);
        cases.push(c);
    }
    {
        let unit = "abnormal-signal.service";
        let mut c = loop_case(
            "Restart=on-abnormal, SIGKILL",
            "killed by a signal is abnormal: restarted, a loop of crashes with reason signal",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!(
                    "{}Restart=on-abnormal\nRestartSec=500ms\n",
                    counted("kill -KILL $$$$")
                ),
            ),
            "signal",
        );
        c.expect.result = Some("signal");
        c.expect.exec_main = Some((2, 9));
        cases.push(c);
    }
    {
        let unit = "on-watchdog.service";
        let mut c = loop_case(
            "Restart=on-watchdog, watchdog timeout",
            "WatchdogSec=1s and the service never pings: systemd kills it (SIGABRT, no core with \
             LimitCORE=0) and restarts it; each is a crash with reason watchdog",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!(
                    "{}Restart=on-watchdog\nRestartSec=500ms\nWatchdogSec=1s\nLimitCORE=0\n",
                    counted("exec sleep infinity")
                ),
            ),
            "watchdog",
        );
        c.steps = [vec![Step::Start(unit)], stop_mid_loop(unit, 4)].concat();
        c.expect.result = Some("watchdog");
        c.expect.exec_main = Some((2, 6));
        cases.push(c);
    }
    {
        let mut c = base(
            "Restart=on-watchdog, exit 1",
            "on-watchdog restarts only watchdog timeouts: an exit code is one crash, no restart",
            "watchdog-exit.service",
            service("", &format!("{}Restart=on-watchdog\n", counted("exit 1"))),
        );
        c.steps = start_and_fail(c.unit);
        cases.push(c);
    }
    {
        let unit = "on-abort.service";
        let mut c = loop_case(
            "Restart=on-abort, SIGKILL",
            "an uncaught signal that is not a clean one is an abort: restarted, a loop",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!(
                    "{}Restart=on-abort\nRestartSec=500ms\n",
                    counted("kill -KILL $$$$")
                ),
            ),
            "signal",
        );
        c.expect.exec_main = Some((2, 9));
        cases.push(c);
    }
    {
        let mut c = base(
            "Restart=on-abort, exit 1",
            "on-abort ignores exit codes: one crash, no restart",
            "abort-exit.service",
            service("", &format!("{}Restart=on-abort\n", counted("exit 1"))),
        );
        c.steps = start_and_fail(c.unit);
        cases.push(c);
    }
    {
        let unit = "restart-always.service";
        let mut c = loop_case(
            "Restart=always, exit 1",
            "the plainest loop: restarts = runs - 1 = NRestarts, flagged at the 3rd restart",
            unit,
            looping("exec /bin/false", ""),
            "exit-code",
        );
        c.expect.result = Some("exit-code");
        c.expect.exec_main = Some((1, 1));
        cases.push(c);
    }

    // ---------------------------------------------------------------------------- start limit
    {
        let unit = "start-limit-default.service";
        let mut c = base(
            "start limit: default (5 in 10 s)",
            "the 5th failure schedules a 5th restart that the start limit refuses: 5 runs, 4 \
             restarts (NRestarts reads 5: the refused one was counted). systemd gave up, which \
             is not a stop: the loop ends gave_up and the last transition says gave_up=true",
            unit,
            service(
                "",
                &format!(
                    "{}Restart=on-failure\nRestartSec=200ms\n",
                    counted("exec /bin/false")
                ),
            ),
        );
        c.steps = vec![
            Step::Start(unit),
            Step::Wait(Cond::Runs(5), 20),
            Step::Wait(Cond::Sub(unit, "failed"), 10),
            Step::Sleep(1000),
        ];
        c.expect = Expect {
            runs: N::Exact(5),
            n_restarts: Some(N::Exact(5)),
            // The refused start does not change Result (252): the journal says "Start request
            // repeated too quickly" and "Failed with result 'exit-code'".
            result: Some("exit-code"),
            state: Some("failed/failed"),
            exec_main: Some((1, 1)),
            load_state: Some("loaded"),
            starts: N::Exact(5),
            restarts: N::Exact(4),
            crashes: vec![("exit-code", N::Exact(5))],
            restart_cause: Some("automatic"),
            end: End::GaveUp,
            gave_up: Some(true),
        };
        cases.push(c);
    }
    {
        let unit = "start-limit-custom.service";
        let mut c = base(
            "start limit: StartLimitBurst=4 in 30 s",
            "as the default, one run fewer: 4 runs, 3 restarts (flagged at the 3rd), then \
             systemd refuses the next start and the loop ends gave_up",
            unit,
            service(
                "StartLimitBurst=4\nStartLimitIntervalSec=30s\n",
                &format!(
                    "{}Restart=on-failure\nRestartSec=200ms\n",
                    counted("exec /bin/false")
                ),
            ),
        );
        c.steps = vec![
            Step::Start(unit),
            Step::Wait(Cond::Runs(4), 20),
            Step::Wait(Cond::Sub(unit, "failed"), 10),
            Step::Sleep(1000),
        ];
        c.expect = Expect {
            runs: N::Exact(4),
            n_restarts: Some(N::Exact(4)),
            // The refused start does not change Result (252): the journal says "Start request
            // repeated too quickly" and "Failed with result 'exit-code'".
            result: Some("exit-code"),
            state: Some("failed/failed"),
            exec_main: Some((1, 1)),
            load_state: Some("loaded"),
            starts: N::Exact(4),
            restarts: N::Exact(3),
            crashes: vec![("exit-code", N::Exact(4))],
            restart_cause: Some("automatic"),
            end: End::GaveUp,
            gave_up: Some(true),
        };
        cases.push(c);
    }
    {
        let unit = "start-limit-off.service";
        let mut c = base(
            "start limit: StartLimitIntervalSec=0",
            "no rate limit: systemd restarts it forever (8 runs in ~4 s, past 5 in 10 s); only \
             crashwatch flags it, and the loop ends only when it is stopped",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!(
                    "{}Restart=on-failure\nRestartSec=500ms\n",
                    counted("exec /bin/false")
                ),
            ),
        );
        c.steps = [vec![Step::Start(unit)], stop_mid_loop(unit, 8)].concat();
        c.expect = Expect::stopped_loop("exit-code");
        c.expect.runs = N::AtLeast(8);
        cases.push(c);
    }

    // ---------------------------------------------------------------------------- Type=
    {
        let unit = "type-simple.service";
        let mut c = loop_case(
            "Type=simple, exit 3",
            "the main process exits 3 at once, systemd restarts it: a loop of exit-code crashes",
            unit,
            looping("exit 3", "Type=simple\n"),
            "exit-code",
        );
        c.expect.result = Some("exit-code");
        c.expect.exec_main = Some((1, 3));
        cases.push(c);
    }
    {
        let unit = "type-exec.service";
        let mut c = loop_case(
            "Type=exec, exit 3",
            "as simple, but the start completes only after execve: same verdict",
            unit,
            looping("exit 3", "Type=exec\n"),
            "exit-code",
        );
        c.expect.exec_main = Some((1, 3));
        cases.push(c);
    }
    {
        let unit = "type-forking.service";
        let mut c = loop_case(
            "Type=forking, daemon dies",
            "the parent exits 0 after forking; the daemon (MainPID from PIDFile=) exits 3 half a \
             second later: that is the crash, and each restart starts a new daemon",
            unit,
            looping(
                "/bin/sh -c \"sleep 0.5; exit 3\" & echo $$! > /run/type-forking.pid",
                "Type=forking\nPIDFile=/run/type-forking.pid\n",
            ),
            "exit-code",
        );
        c.expect.exec_main = Some((1, 3));
        cases.push(c);
    }
    {
        let unit = "type-notify.service";
        let mut c = loop_case(
            "Type=notify, never ready",
            "READY=1 never comes: TimeoutStartSec=1s fails the start (SIGTERM), Restart= \
             restarts it; each is a crash with reason timeout",
            unit,
            looping("exec sleep infinity", "Type=notify\nTimeoutStartSec=1s\n"),
            "timeout",
        );
        c.steps = [vec![Step::Start(unit)], stop_mid_loop(unit, 4)].concat();
        c.expect.result = Some("timeout");
        c.expect.exec_main = Some((2, 15));
        cases.push(c);
    }
    {
        let unit = "type-oneshot.service";
        let mut c = loop_case(
            "Type=oneshot, failing, Restart=on-failure",
            "a oneshot that fails is restarted like any service (allowed since 244): a loop",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!(
                    "Type=oneshot\n{}Restart=on-failure\nRestartSec=500ms\n",
                    counted("exit 1")
                ),
            ),
            "exit-code",
        );
        c.expect.exec_main = Some((1, 1));
        cases.push(c);
    }

    // ---------------------------------------------------------------------------- exits
    {
        let unit = "clean-exit-always.service";
        let mut c = loop_case(
            "exit 0 under Restart=always",
            "a clean exit that systemd follows with a restart nobody asked for is a crash \
             (reason success), whatever Result says; exiting every 0.5 s is a crash loop",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!(
                    "{}Restart=always\nRestartSec=500ms\n",
                    counted("sleep 0.2; exit 0")
                ),
            ),
            "success",
        );
        c.expect.result = Some("success");
        c.expect.exec_main = Some((1, 0));
        cases.push(c);
    }
    {
        let unit = "sigabrt.service";
        let mut c = loop_case(
            "SIGABRT, LimitCORE=0",
            "an abort without a core dump (the core limit is 0): Result signal, killed by 6",
            unit,
            looping("kill -ABRT $$$$", "LimitCORE=0\n"),
            "signal",
        );
        c.expect.result = Some("signal");
        c.expect.exec_main = Some((2, 6));
        cases.push(c);
    }
    {
        let mut c = base(
            "SIGTERM of itself, Restart=on-failure",
            "SIGTERM is a clean exit status for systemd by default (with SIGHUP, SIGINT and \
             SIGPIPE): Result success, no restart, so no crash",
            "self-sigterm.service",
            service(
                "",
                &format!("{}Restart=on-failure\n", counted("kill -TERM $$$$")),
            ),
        );
        c.steps = vec![
            Step::Start(c.unit),
            Step::Wait(Cond::Runs(1), 10),
            Step::Wait(Cond::Active(c.unit, "inactive"), 10),
            Step::Sleep(1000),
        ];
        c.expect = Expect::no_crash(1);
        c.expect.state = Some("inactive/dead");
        c.expect.exec_main = Some((2, 15));
        cases.push(c);
    }
    {
        let mut c = base(
            "watchdog timeout, Restart=no",
            "the watchdog kills it once: one crash with reason watchdog",
            "watchdog-once.service",
            service(
                "",
                &format!(
                    "{}WatchdogSec=1s\nLimitCORE=0\n",
                    counted("exec sleep infinity")
                ),
            ),
        );
        c.steps = vec![
            Step::Start(c.unit),
            Step::Wait(Cond::Sub(c.unit, "failed"), 15),
            Step::Sleep(500),
        ];
        c.expect = Expect::single_failure("watchdog");
        c.expect.exec_main = Some((2, 6));
        cases.push(c);
    }
    {
        let unit = "start-timeout.service";
        let mut c = base(
            "start timeout (ExecStartPre hangs)",
            "TimeoutStartSec=1s expires while ExecStartPre runs: the start fails with Result \
             timeout; the main process never ran",
            unit,
            service(
                "",
                "ExecStartPre=/bin/sh -c 'echo run >> @DIR@/runs; exec sleep 30'\n\
                 ExecStart=/bin/sleep infinity\nTimeoutStartSec=1s\n"
                    .to_string()
                    .as_str(),
            ),
        );
        c.steps = start_and_fail(unit);
        c.expect = Expect::single_failure("timeout");
        c.expect.exec_main = Some((0, 0));
        cases.push(c);
    }
    {
        let unit = "startpre-fails.service";
        let mut c = loop_case(
            "ExecStartPre fails",
            "the pre-start command fails, so the main process never runs; each attempt is still \
             a run (a new InvocationID) that crashed and was restarted",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                "ExecStartPre=/bin/sh -c 'echo run >> @DIR@/runs; exit 1'\n\
                 ExecStart=/bin/sleep infinity\nRestart=on-failure\nRestartSec=500ms\n",
            ),
            "exit-code",
        );
        c.expect.result = Some("exit-code");
        cases.push(c);
    }
    {
        let unit = "startpost-fails.service";
        let mut c = loop_case(
            "ExecStartPost fails",
            "the main process runs, ExecStartPost fails, systemd stops the main process (SIGTERM) \
             and restarts: the crash is the failed post command, reason exit-code. The post \
             command counts the runs: the main process may be killed before it could",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                "ExecStart=/bin/sleep infinity\n\
                 ExecStartPost=/bin/sh -c 'echo run >> @DIR@/runs; exit 1'\n\
                 Restart=on-failure\nRestartSec=500ms\n",
            ),
            "exit-code",
        );
        c.expect.result = Some("exit-code");
        c.expect.exec_main = Some((2, 15));
        cases.push(c);
    }
    {
        let unit = "stop-timeout.service";
        let mut c = base(
            "stop times out (SIGTERM ignored)",
            "systemctl stop asked for it; the stop timed out and SIGKILL finished it, so systemd \
             marks it failed (timeout). A failure during a stop someone asked for is not a \
             crash: no crash, no restart",
            unit,
            service(
                "",
                &format!(
                    "{}TimeoutStopSec=1s\nRestart=on-failure\n",
                    counted("trap \"\" TERM; exec sleep infinity")
                ),
            ),
        );
        c.steps = vec![
            Step::Start(unit),
            Step::Wait(Cond::Runs(1), 10),
            Step::Wait(Cond::Sub(unit, "running"), 10),
            Step::Stop(unit),
            Step::Sleep(1000),
        ];
        c.expect = Expect::no_crash(1);
        c.expect.result = Some("timeout");
        c.expect.state = Some("failed/failed");
        c.expect.exec_main = Some((2, 9));
        cases.push(c);
    }

    // ---------------------------------------------------------------------------- exit statuses
    {
        let mut c = base(
            "SuccessExitStatus=3",
            "exit 3 is declared a success: Result success, not restarted, not a crash",
            "success-status.service",
            service(
                "",
                &format!(
                    "{}SuccessExitStatus=3\nRestart=on-failure\n",
                    counted("exit 3")
                ),
            ),
        );
        c.steps = vec![
            Step::Start(c.unit),
            Step::Wait(Cond::Runs(1), 10),
            Step::Wait(Cond::Active(c.unit, "inactive"), 10),
            Step::Sleep(1000),
        ];
        c.expect = Expect::no_crash(1);
        c.expect.state = Some("inactive/dead");
        c.expect.exec_main = Some((1, 3));
        cases.push(c);
    }
    {
        let mut c = base(
            "RestartPreventExitStatus=3, Restart=always",
            "exit 3 is still a failure but never restarted: one crash, no restart, no loop",
            "prevent-status.service",
            service(
                "",
                &format!(
                    "{}RestartPreventExitStatus=3\nRestart=always\n",
                    counted("exit 3")
                ),
            ),
        );
        c.steps = start_and_fail(c.unit);
        c.expect.exec_main = Some((1, 3));
        cases.push(c);
    }
    {
        let unit = "force-status.service";
        let mut c = loop_case(
            "RestartForceExitStatus=3, Restart=no",
            "exit 3 forces a restart although Restart=no: a loop systemd drives (automatic)",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!(
                    "{}RestartForceExitStatus=3\nRestart=no\nRestartSec=500ms\n",
                    counted("exit 3")
                ),
            ),
            "exit-code",
        );
        c.expect.exec_main = Some((1, 3));
        cases.push(c);
    }

    // ---------------------------------------------------------------------------- people and tools
    {
        let unit = "stop-mid-loop.service";
        let mut c = loop_case(
            "operator: stop mid-loop",
            "a stop ends the loop as stopped: it is down because someone asked, not because \
             systemd gave up",
            unit,
            looping("exec /bin/false", ""),
            "exit-code",
        );
        c.steps = [vec![Step::Start(unit)], stop_mid_loop(unit, 6)].concat();
        cases.push(c);
    }
    {
        let unit = "restart-mid-loop.service";
        let mut c = loop_case(
            "operator: restart mid-loop",
            "systemctl restart while it waits in auto-restart: the next run still follows a \
             crash, so it is a restart (external), and the loop goes on as one loop. NRestarts \
             restarts from 0 at a manual start, so it is not compared",
            unit,
            looping("exec /bin/false", ""),
            "exit-code",
        );
        c.steps = [
            vec![
                Step::Start(unit),
                Step::Wait(Cond::Runs(4), 20),
                Step::Wait(Cond::Sub(unit, "auto-restart"), 10),
                Step::Restart(unit),
            ],
            stop_mid_loop(unit, 7),
        ]
        .concat();
        c.expect.n_restarts = None;
        c.expect.restart_cause = None;
        cases.push(c);
    }
    {
        let unit = "kill-healthy.service";
        let mut c = base(
            "operator: systemctl kill -s KILL of a healthy unit",
            "one crash (signal), one automatic restart, then healthy: no loop",
            unit,
            service(
                "",
                &format!(
                    "{}Restart=on-failure\nRestartSec=200ms\n",
                    counted("exec sleep infinity")
                ),
            ),
        );
        c.steps = vec![
            Step::Start(unit),
            Step::Wait(Cond::Runs(1), 10),
            Step::Wait(Cond::Sub(unit, "running"), 10),
            Step::Kill(unit, "KILL"),
            Step::Wait(Cond::Runs(2), 10),
            Step::Wait(Cond::Sub(unit, "running"), 10),
            Step::Sleep(500),
        ];
        c.expect = Expect {
            runs: N::Exact(2),
            n_restarts: Some(N::Exact(1)),
            result: Some("success"),
            state: Some("active/running"),
            exec_main: None,
            load_state: Some("loaded"),
            starts: N::Exact(2),
            restarts: N::Exact(1),
            crashes: vec![("signal", N::Exact(1))],
            restart_cause: Some("automatic"),
            end: End::NoLoop,
            gave_up: Some(false),
        };
        cases.push(c);
    }
    {
        let unit = "reset-failed-mid-loop.service";
        let mut c = loop_case(
            "operator: reset-failed mid-loop",
            "reset-failed while it waits in auto-restart sets NRestarts back to 0, and the \
             pending restart still comes from Restart= (NRestarts then reads 1, where a manual \
             start would read 0): every restart stays automatic, one loop, nothing lost or \
             invented. NRestarts itself is not compared (reset mid-loop)",
            unit,
            looping("exec /bin/false", ""),
            "exit-code",
        );
        c.steps = [
            vec![
                Step::Start(unit),
                Step::Wait(Cond::Runs(3), 20),
                Step::Wait(Cond::Sub(unit, "auto-restart"), 10),
                Step::ResetFailed(unit),
            ],
            stop_mid_loop(unit, 6),
        ]
        .concat();
        c.expect.n_restarts = None;
        cases.push(c);
    }
    {
        let unit = "restart-on-purpose.service";
        let mut c = base(
            "operator: systemctl restart x4 of a healthy unit",
            "restarts asked for are not crashes: 5 starts, no crash, no restart, no loop",
            unit,
            service("", &counted("exec sleep infinity")),
        );
        c.steps = vec![Step::Start(unit), Step::Wait(Cond::Runs(1), 10)];
        for n in 2..=5 {
            c.steps.push(Step::Wait(Cond::Sub(unit, "running"), 10));
            c.steps.push(Step::Restart(unit));
            c.steps.push(Step::Wait(Cond::Runs(n), 10));
        }
        c.steps.push(Step::Wait(Cond::Sub(unit, "running"), 10));
        c.steps.push(Step::Sleep(500));
        c.expect = Expect::no_crash(5);
        c.expect.state = Some("active/running");
        cases.push(c);
    }
    {
        let unit = "outside-loop.service";
        let mut c = base(
            "tool: repeated systemctl start, Restart=no",
            "each start after a failure is a restart whoever made it (external); NRestarts stays \
             0. After the 5th failure nobody starts it: it stays down a full window (8 s), so \
             the loop ends gave_up. No transition says systemd gave up: systemd never tried",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!("{}Restart=no\n", counted("exec /bin/false")),
            ),
        );
        c.window_secs = 8;
        c.steps = vec![];
        for n in 1..=5 {
            c.steps.push(Step::Start(unit));
            c.steps.push(Step::Wait(Cond::Runs(n), 10));
            c.steps.push(Step::Wait(Cond::Sub(unit, "failed"), 10));
        }
        c.steps.push(Step::Sleep(9500));
        c.expect = Expect {
            runs: N::Exact(5),
            n_restarts: Some(N::Exact(0)),
            result: Some("exit-code"),
            state: Some("failed/failed"),
            exec_main: Some((1, 1)),
            load_state: Some("loaded"),
            starts: N::Exact(5),
            restarts: N::Exact(4),
            crashes: vec![("exit-code", N::Exact(5))],
            restart_cause: Some("external"),
            end: End::GaveUp,
            gave_up: Some(false),
        };
        cases.push(c);
    }
    {
        let unit = "reload-mid-loop.service";
        let mut c = loop_case(
            "daemon-reload mid-loop",
            "a reload re-reads every unit (UnitRemoved/UnitNew storm) but the loop and its \
             counts carry on: one loop, nothing lost or doubled",
            unit,
            looping("exec /bin/false", ""),
            "exit-code",
        );
        c.steps = [
            vec![
                Step::Start(unit),
                Step::Wait(Cond::Runs(3), 20),
                Step::DaemonReload,
            ],
            stop_mid_loop(unit, 6),
        ]
        .concat();
        cases.push(c);
    }
    {
        let unit = "reexec-mid-loop.service";
        let mut c = loop_case(
            "daemon-reexec mid-loop",
            "systemd re-executes itself and re-announces every unit: a re-sent InvocationID is \
             not a new run. NRestarts may end one above runs - 1 (a reexec between scheduling \
             and running a restart schedules it again)",
            unit,
            looping("exec /bin/false", ""),
            "exit-code",
        );
        c.steps = [
            vec![
                Step::Start(unit),
                Step::Wait(Cond::Runs(3), 20),
                Step::DaemonReexec,
            ],
            stop_mid_loop(unit, 6),
        ]
        .concat();
        c.expect.n_restarts = Some(N::RunsBetween(-1, 0));
        cases.push(c);
    }

    // ---------------------------------------------------------------------------- unit kinds
    {
        let unit = "timer-job.service";
        let mut c = base(
            "timer: failing oneshot every second",
            "each run the timer starts follows the previous run's failure, so it is a restart \
             (external: the timer); failing every second is a crash loop. The timer is stopped \
             and the job stays failed, inside the window: still looping at the end",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                &format!("Type=oneshot\n{}", counted("exit 1")),
            ),
        );
        c.files.push((
            "timer-job.timer",
            "[Timer]\nOnActiveSec=1s\nOnUnitActiveSec=1s\nAccuracySec=10ms\n".to_string(),
        ));
        c.pin = vec![unit, "timer-job.timer"];
        c.steps = vec![
            Step::Start("timer-job.timer"),
            Step::Wait(Cond::Runs(5), 20),
            Step::Stop("timer-job.timer"),
            Step::Wait(Cond::Sub(unit, "failed"), 10),
            Step::Sleep(500),
        ];
        c.expect = Expect {
            runs: N::AtLeast(5),
            n_restarts: Some(N::Exact(0)),
            result: Some("exit-code"),
            state: Some("failed/failed"),
            exec_main: Some((1, 1)),
            load_state: Some("loaded"),
            starts: N::Runs(0),
            restarts: N::Runs(-1),
            crashes: vec![("exit-code", N::Runs(0))],
            restart_cause: Some("external"),
            end: End::Open,
            gave_up: Some(false),
        };
        cases.push(c);
    }
    {
        let unit = "crashsock.service";
        let mut c = base(
            "socket activation: the service crashes",
            "the connection stays queued, so the socket starts the failed service again at once \
             (restarts, external) until the service's start limit refuses the 6th start (\"Start \
             request repeated too quickly\", the socket fails with service-start-limit-hit): 5 \
             runs, 4 restarts. systemd gave up, so the loop ends gave_up. The refused start \
             leaves the already failed service's state as it was, so no transition has to carry \
             gave_up=true",
            unit,
            service("", &counted("exit 1")),
        );
        c.files.push((
            "crashsock.socket",
            "[Socket]\nListenStream=/run/crashsock.sock\n".to_string(),
        ));
        c.pin = vec![unit, "crashsock.socket"];
        c.steps = vec![
            Step::Start("crashsock.socket"),
            Step::Wait(Cond::Sub("crashsock.socket", "listening"), 10),
            Step::Connect("/run/crashsock.sock"),
            Step::Wait(Cond::Runs(5), 20),
            Step::Wait(Cond::Active("crashsock.socket", "failed"), 10),
            Step::Wait(Cond::Sub(unit, "failed"), 10),
            Step::Sleep(1000),
        ];
        c.expect = Expect {
            runs: N::Exact(5),
            n_restarts: Some(N::Exact(0)),
            // The refused start does not change Result (252): the journal says "Start request
            // repeated too quickly" and "Failed with result 'exit-code'".
            result: Some("exit-code"),
            state: Some("failed/failed"),
            exec_main: Some((1, 1)),
            load_state: Some("loaded"),
            starts: N::Exact(5),
            restarts: N::Exact(4),
            crashes: vec![("exit-code", N::Exact(5))],
            restart_cause: Some("external"),
            end: End::GaveUp,
            gave_up: None,
        };
        cases.push(c);
    }
    {
        let unit = "transient-crash.service";
        let mut c = base(
            "transient unit (systemd-run)",
            "a unit made over the bus loops like a unit file would. systemd unloads it once \
             stopped, so its properties cannot be read at the end: the truth is the counter",
            unit,
            String::new(),
        );
        c.files = vec![];
        c.pin = vec![];
        c.steps = [
            vec![Step::Inside(vec![
                "systemd-run",
                "--unit=transient-crash",
                "--property=Restart=always",
                "--property=RestartSec=500ms",
                "--property=StartLimitIntervalSec=0",
                "/bin/sh",
                "-c",
                "echo run >> @DIR@/runs; exec /bin/false",
            ])],
            stop_mid_loop(unit, 5),
        ]
        .concat();
        c.expect = Expect::stopped_loop("exit-code");
        c.expect.n_restarts = None;
        c.expect.state = None;
        c.expect.load_state = None;
        cases.push(c);
    }
    {
        let unit = "tpl@1.service";
        let mut c = base(
            "template instance tpl@1.service",
            "an instance is a unit of its own, named with its instance: same verdict as a plain \
             loop, under the full name",
            unit,
            String::new(),
        );
        c.files = vec![(
            "tpl@.service",
            service(
                "StartLimitIntervalSec=0\n",
                "ExecStart=/bin/sh -c 'echo %i >> @DIR@/runs; exec /bin/false'\n\
                 Restart=always\nRestartSec=500ms\n",
            ),
        )];
        c.steps = [vec![Step::Start(unit)], stop_mid_loop(unit, 5)].concat();
        c.expect = Expect::stopped_loop("exit-code");
        cases.push(c);
    }
    {
        let unit = "broken.service";
        let mut c = base(
            "unit file fails to load",
            "systemd refuses to start a unit whose file does not parse: nothing ran, so no \
             start, no crash, however often it is asked",
            unit,
            "[Unit]\nDescription=broken\n[Service\nExecStart=/bin/sh -c 'echo run >> @DIR@/runs'\n"
                .to_string(),
        );
        c.steps = vec![
            Step::Start(unit),
            Step::Sleep(300),
            Step::Start(unit),
            Step::Sleep(300),
            Step::Start(unit),
            Step::Sleep(1000),
        ];
        c.expect = Expect {
            runs: N::Exact(0),
            n_restarts: None,
            result: None,
            state: Some("inactive/dead"),
            exec_main: None,
            load_state: Some("error"),
            starts: N::Exact(0),
            restarts: N::Exact(0),
            crashes: vec![],
            restart_cause: None,
            end: End::NoLoop,
            gave_up: Some(false),
        };
        cases.push(c);
    }

    // ---------------------------------------------------------------------------- pace
    {
        let unit = "slow-loop.service";
        let mut c = base(
            "slow loop: RestartSec=3s, default start limit",
            "4 starts in 9 s never reach 5 in 10 s, so systemd would loop forever; crashwatch \
             flags it at the 3rd restart",
            unit,
            service(
                "",
                &format!(
                    "{}Restart=always\nRestartSec=3s\n",
                    counted("exec /bin/false")
                ),
            ),
        );
        c.steps = [vec![Step::Start(unit)], stop_mid_loop(unit, 4)].concat();
        c.expect = Expect::stopped_loop("exit-code");
        c.expect.runs = N::Exact(4);
        cases.push(c);
    }
    {
        let unit = "restart-steps.service";
        let mut c = loop_case(
            "RestartSteps=4, RestartMaxDelaySec=2s",
            "the delay grows from 100 ms to 2 s in 4 steps; the 3rd restart still comes within \
             the window, so it is flagged as any loop",
            unit,
            looping(
                "exec /bin/false",
                "RestartSec=100ms\nRestartSteps=4\nRestartMaxDelaySec=2s\n",
            ),
            "exit-code",
        );
        c.not_applicable = before_254;
        cases.push(c);
    }
    {
        let unit = "oom.service";
        let mut c = base(
            "OOM kill (MemoryMax=16M)",
            "the kernel kills it in its cgroup: Result oom-kill, one crash with that reason",
            unit,
            service(
                "",
                &format!(
                    "{}MemoryMax=16M\nMemorySwapMax=0\n",
                    counted("exec tail /dev/zero")
                ),
            ),
        );
        c.needs = Some(Needs::MemoryController);
        c.steps = start_and_fail(unit);
        c.expect = Expect::single_failure("oom-kill");
        c.expect.exec_main = Some((2, 9));
        cases.push(c);
    }
    {
        let unit = "recovers.service";
        let mut c = base(
            "crashes 3 times, then recovers",
            "runs 1-3 fail, run 4 stays up: flagged at the 3rd restart, and after a full window \
             (8 s) up without a restart the loop ends recovered",
            unit,
            service(
                "StartLimitIntervalSec=0\n",
                "ExecStart=/bin/sh -c 'echo run >> @DIR@/runs; \
                 [ $$(wc -l < @DIR@/runs) -ge 4 ] && exec sleep infinity; exit 1'\n\
                 Restart=on-failure\nRestartSec=500ms\n",
            ),
        );
        c.window_secs = 8;
        c.steps = vec![
            Step::Start(unit),
            Step::Wait(Cond::Runs(4), 15),
            Step::Wait(Cond::Sub(unit, "running"), 10),
            Step::Sleep(9000),
        ];
        c.expect = Expect {
            runs: N::Exact(4),
            n_restarts: Some(N::Exact(3)),
            result: Some("success"),
            state: Some("active/running"),
            exec_main: None,
            load_state: Some("loaded"),
            starts: N::Exact(4),
            restarts: N::Exact(3),
            crashes: vec![("exit-code", N::Exact(3))],
            restart_cause: Some("automatic"),
            end: End::Recovered,
            gave_up: Some(false),
        };
        cases.push(c);
    }
    cases
}
