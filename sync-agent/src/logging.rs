//! The agent binary's log subscriber: the operator's filter, written to a
//! writer (stderr), without the embedded broker's per-packet spans.
//!
//! rumqttd opens a span for every packet its router handles (each publish
//! with its topic, each client's incoming payload, each outgoing batch), at
//! error and info level, so the default filter (`info`) enables them; the
//! fmt layer then formats every span's fields into a new string when the
//! span is created, whether or not anything is logged inside it. Under
//! `xtask bench fabric` (1,000 members) perf found 28% of the router
//! thread's samples there, and the router is the one thread every message
//! of the fabric goes through. rumqttd's log lines stay; they lose the
//! span prefix (client id, topic) unless the filter names rumqttd (e.g.
//! `info,rumqttd=debug`), which brings the spans back for debugging the
//! broker.

use tracing::{Metadata, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::filter_fn, fmt::MakeWriter, layer::SubscriberExt as _,
};

/// Whether a callsite is one of the broker's spans the subscriber leaves
/// out (see the module doc).
fn broker_span(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target().starts_with("rumqttd")
}

/// The subscriber for `filter` (tracing env-filter syntax; `info` when it
/// does not parse), writing to `writer`.
pub fn subscriber<W>(filter: &str, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let env = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let broker_spans = filter.contains("rumqttd");
    tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_filter(env)
            .with_filter(filter_fn(move |m| broker_spans || !broker_span(m))),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    /// What the subscriber for `filter` writes for a broker event inside a
    /// broker span, and for our own event inside our own span.
    fn logged(filter: &str) -> String {
        let buffer = Buffer::default();
        tracing::subscriber::with_default(subscriber(filter, buffer.clone()), || {
            let span = tracing::error_span!(
                target: "rumqttd::router::routing",
                "publish",
                topic = "mlag-sync/x"
            );
            span.in_scope(|| {
                tracing::warn!(target: "rumqttd::router::routing", "unsolicited ack");
            });
            let ours = tracing::info_span!("fabric_round", round = 3);
            ours.in_scope(|| tracing::info!("setting applied"));
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        without_colours(&text)
    }

    /// `text` without its ANSI colour sequences (ESC [ ... m).
    fn without_colours(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('\u{1b}') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn broker_spans_are_left_out_but_its_events_and_our_spans_stay() {
        let text = logged("info");
        assert!(text.contains("unsolicited ack"), "{text}");
        assert!(!text.contains("publish{"), "{text}");
        assert!(!text.contains("mlag-sync/x"), "{text}");
        assert!(text.contains("fabric_round{round=3}"), "{text}");
        assert!(text.contains("setting applied"), "{text}");
    }

    #[test]
    fn naming_the_broker_in_the_filter_brings_its_spans_back() {
        let text = logged("info,rumqttd=debug");
        assert!(text.contains("publish{topic=\"mlag-sync/x\"}"), "{text}");
        assert!(text.contains("unsolicited ack"), "{text}");
    }

    #[test]
    fn a_filter_that_does_not_parse_means_info() {
        let text = logged("no such=level=at all");
        assert!(text.contains("setting applied"), "{text}");
    }
}
