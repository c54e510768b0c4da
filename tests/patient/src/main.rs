//! hemostat-patient: a tiny program that misbehaves on request (exits, burns CPU, leaks memory,
//! turns unhealthy, flaps, logs, ignores SIGTERM); the test and demo container for hemostat.
//!
//! It is meant to run as PID 1 in a `FROM scratch` image, so it depends on nothing but std and
//! libc, parses its arguments by hand and keeps its health state in a plain file that the
//! `probe` subcommand reads (for a Docker health check in exec form: `["/patient","probe"]`).

mod sink;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default location of the health state file (the container root filesystem is writable).
const DEFAULT_HEALTH_FILE: &str = "/patient-health";
/// Environment variable overriding [`DEFAULT_HEALTH_FILE`] (handy for running on the host).
const HEALTH_FILE_ENV: &str = "PATIENT_HEALTH_FILE";
const DEFAULT_LOG_LINE: &str = "patient is alive";
const MIB: usize = 1024 * 1024;
const PAGE: usize = 4096;
/// The leak grows in this many steps per second.
const LEAK_STEPS_PER_SEC: f64 = 10.0;
/// Longest single sleep of the main loop when nothing is scheduled.
const IDLE_SLEEP: f64 = 3600.0;

const USAGE: &str = "\
usage: patient [run] [OPTIONS]
       patient probe [--say TEXT]
       patient sink [--listen ADDR]   record HTTP requests; GET /received shows them
       patient help

