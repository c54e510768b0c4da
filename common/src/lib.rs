//! hemostat-common: the agent base every hemostat service is built on.
//!
//! - [`events`]: the wire protocol (envelope, payloads, channel and stream names).
//! - [`bus`]: publishing (pub/sub + stream, atomically), consumer groups, reclaim, dead letters.
//! - [`config`]: the settings every agent shares, and start-up errors that name the variable.
//! - [`agent`]: the [`agent::AgentContext`] handed to each agent's `run`, and its lifecycle.
//! - [`incidents`]: incidents (one episode of trouble, from alert to verified recovery), their
//!   timeline, postmortem and reliability numbers, as pure functions of the envelopes.
//! - [`maintenance`]: maintenance windows (scope, schedule, pause checks), pure functions of time.
//! - [`telemetry`], [`shutdown`], [`heartbeat`], [`metrics`], [`http`], [`redact`]: the rest of
//!   the plumbing, as plain functions.

pub mod acl;
pub mod agent;
pub mod ask;
pub mod bus;
pub mod config;
pub mod docker;
pub mod events;
pub mod heartbeat;
pub mod http;
pub mod incidents;
pub mod maintenance;
pub mod metrics;
pub mod redact;
pub mod scope;
pub mod scrub;
pub mod sentinel;
pub mod shutdown;
pub mod telemetry;
pub mod windows;
