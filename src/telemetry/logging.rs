//! The process log: one JSON object a line, the same for `gatehouse run` and the demo.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Directives put before the user's (a user directive for the same target replaces one):
/// pingora's own lines at `warn` only, since the gateway writes one line per event with
/// its request id and route (pingora's per-try `Fail to proxy` warning is suppressed in
/// `proxy`). `pingora_core::connectors` is off: its two lines (`failed to acquire
/// reusable stream`, at ERROR, and `Unexpected data read in idle connection`) are a pool
/// race and an idle peer's stray bytes, after which pingora opens a new connection; the
/// request goes on unharmed. `GATEHOUSE_LOG=pingora_core::connectors=debug` shows them.
pub const PINGORA_DEFAULTS: &str =
    "pingora_core=warn,pingora_proxy=warn,pingora_core::connectors=off";

/// The filter for `spec` (an `EnvFilter` directive list such as `GATEHOUSE_LOG`'s; `None`
/// or unparsable: `default`), after [`PINGORA_DEFAULTS`].
pub fn filter(spec: Option<&str>, default: &str) -> EnvFilter {
    let user = spec
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or(default);
    EnvFilter::try_new(format!("{PINGORA_DEFAULTS},{user}"))
        .unwrap_or_else(|_| EnvFilter::new(PINGORA_DEFAULTS))
}

/// Installs the process log on stdout: [`JsonLines`] through [`filter`]; `log` crate
/// records (pingora's) are bridged in. A second call does nothing (the first one stays).
pub fn init(spec: Option<&str>, default: &str) {
    let _ = tracing_subscriber::fmt()
        .event_format(JsonLines)
        .with_env_filter(filter(spec, default))
        .try_init();
}

/// One JSON object per event: `timestamp` (RFC 3339, UTC), `level`, `fields` (the
/// event's fields in order, `message` among them) and `target`; no colour. Unlike
/// tracing-subscriber's own JSON format, a record bridged from the `log` crate keeps its
/// target (`log.target`) but not its `log.file`, `log.line` and `log.module_path`: source
/// paths of the machine that built pingora, of no use to an operator.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let target = fields.log_target.as_deref().unwrap_or(meta.target());
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        line.push_str(&json_str(&timestamp));
        line.push_str(",\"level\":");
        line.push_str(&json_str(meta.level().as_str()));
        line.push_str(",\"fields\":{");
        for (i, (name, value)) in fields.values.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            let _ = write!(line, "{}:{value}", json_str(name));
        }
        line.push_str("},\"target\":");
        line.push_str(&json_str(target));
        line.push('}');
        writeln!(writer, "{line}")
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// An event's fields as JSON values, in order; the `log` bridge's metadata fields dropped
/// (its target kept aside).
#[derive(Default)]
struct Fields {
    values: Vec<(&'static str, serde_json::Value)>,
    log_target: Option<String>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: serde_json::Value) {
        let name = field.name();
        if name == "log.target" {
            self.log_target = value.as_str().map(str::to_owned);
        } else if !name.starts_with("log.") {
            self.values
                .push((name.strip_prefix("r#").unwrap_or(name), value));
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(spec: &str, emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_env_filter(filter(Some(spec), "info"))
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains('\u{1b}'), "no ANSI escapes: {text}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn events_are_json_lines_with_their_fields_in_order() {
        let got = lines("info", || {
            tracing::info!(target: "access", status = 200u16, duration_ms = 1.5, path = %"/a", "done");
        });
        assert_eq!(got.len(), 1);
        let line = &got[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "access");
        assert_eq!(line["fields"]["status"], 200);
        assert_eq!(line["fields"]["duration_ms"], 1.5);
        assert_eq!(line["fields"]["path"], "/a");
        assert_eq!(line["fields"]["message"], "done");
        let keys: Vec<&String> = line["fields"].as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4);
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    /// What the `log` bridge makes of a pingora record: its target kept, source paths
    /// dropped.
    #[test]
    fn bridged_log_records_lose_their_source_paths() {
        let got = lines("info", || {
            tracing::warn!(
                log.target = "pingora_core::server",
                log.module_path = "pingora_core::server",
                log.file = "/home/builder/pingora-core/src/server/mod.rs",
                log.line = 643u64,
                "Server starting"
            );
        });
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["target"], "pingora_core::server");
        assert_eq!(
            got[0]["fields"],
            serde_json::json!({"message": "Server starting"})
        );
    }

    #[test]
    fn pingora_connection_pool_noise_is_off_unless_asked_for() {
        let emit = || {
            tracing::error!(target: "pingora_core::connectors", "failed to acquire reusable stream");
            tracing::info!(target: "pingora_core::server", "Server starting");
            tracing::warn!(target: "pingora_proxy", "Fail to proxy");
            tracing::info!(target: "gatehouse::app", "gatehouse starting");
        };
        let targets = |spec| -> Vec<String> {
            lines(spec, emit)
                .iter()
                .map(|l| l["target"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(targets("info"), ["pingora_proxy", "gatehouse::app"]);
        assert_eq!(targets("debug"), ["pingora_proxy", "gatehouse::app"]);
        assert_eq!(
            targets("info,pingora_core=info"),
            ["pingora_core::server", "pingora_proxy", "gatehouse::app"]
        );
        assert_eq!(
            targets("info,pingora_core::connectors=error"),
            [
                "pingora_core::connectors",
                "pingora_proxy",
                "gatehouse::app"
            ]
        );
    }
}
