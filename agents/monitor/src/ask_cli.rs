//! `hemostat-monitor ask <host> ...`: asks a host's monitor what is on its Docker engine and
//! prints the reply.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hemostat_common::ask::{self, Answer, AskReply, Query};
use hemostat_common::bus::Bus;
use hemostat_common::config::CommonArgs;
use hemostat_common::http::Health;
use hemostat_common::metrics::AgentMetrics;
use hemostat_common::redact;
use hemostat_common::shutdown::Shutdown;

/// Ask a host's monitor about the containers on its Docker engine.
#[derive(Debug, Parser)]
#[command(name = "hemostat-monitor ask")]
pub struct AskArgs {
    /// Redis to ask through: the agent's own settings (`REDIS_URL`, `REDIS_SENTINELS`...),
    /// so the command run in the monitor's container finds the master the monitor uses.
    #[command(flatten)]
    common: CommonArgs,
    /// How long to wait for the host's answer (at most 30s).
    #[arg(long, global = true, default_value = "5s", value_parser = hemostat_common::config::parse_duration)]
    timeout: Duration,
    /// Print the reply as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// The host id, as its monitor reports it (`HEMOSTAT_HOST_ID`).
    host: String,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Every container on the host.
    Containers,
    /// One container's state, health and labels.
    Inspect {
        /// A container name or id on that host.
        container: String,
    },
    /// The newest lines of a container's log, scrubbed of secrets.
    Logs {
        /// A container name or id on that host.
        container: String,
        /// How many lines (1 to 1000).
        #[arg(long, default_value_t = ask::TAIL_DEFAULT)]
        tail: u32,
        /// Only lines since then: a duration back (10m, 2h) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
}

/// Runs the command given after `ask`; exit 0 on an answer, 1 on an error answer, a timeout
/// or a Redis failure, 2 on bad arguments.
pub fn main() -> ExitCode {
    let args = match AskArgs::try_parse_from(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let query = match &args.what {
        What::Containers => Query::Containers,
        What::Inspect { container } => Query::Inspect {
            container: container.clone(),
        },
        What::Logs {
            container,
            tail,
            since,
        } => {
            let since = match since
                .as_deref()
                .map(|s| ask::parse_since(s, chrono::Utc::now()))
                .transpose()
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: --since: {e}");
                    return ExitCode::from(2);
                }
            };
            Query::Logs {
                container: container.clone(),
                tail: Some(ask::clamp_tail(Some(*tail))),
                since,
            }
        }
    };
    if let Err(e) = args.common.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let shutdown = Shutdown::new();
        let target = args.common.redis_target();
        let connect = Bus::connect_to(
            &target,
            1000,
            AgentMetrics::default(),
            Health::default(),
            &shutdown,
        );
        let bus = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                eprintln!(
                    "error: cannot connect to redis {}: {e}",
                    redact::url(&args.common.redis_url)
                );
                return ExitCode::from(1);
            }
            Err(_) => {
                eprintln!(
                    "error: redis {} did not answer within 5 s",
                    redact::url(&args.common.redis_url)
                );
                return ExitCode::from(1);
            }
        };
        match ask::ask(&bus, &args.host, query, args.timeout, "cli").await {
            Ok(reply) => print_reply(&reply, args.json),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}

fn print_reply(reply: &AskReply, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(reply) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: cannot print the reply: {e}");
                return ExitCode::from(1);
            }
        }
        return match reply.result {
            Answer::Error { .. } => ExitCode::from(1),
            _ => ExitCode::SUCCESS,
        };
    }
    match &reply.result {
        Answer::Containers { containers } => {
            println!(
                "{:<12}  {:<28}  {:<10}  {:<10}  {:<24}  STATUS",
                "ID", "NAME", "STATE", "HEALTH", "IMAGE"
            );
            for c in containers {
                println!(
                    "{:<12}  {:<28}  {:<10}  {:<10}  {:<24}  {}",
                    c.id.get(..12).unwrap_or(&c.id),
                    c.name,
                    c.state,
                    c.health.as_deref().unwrap_or("-"),
                    c.image,
                    c.status
                );
            }
        }
        Answer::Inspect(s) => {
            let st = &s.state;
            println!(
                "container   {} ({})",
                s.name,
                s.id.get(..12).unwrap_or(&s.id)
            );
            println!("image       {}", s.image);
            println!("state       {} (running: {})", st.status, st.running);
            println!("restarts    {}", st.restart_count);
            if let Some(code) = st.exit_code {
                println!("exit code   {code}");
            }
            println!("oom killed  {}", st.oom_killed);
            if let Some(h) = &st.health {
                println!(
                    "health      {} (failing streak {})",
                    h.status, h.failing_streak
                );
                if let Some(out) = &h.last_output {
                    println!("last check  {out}");
                }
            }
            if let Some(m) = st.memory_limit_bytes {
                println!("memory max  {m} bytes");
            }
            if let Some(t) = &st.started_at {
                println!("started     {t}");
            }
            if let Some(t) = &st.finished_at {
                println!("finished    {t}");
            }
            if let Some(e) = &st.error {
                println!("error       {e}");
            }
            for (k, v) in &s.labels {
                println!("label       {k}={v}");
            }
        }
        Answer::Logs {
            lines,
            dropped,
            truncated,
        } => {
            for l in lines {
                println!("{l}");
            }
            if *truncated {
                eprintln!("({dropped} older lines left out to keep the reply within 64 KiB)");
            }
        }
        Answer::Error { kind, message } => {
            eprintln!("error: host {} answered {kind:?}: {message}", reply.host);
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn it_parses_with_the_agents_redis_settings() {
        let args = AskArgs::try_parse_from([
            "ask",
            "--redis-url",
            "redis://:pw@127.0.0.1:6390/2",
            "--redis-sentinels",
            "127.0.0.1:26379,127.0.0.1:26380",
            "--redis-sentinel-master",
            "hemo",
            "host-a",
            "logs",
            "web",
            "--tail",
            "20",
        ])
        .unwrap();
        assert!(args.common.validate().is_ok());
        let target = args.common.redis_target();
        assert_eq!(target.url, "redis://:pw@127.0.0.1:6390/2");
        let sentinels = target.sentinels.unwrap();
        assert_eq!(sentinels.addrs, ["127.0.0.1:26379", "127.0.0.1:26380"]);
        assert_eq!(sentinels.master, "hemo");
        assert_eq!(args.host, "host-a");
        assert!(matches!(args.what, What::Logs { tail: 20, .. }));

        let bad = AskArgs::try_parse_from([
            "ask",
            "--redis-sentinels",
            "not a sentinel",
            "host-a",
            "containers",
        ])
        .unwrap();
        let err = bad.common.validate().unwrap_err().to_string();
        assert!(err.contains("REDIS_SENTINELS"), "{err}");
    }
}