run (the default) misbehaves as asked; with no option it sleeps forever, healthy.
  --exit-code N             exit with code N (0-255) ...
  --after SECS              ... after SECS seconds (default 0)
  --cpu                     burn CPU forever
  --cpu-for SECS            burn CPU for SECS seconds, then idle
  --cpu-threads N           number of burning threads (default 1)
  --leak-mb-per-sec N       allocate and touch N MiB per second, never freed
  --leak-max-mb M           stop growing at M MiB (default unlimited)
  --unhealthy-after SECS    health turns \"fail\" SECS seconds after start
  --healthy-again-after SECS  health turns \"ok\" again SECS seconds after start
  --flap PERIOD             health alternates ok/fail every PERIOD seconds
  --log-every SECS          print a line to stdout every SECS seconds
  --log-line TEXT           the line to print (default \"patient is alive\")
  --log-lines-at-start TEXT print TEXT once at start (repeatable)
  --ignore-sigterm          do not exit on SIGTERM (docker stop must SIGKILL)

probe reads the health file and exits 1 if it says \"fail\", 0 otherwise; with --say it
also prints TEXT (the health check's output).
The health file is /patient-health, or $PATIENT_HEALTH_FILE if set.
Options also accept the --opt=VALUE form.";

/// The `run` options that take a value.
const VALUE_OPTIONS: &[&str] = &[
    "--exit-code",
    "--after",
    "--cpu-for",
    "--cpu-threads",
    "--leak-mb-per-sec",
    "--leak-max-mb",
    "--unhealthy-after",
    "--healthy-again-after",
    "--flap",
    "--log-every",
    "--log-line",
    "--log-lines-at-start",
];

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
enum Command {
    Run(Config),
    /// Reads the health file; `Some(text)`: prints `text` too (health output a test controls).
    Probe(Option<String>),
    Help,
    /// Record HTTP requests (an end-to-end test's Slack/webhook stand-in).
    Sink(String),
}

/// How `run` misbehaves. Times are seconds since start.
#[derive(Debug, Clone, PartialEq, Default)]
struct Config {
    /// Exit code and the time to exit at.
    exit: Option<(i32, f64)>,
    cpu: Option<CpuBurn>,
    leak: Option<Leak>,
    unhealthy_after: Option<f64>,
    healthy_again_after: Option<f64>,
    flap: Option<f64>,
    /// Log period and line.
    log: Option<(f64, String)>,
    log_lines_at_start: Vec<String>,
    ignore_sigterm: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct CpuBurn {
    /// `None` burns forever.
    seconds: Option<f64>,
    threads: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct Leak {
    mib_per_sec: f64,
    max_mib: Option<f64>,
}

/// Parses the arguments after the program name.
fn parse_args(args: &[String]) -> Result<Command, String> {
    let (sub, rest) = match args.first().map(String::as_str) {
        None => return Ok(Command::Run(Config::default())),
        Some("run") => ("run", &args[1..]),
        Some("probe") => ("probe", &args[1..]),
        Some("sink") => {
            return match &args[1..] {
                [] => Ok(Command::Sink("0.0.0.0:8080".into())),
                [flag, addr] if flag == "--listen" => Ok(Command::Sink(addr.clone())),
                _ => Err("usage: patient sink [--listen ADDR]".into()),
            };
        }
        Some("help" | "--help" | "-h") => return Ok(Command::Help),
        Some(a) if a.starts_with('-') => ("run", args),
        Some(a) => return Err(format!("unknown subcommand {a:?}")),
    };
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    if sub == "probe" {
        return match rest {
            [] => Ok(Command::Probe(None)),
            [flag, text] if flag == "--say" => Ok(Command::Probe(Some(text.clone()))),
            [a, ..] => Err(format!("probe takes only --say TEXT, got {a:?}")),
        };
    }
    parse_run(rest).map(Command::Run)
}

fn parse_run(args: &[String]) -> Result<Config, String> {
    let mut exit_code: Option<i32> = None;
    let mut after: Option<f64> = None;
    let mut cpu_forever = false;
    let mut cpu_for: Option<f64> = None;
    let mut cpu_threads: Option<usize> = None;
    let mut leak_rate: Option<f64> = None;
    let mut leak_max: Option<f64> = None;
    let mut log_every: Option<f64> = None;
    let mut log_line: Option<String> = None;
    let mut cfg = Config::default();

    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg, None),
        };
        // Flags without a value.
        match name {
            "--cpu" | "--ignore-sigterm" => {
                if inline.is_some() {
                    return Err(format!("{name} takes no value"));
                }
                if name == "--cpu" {
                    cpu_forever = true;
                } else {
                    cfg.ignore_sigterm = true;
                }
                continue;
            }
            _ => {}
        }
        if !name.starts_with("--") {
            return Err(format!("unexpected argument {arg:?}"));
        }
        if !VALUE_OPTIONS.contains(&name) {
            return Err(format!("unknown option {name}"));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = args
                    .get(i)
                    .ok_or_else(|| format!("{name} needs a value"))?
                    .clone();
                i += 1;
                v
            }
        };
        match name {
            "--exit-code" => exit_code = Some(parse_exit_code(name, &value)?),
            "--after" => after = Some(parse_secs(name, &value)?),
            "--cpu-for" => cpu_for = Some(parse_secs(name, &value)?),
            "--cpu-threads" => cpu_threads = Some(parse_count(name, &value, 1, 1024)?),
            "--leak-mb-per-sec" => leak_rate = Some(parse_positive(name, &value)?),
            "--leak-max-mb" => leak_max = Some(parse_positive(name, &value)?),
            "--unhealthy-after" => cfg.unhealthy_after = Some(parse_secs(name, &value)?),
            "--healthy-again-after" => cfg.healthy_again_after = Some(parse_secs(name, &value)?),
            "--flap" => cfg.flap = Some(parse_positive(name, &value)?),
            "--log-every" => log_every = Some(parse_positive(name, &value)?),
            "--log-line" => log_line = Some(value),
            "--log-lines-at-start" => cfg.log_lines_at_start.push(value),
            _ => return Err(format!("unknown option {name}")),
        }
    }

    match (exit_code, after) {
        (Some(code), after) => cfg.exit = Some((code, after.unwrap_or(0.0))),
        (None, Some(_)) => return Err("--after needs --exit-code".to_string()),
        (None, None) => {}
    }
    if cpu_forever && cpu_for.is_some() {
        return Err("--cpu and --cpu-for are exclusive".to_string());
    }
    if cpu_forever || cpu_for.is_some() {
        cfg.cpu = Some(CpuBurn {
            seconds: cpu_for,
            threads: cpu_threads.unwrap_or(1),
        });
    } else if cpu_threads.is_some() {
        return Err("--cpu-threads needs --cpu or --cpu-for".to_string());
    }
    match (leak_rate, leak_max) {
        (Some(mib_per_sec), max_mib) => {
            cfg.leak = Some(Leak {
                mib_per_sec,
                max_mib,
            })
        }
        (None, Some(_)) => return Err("--leak-max-mb needs --leak-mb-per-sec".to_string()),
        (None, None) => {}
    }
    match (cfg.unhealthy_after, cfg.healthy_again_after) {
        (None, Some(_)) => {
            return Err("--healthy-again-after needs --unhealthy-after".to_string());
        }
        (Some(u), Some(h)) if h <= u => {
            return Err(format!(
                "--healthy-again-after ({h}) must be later than --unhealthy-after ({u})"
            ));
        }
        _ => {}
    }
    match (log_every, log_line) {
        (Some(every), line) => {
            cfg.log = Some((every, line.unwrap_or_else(|| DEFAULT_LOG_LINE.to_string())));
        }
        (None, Some(_)) => return Err("--log-line needs --log-every".to_string()),
        (None, None) => {}
    }
    Ok(cfg)
}

