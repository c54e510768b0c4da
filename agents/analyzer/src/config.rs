//! The analyzer's settings: flags and environment, validated once into [`AnalyzerConfig`].

use std::time::Duration;

use clap::Parser;
use hemostat_common::config::{CommonArgs, ConfigError, parse_duration};

use crate::llm::LlmConfig;

/// hemostat analyzer: a root cause and a safe verdict for every health alert, by rules and,
/// when configured, an LLM.
#[derive(Clone, Parser)]
#[command(name = "hemostat-analyzer", version, about)]
pub struct AnalyzerArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// At or above this confidence, a verdict with an action becomes `remediation_needed`;
    /// below it, `false_alarm`.
    #[arg(long, env = "ANALYZER_CONFIDENCE_THRESHOLD", default_value_t = 0.7)]
    pub confidence_threshold: f64,

    /// API key of the OpenAI-compatible endpoint. Setting it (or OPENAI_BASE_URL) turns the
    /// LLM on. Never logged.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,

    /// Base URL of an OpenAI-compatible API: OpenAI, Ollama (`http://ollama:11434/v1`), vLLM,
    /// LM Studio, gateways.
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,

    /// The model to ask.
    #[arg(long, env = "HEMOSTAT_LLM_MODEL", default_value = "gpt-4o-mini")]
    pub llm_model: String,

    /// The whole time budget of one LLM verdict, retries included; then rules decide.
    #[arg(long, env = "HEMOSTAT_LLM_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub llm_timeout: Duration,

    /// Most LLM requests per minute; over it, rules decide at once.
    #[arg(long, env = "HEMOSTAT_LLM_RATE", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub llm_rate: u32,

    /// Most LLM requests in flight (and, with an LLM, alerts analysed at once).
    #[arg(long, env = "HEMOSTAT_LLM_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub llm_concurrency: u16,

    /// Alerts analysed at once by rules alone (each is mostly waiting on Redis).
    /// With an LLM configured, HEMOSTAT_LLM_CONCURRENCY sets it instead.
    #[arg(long, env = "HEMOSTAT_ANALYZER_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Window for counting a container's recent remediations and alerts.
    #[arg(long, env = "HEMOSTAT_CRASH_LOOP_WINDOW", default_value = "30m", value_parser = parse_duration)]
    pub crash_loop_window: Duration,

    /// This many remediations (or restarts) or more in the window is a crash loop: escalate,
    /// do not restart.
    #[arg(long, env = "HEMOSTAT_CRASH_LOOP_BUDGET", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub crash_loop_budget: u32,

    /// How long a remediation counts as in flight for coalescing, unless its result arrives
    /// first.
    #[arg(long, env = "HEMOSTAT_COALESCE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub coalesce_window: Duration,
}

impl std::fmt::Debug for AnalyzerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalyzerArgs")
            .field("common", &self.common)
            .field(
                "openai_api_key",
                &self.openai_api_key.as_ref().map(|_| "***"),
            )
            .field("openai_base_url", &self.openai_base_url)
            .field("llm_model", &self.llm_model)
            .finish_non_exhaustive()
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct AnalyzerConfig {
    pub confidence_threshold: f64,
    pub llm: Option<LlmConfig>,
    pub crash_loop_window: Duration,
    pub crash_loop_budget: u32,
    pub coalesce_window: Duration,
    /// Alerts analysed at once.
    pub concurrency: usize,
}

impl AnalyzerArgs {
    pub fn validate(&self) -> Result<AnalyzerConfig, ConfigError> {
        self.common.validate()?;
        if !(self.confidence_threshold.is_finite()
            && (0.0..=1.0).contains(&self.confidence_threshold))
        {
            return Err(ConfigError {
                variable: "ANALYZER_CONFIDENCE_THRESHOLD",
                message: format!(
                    "{} is out of range; expected 0 to 1",
                    self.confidence_threshold
                ),
            });
        }
        let base_url = self
            .openai_base_url
            .clone()
            .filter(|u| !u.trim().is_empty());
        if let Some(url) = &base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError {
                variable: "OPENAI_BASE_URL",
                message: format!(
                    "{url:?} is not an http(s) URL; expected e.g. https://api.openai.com/v1"
                ),
            });
        }
        if self.llm_timeout < Duration::from_millis(100) {
            return Err(ConfigError {
                variable: "HEMOSTAT_LLM_TIMEOUT",
                message: format!(
                    "{:?} is too short; expected at least 100ms",
                    self.llm_timeout
                ),
            });
        }
        let key = self.openai_api_key.clone().filter(|k| !k.trim().is_empty());
        let llm = match (&base_url, key) {
            (None, None) => None,
            (base, key) => Some(LlmConfig {
                base_url: base
                    .clone()
                    .unwrap_or_else(|| "https://api.openai.com/v1".into()),
                // Local endpoints (Ollama, vLLM) take any key.
                api_key: key.unwrap_or_else(|| "none".into()),
                model: self.llm_model.clone(),
                timeout: self.llm_timeout,
                requests_per_minute: self.llm_rate,
                concurrency: usize::from(self.llm_concurrency),
            }),
        };
        Ok(AnalyzerConfig {
            confidence_threshold: self.confidence_threshold,
            llm,
            crash_loop_window: self.crash_loop_window,
            crash_loop_budget: self.crash_loop_budget,
            coalesce_window: self.coalesce_window.max(Duration::from_secs(1)),
            concurrency: usize::from(self.concurrency),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hemostat_common::config::parse_from;

    fn parse(args: &[&str]) -> Result<AnalyzerConfig, String> {
        let mut all = vec!["hemostat-analyzer"];
        all.extend_from_slice(args);
        parse_from::<AnalyzerArgs, _, _>(all)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn llm_is_on_only_when_configured() {
        assert!(parse(&[]).unwrap().llm.is_none() || std::env::var("OPENAI_API_KEY").is_ok());
        let c = parse(&["--openai-base-url", "http://127.0.0.1:1/v1"]).unwrap();
        assert_eq!(c.llm.unwrap().base_url, "http://127.0.0.1:1/v1");
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--confidence-threshold", "1.5"],
                "ANALYZER_CONFIDENCE_THRESHOLD",
            ),
            (&["--openai-base-url", "ftp://x"], "OPENAI_BASE_URL"),
            (&["--llm-timeout", "1ms"], "HEMOSTAT_LLM_TIMEOUT"),
            (&["--llm-rate", "0"], "HEMOSTAT_LLM_RATE"),
            (&["--concurrency", "0"], "HEMOSTAT_ANALYZER_CONCURRENCY"),
        ];
        for (args, var) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(var), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_key_is_never_in_debug_output() {
        let a =
            parse_from::<AnalyzerArgs, _, _>(["x", "--openai-api-key", "sk-verysecret"]).unwrap();
        assert!(!format!("{a:?}").contains("verysecret"));
    }
}
