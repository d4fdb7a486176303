//! Log setup. Logs go to stderr, as human-readable lines or JSON. Privacy by construction: whatever
//! `RUST_LOG` asks for, only moeserve's own events (which carry ids, counts and timings) pass below WARN;
//! dependencies (HTTP stack, tokenizers, templating) are capped at WARN so that no trace-level dump of a
//! library can ever carry request content.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Whether an event may be emitted at all: our own targets at any level, others only at WARN and above.
pub fn allowed(target: &str, level: &Level) -> bool {
    target == "moeserve" || target.starts_with("moeserve::") || *level <= Level::WARN
}

/// Installs the global subscriber. `default` is the filter used when `RUST_LOG` is unset.
pub fn init(format: LogFormat, default: &str) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let gate = filter_fn(|meta| allowed(meta.target(), meta.level()));
    let layer = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(env).with_filter(gate))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_capped_at_warn() {
        assert!(allowed("moeserve::access", &Level::TRACE));
        assert!(allowed("moeserve", &Level::DEBUG));
        assert!(!allowed("hyper::proto::h1", &Level::TRACE));
        assert!(!allowed("axum::rejection", &Level::TRACE));
        assert!(!allowed("moeservex", &Level::INFO));
        assert!(allowed("hyper", &Level::WARN));
        assert!(allowed("hyper", &Level::ERROR));
    }
}