fn parse_f64(name: &str, value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{name}: {value:?} is not a number")),
    }
}

/// A duration in seconds: finite and not negative.
fn parse_secs(name: &str, value: &str) -> Result<f64, String> {
    let v = parse_f64(name, value)?;
    if v < 0.0 {
        return Err(format!("{name}: {value:?} is negative"));
    }
    Ok(v)
}

/// A finite number greater than zero.
fn parse_positive(name: &str, value: &str) -> Result<f64, String> {
    let v = parse_f64(name, value)?;
    if v <= 0.0 {
        return Err(format!("{name}: {value:?} must be greater than 0"));
    }
    Ok(v)
}

fn parse_exit_code(name: &str, value: &str) -> Result<i32, String> {
    match value.trim().parse::<i32>() {
        Ok(v) if (0..=255).contains(&v) => Ok(v),
        _ => Err(format!("{name}: {value:?} is not an exit code (0-255)")),
    }
}

fn parse_count(name: &str, value: &str, min: usize, max: usize) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!(
            "{name}: {value:?} is not a whole number in {min}-{max}"
        )),
    }
}

/// Whether the patient is healthy `t` seconds after start.
fn healthy_at(cfg: &Config, t: f64) -> bool {
    let sick = cfg
        .unhealthy_after
        .is_some_and(|u| t >= u && cfg.healthy_again_after.is_none_or(|h| t < h));
    // Flapping starts healthy and fails during every odd period.
    let flapping = cfg.flap.is_some_and(|p| (t / p).floor() as u64 % 2 == 1);
    !(sick || flapping)
}

/// The next time after `t` at which [`healthy_at`] may change, if any.
fn next_health_change(cfg: &Config, t: f64) -> Option<f64> {
    let flap = cfg.flap.map(|p| ((t / p).floor() + 1.0) * p);
    [cfg.unhealthy_after, cfg.healthy_again_after, flap]
        .into_iter()
        .flatten()
        .filter(|&x| x > t)
        .reduce(f64::min)
}

fn health_file() -> PathBuf {
    match std::env::var_os(HEALTH_FILE_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_HEALTH_FILE),
    }
}

/// Writes the health state atomically: a temporary file next to `path`, then a rename.
fn write_health(path: &Path, healthy: bool) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, if healthy { "ok\n" } else { "fail\n" })?;
    std::fs::rename(&tmp, path)
}

/// What `probe` found: the exit code and the message to print.
fn probe(path: &Path) -> (i32, String) {
    match std::fs::read_to_string(path) {
        Ok(s) => match s.trim() {
            "fail" => (
                1,
                "patient probe: failing (health file says fail)".to_string(),
            ),
            "ok" => (0, "patient probe: ok".to_string()),
            other => (
                1,
                format!("patient probe: failing (unexpected health file content {other:?})"),
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (0, "patient probe: no health file yet".to_string())
        }
        Err(e) => (
            1,
            format!(
                "patient probe: failing (cannot read {}: {e})",
                path.display()
            ),
        ),
    }
}

extern "C" fn exit_on_signal(_sig: libc::c_int) {
    // Only async-signal-safe calls here.
    unsafe { libc::_exit(0) };
}

/// PID 1 gets no default signal actions, so without a handler `docker stop` waits for SIGKILL.
fn install_signal_handlers(ignore_sigterm: bool) {
    let handler = exit_on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, handler);
        let term = if ignore_sigterm {
            libc::SIG_IGN
        } else {
            handler
        };
        libc::signal(libc::SIGTERM, term);
    }
}

fn describe(cfg: &Config, health_path: &Path) -> String {
    let mut s = format!(
        "hemostat-patient: pid={} health_file={}",
        std::process::id(),
        health_path.display()
    );
    let _ = match cfg.exit {
        Some((code, after)) => write!(s, " exit={code}@{after}s"),
        None => write!(s, " exit=never"),
    };
    let _ = match &cfg.cpu {
        Some(CpuBurn {
            seconds: Some(secs),
            threads,
        }) => write!(s, " cpu={threads}x{secs}s"),
        Some(CpuBurn {
            seconds: None,
            threads,
        }) => write!(s, " cpu={threads}xforever"),
        None => write!(s, " cpu=off"),
    };
    let _ = match &cfg.leak {
        Some(Leak {
            mib_per_sec,
            max_mib: Some(max),
        }) => write!(s, " leak={mib_per_sec}MiB/s(max {max}MiB)"),
        Some(Leak {
            mib_per_sec,
            max_mib: None,
        }) => write!(s, " leak={mib_per_sec}MiB/s(unlimited)"),
        None => write!(s, " leak=off"),
    };
    let _ = match (cfg.unhealthy_after, cfg.healthy_again_after) {
        (Some(u), Some(h)) => write!(s, " unhealthy={u}s..{h}s"),
        (Some(u), None) => write!(s, " unhealthy={u}s.."),
        _ => write!(s, " unhealthy=never"),
    };
    let _ = match cfg.flap {
        Some(p) => write!(s, " flap={p}s"),
        None => write!(s, " flap=off"),
    };
    let _ = match &cfg.log {
        Some((every, line)) => write!(s, " log={line:?}/{every}s"),
        None => write!(s, " log=off"),
    };
    let _ = write!(
        s,
        " sigterm={}",
        if cfg.ignore_sigterm {
            "ignored"
        } else {
            "exit"
        }
    );
    s
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn spawn_cpu_burners(burn: &CpuBurn, start: Instant) {
    for _ in 0..burn.threads {
        let seconds = burn.seconds;
        std::thread::spawn(move || {
            let mut x: u64 = 0;
            loop {
                for _ in 0..1_000_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                if seconds.is_some_and(|s| start.elapsed().as_secs_f64() >= s) {
                    return;
                }
            }
        });
    }
}

fn spawn_leaker(leak: &Leak) {
    let step = ((leak.mib_per_sec / LEAK_STEPS_PER_SEC) * MIB as f64).max(1.0) as usize;
    let max = leak.max_mib.map(|m| (m * MIB as f64) as usize);
    std::thread::spawn(move || {
        let mut kept: Vec<Vec<u8>> = Vec::new();
        let mut total: usize = 0;
        let period = Duration::from_secs_f64(1.0 / LEAK_STEPS_PER_SEC);
        let mut next = Instant::now();
        loop {
            let size = match max {
                Some(m) => step.min(m.saturating_sub(total)),
                None => step,
            };
            if size == 0 {
                // Reached the cap: keep holding the memory, forever.
                loop {
                    std::thread::sleep(Duration::from_secs_f64(IDLE_SLEEP));
                    std::hint::black_box(&kept);
                }
            }
            let mut chunk = vec![0u8; size];
            // Touch every page so it is resident, not just reserved.
            for i in (0..size).step_by(PAGE) {
                unsafe { std::ptr::write_volatile(chunk.as_mut_ptr().add(i), 1) };
            }
            kept.push(chunk);
            total += size;
            next += period;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
    });
}

fn run(cfg: Config) -> ! {
    let start = Instant::now();
    install_signal_handlers(cfg.ignore_sigterm);
    let health_path = health_file();
    let mut healthy = true;
    if let Err(e) = write_health(&health_path, healthy) {
        eprintln!(
            "hemostat-patient: cannot write {}: {e}",
            health_path.display()
        );
    }
    say(&describe(&cfg, &health_path));
    for line in &cfg.log_lines_at_start {
        say(line);
    }
    if let Some(burn) = &cfg.cpu {
        spawn_cpu_burners(burn, start);
    }
    if let Some(leak) = &cfg.leak {
        spawn_leaker(leak);
    }

    let mut next_log = cfg.log.as_ref().map(|(every, _)| *every);
    loop {
        let t = start.elapsed().as_secs_f64();
        if let Some((code, after)) = cfg.exit
            && t >= after
        {
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
        let now_healthy = healthy_at(&cfg, t);
        if now_healthy != healthy {
            healthy = now_healthy;
            if let Err(e) = write_health(&health_path, healthy) {
                eprintln!(
                    "hemostat-patient: cannot write {}: {e}",
                    health_path.display()
                );
            }
        }
        if let (Some((every, line)), Some(due)) = (&cfg.log, next_log)
            && t >= due
        {
            say(line);
            // Keep the cadence, but do not burst after a long stall.
            let next = due + every;
            next_log = Some(if next <= t { t + every } else { next });
        }
        let wake = [
            cfg.exit.map(|(_, a)| a),
            next_log,
            next_health_change(&cfg, t),
        ]
        .into_iter()
        .flatten()
        .reduce(f64::min)
        .unwrap_or(t + IDLE_SLEEP);
        let sleep = (wake - t).clamp(0.0, IDLE_SLEEP);
        std::thread::sleep(Duration::from_secs_f64(sleep + 0.000_5));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Ok(Command::Run(cfg)) => run(cfg),
        Ok(Command::Probe(text)) => {
            let (code, msg) = probe(&health_file());
            say(&msg);
            if let Some(t) = text {
                say(&t);
            }
            std::process::exit(code);
        }
        Ok(Command::Help) => say(USAGE),
        Ok(Command::Sink(addr)) => sink::serve(&addr),
        Err(e) => {
            eprintln!("hemostat-patient: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    fn run_cfg(s: &[&str]) -> Config {
        match parse_args(&args(s)) {
            Ok(Command::Run(cfg)) => cfg,
            other => panic!("expected run config for {s:?}, got {other:?}"),
        }
    }

    fn parse_err(s: &[&str]) -> String {
        match parse_args(&args(s)) {
            Err(e) => e,
            Ok(c) => panic!("expected an error for {s:?}, got {c:?}"),
        }
    }

    /// A fresh, unique path under the system temp dir (removed if it exists).
    fn temp_path(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "hemostat-patient-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn no_arguments_and_bare_run_sleep_healthy() {
        assert_eq!(run_cfg(&[]), Config::default());
        assert_eq!(run_cfg(&["run"]), Config::default());
        let cfg = Config::default();
        assert!(healthy_at(&cfg, 0.0));
        assert!(healthy_at(&cfg, 1e6));
        assert_eq!(next_health_change(&cfg, 0.0), None);
    }

    #[test]
    fn subcommands() {
        assert_eq!(parse_args(&args(&["probe"])), Ok(Command::Probe(None)));
        assert_eq!(
            parse_args(&args(&["probe", "--say", "db <!channel>"])),
            Ok(Command::Probe(Some("db <!channel>".into())))
        );
        assert_eq!(parse_args(&args(&["help"])), Ok(Command::Help));
        assert_eq!(parse_args(&args(&["--help"])), Ok(Command::Help));
        assert_eq!(
            parse_args(&args(&["run", "--cpu", "-h"])),
            Ok(Command::Help)
        );
        assert!(parse_err(&["probe", "--x"]).contains("probe takes only --say TEXT"));
        assert!(parse_err(&["explode"]).contains("unknown subcommand"));
    }

    #[test]
    fn run_is_the_default_subcommand() {
        assert_eq!(
            run_cfg(&["--exit-code", "3"]),
            run_cfg(&["run", "--exit-code", "3"])
        );
    }

    #[test]
    fn exit_code_and_after() {
        assert_eq!(
            run_cfg(&["run", "--exit-code", "3", "--after", "0.5"]).exit,
            Some((3, 0.5))
        );
        assert_eq!(run_cfg(&["--exit-code", "0"]).exit, Some((0, 0.0)));
        assert_eq!(
            run_cfg(&["--after=2", "--exit-code=255"]).exit,
            Some((255, 2.0))
        );
        assert!(parse_err(&["--after", "1"]).contains("--after needs --exit-code"));
        assert!(parse_err(&["--exit-code", "256"]).contains("not an exit code"));
        assert!(parse_err(&["--exit-code", "-1"]).contains("not an exit code"));
        assert!(parse_err(&["--exit-code", "x"]).contains("not an exit code"));
        assert!(parse_err(&["--exit-code"]).contains("needs a value"));
    }

    #[test]
    fn bad_numbers_are_errors() {
        assert!(parse_err(&["--exit-code", "1", "--after", "soon"]).contains("not a number"));
        assert!(parse_err(&["--exit-code", "1", "--after", "-1"]).contains("negative"));
        assert!(parse_err(&["--cpu-for", "NaN"]).contains("not a number"));
        assert!(parse_err(&["--cpu-for", "inf"]).contains("not a number"));
        assert!(parse_err(&["--flap", "0"]).contains("greater than 0"));
        assert!(parse_err(&["--log-every", "0"]).contains("greater than 0"));
        assert!(parse_err(&["--leak-mb-per-sec", "-5"]).contains("greater than 0"));
        assert!(parse_err(&["--cpu", "--cpu-threads", "0"]).contains("whole number"));
        assert!(parse_err(&["--cpu", "--cpu-threads", "1.5"]).contains("whole number"));
    }

    #[test]
    fn cpu_options() {
        assert_eq!(
            run_cfg(&["--cpu"]).cpu,
            Some(CpuBurn {
                seconds: None,
                threads: 1
            })
        );
        assert_eq!(
            run_cfg(&["--cpu-for", "2.5", "--cpu-threads", "2"]).cpu,
            Some(CpuBurn {
                seconds: Some(2.5),
                threads: 2
            })
        );
        assert!(parse_err(&["--cpu", "--cpu-for", "1"]).contains("exclusive"));
        assert!(parse_err(&["--cpu-threads", "2"]).contains("needs --cpu"));
        assert!(parse_err(&["--cpu=yes"]).contains("takes no value"));
    }

    #[test]
    fn leak_options() {
        assert_eq!(
            run_cfg(&["--leak-mb-per-sec", "20"]).leak,
            Some(Leak {
                mib_per_sec: 20.0,
                max_mib: None
            })
        );
        assert_eq!(
            run_cfg(&["--leak-mb-per-sec", "5", "--leak-max-mb", "100"]).leak,
            Some(Leak {
                mib_per_sec: 5.0,
                max_mib: Some(100.0)
            })
        );
        assert!(parse_err(&["--leak-max-mb", "100"]).contains("needs --leak-mb-per-sec"));
    }

    #[test]
    fn log_options() {
        let cfg = run_cfg(&[
            "--log-every",
            "0.2",
            "--log-lines-at-start",
            "ERROR one",
            "--log-lines-at-start=two",
        ]);
        assert_eq!(cfg.log, Some((0.2, DEFAULT_LOG_LINE.to_string())));
        assert_eq!(cfg.log_lines_at_start, vec!["ERROR one", "two"]);
        let cfg = run_cfg(&["--log-line", "hello world", "--log-every", "1"]);
        assert_eq!(cfg.log, Some((1.0, "hello world".to_string())));
        assert!(parse_err(&["--log-line", "x"]).contains("needs --log-every"));
    }

    #[test]
    fn everything_combines() {
        let cfg = run_cfg(&[
            "run",
            "--exit-code",
            "7",
            "--after",
            "30",
            "--cpu-for",
            "1",
            "--leak-mb-per-sec",
            "1",
            "--unhealthy-after",
            "2",
            "--healthy-again-after",
            "4",
            "--flap",
            "10",
            "--log-every",
            "1",
            "--ignore-sigterm",
        ]);
        assert_eq!(cfg.exit, Some((7, 30.0)));
        assert!(cfg.cpu.is_some());
        assert!(cfg.leak.is_some());
        assert_eq!(cfg.unhealthy_after, Some(2.0));
        assert_eq!(cfg.healthy_again_after, Some(4.0));
        assert_eq!(cfg.flap, Some(10.0));
        assert!(cfg.ignore_sigterm);
        let line = describe(&cfg, Path::new("/h"));
        assert!(line.contains("exit=7@30s"), "{line}");
        assert!(line.contains("sigterm=ignored"), "{line}");
    }

    #[test]
    fn unknown_and_stray_arguments_are_errors() {
        assert!(parse_err(&["--frobnicate", "1"]).contains("unknown option --frobnicate"));
        assert!(parse_err(&["--frobnicate"]).contains("unknown option --frobnicate"));
        assert!(parse_err(&["run", "stray"]).contains("unexpected argument"));
        assert!(parse_err(&["run", "-x"]).contains("unexpected argument"));
    }

    #[test]
    fn health_window() {
        let cfg = run_cfg(&["--unhealthy-after", "1", "--healthy-again-after", "3"]);
        assert!(healthy_at(&cfg, 0.0));
        assert!(healthy_at(&cfg, 0.99));
        assert!(!healthy_at(&cfg, 1.0));
        assert!(!healthy_at(&cfg, 2.9));
        assert!(healthy_at(&cfg, 3.0));
        assert!(healthy_at(&cfg, 100.0));
        assert_eq!(next_health_change(&cfg, 0.0), Some(1.0));
        assert_eq!(next_health_change(&cfg, 1.0), Some(3.0));
        assert_eq!(next_health_change(&cfg, 3.0), None);

        let forever = run_cfg(&["--unhealthy-after", "1"]);
        assert!(!healthy_at(&forever, 1e6));

        assert!(parse_err(&["--healthy-again-after", "3"]).contains("needs --unhealthy-after"));
        assert!(
            parse_err(&["--unhealthy-after", "3", "--healthy-again-after", "2"])
                .contains("must be later")
        );
    }

    #[test]
    fn flapping() {
        let cfg = run_cfg(&["--flap", "2"]);
        assert!(healthy_at(&cfg, 0.0));
        assert!(healthy_at(&cfg, 1.9));
        assert!(!healthy_at(&cfg, 2.0));
        assert!(!healthy_at(&cfg, 3.9));
        assert!(healthy_at(&cfg, 4.0));
        assert!(!healthy_at(&cfg, 6.5));
        assert_eq!(next_health_change(&cfg, 0.5), Some(2.0));
        assert_eq!(next_health_change(&cfg, 2.0), Some(4.0));
    }

    #[test]
    fn probe_reads_the_health_file() {
        let path = temp_path("probe");
        let (code, msg) = probe(&path);
        assert_eq!(
            (code, msg.as_str()),
            (0, "patient probe: no health file yet")
        );

        write_health(&path, true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), "ok");
        let (code, msg) = probe(&path);
        assert_eq!((code, msg.as_str()), (0, "patient probe: ok"));

        write_health(&path, false).unwrap();
        let (code, msg) = probe(&path);
        assert_eq!(
            (code, msg.as_str()),
            (1, "patient probe: failing (health file says fail)")
        );

        std::fs::write(&path, "  fail \n").unwrap();
        assert_eq!(probe(&path).0, 1);
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(probe(&path).0, 1);

        // The atomic write leaves no temporary file behind.
        write_health(&path, true).unwrap();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        assert!(!Path::new(&tmp).exists());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn probe_fails_on_unreadable_health_file() {
        // A directory cannot be read as a file.
        let dir = temp_path("probe-dir");
        std::fs::create_dir_all(&dir).unwrap();
        let (code, msg) = probe(&dir);
        assert_eq!(code, 1);
        assert!(msg.contains("cannot read"), "{msg}");
        std::fs::remove_dir(&dir).unwrap();
    }
}
