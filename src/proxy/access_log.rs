//! The access-log line of a finished request, in the configured format (JSON with a chosen
//! field list, or the Common/Combined Log Format), written to stdout.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::model::{AccessLogConfig, AccessLogField, AccessLogFormat};

/// What one access-log line can say about a request. Text fields are empty when unknown
/// (a request the parser refused has no method or path).
#[derive(Debug, Clone, Default)]
pub struct AccessRecord<'a> {
    /// Request id.
    pub request_id: &'a str,
    /// Trace id, 32 hex digits; empty without tracing.
    pub trace_id: &'a str,
    /// Method.
    pub method: &'a str,
    /// Normalized path, no query.
    pub path: &'a str,
    /// The request target as received (origin form), for the text formats' request line.
    pub target: &'a str,
    /// Query, without `?`.
    pub query: &'a str,
    /// `HTTP/1.1`, `HTTP/1.0`.
    pub protocol: &'a str,
    /// Host header as received.
    pub host: &'a str,
    /// Route name.
    pub route: &'a str,
    /// Upstream name.
    pub upstream: &'a str,
    /// Endpoint of the last try.
    pub endpoint: &'a str,
    /// Status sent (0: none was).
    pub status: u16,
    /// `gateway` or `upstream`.
    pub source: &'a str,
    /// Gateway error code.
    pub error: &'a str,
    /// The parser's reason for a refused request.
    pub detail: Option<String>,
    /// Upstream tries.
    pub tries: u32,
    /// Whole request.
    pub duration: Duration,
    /// Time in filters.
    pub filter_time: Duration,
    /// Request body bytes read.
    pub bytes_in: usize,
    /// Response body bytes sent.
    pub bytes_out: usize,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The TCP peer's address.
    pub peer_ip: Option<IpAddr>,
    /// `User-Agent`.
    pub user_agent: &'a str,
    /// `Referer`.
    pub referer: &'a str,
    /// Why the request's tunnel ended and how long it lasted, for an upgraded connection.
    pub tunnel: Option<(&'static str, Duration)>,
}

/// Writes `rec`'s line to stdout in `cfg`'s format, as one write (lines from several
/// threads never interleave). A failed write to stdout is dropped: the request is over.
pub fn write(cfg: &AccessLogConfig, rec: &AccessRecord<'_>) {
    let line = render(cfg, rec, OffsetDateTime::now_utc());
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

/// `rec`'s line (with its `\n`) in `cfg`'s format, stamped `now`.
pub fn render(cfg: &AccessLogConfig, rec: &AccessRecord<'_>, now: OffsetDateTime) -> String {
    match cfg.format {
        AccessLogFormat::Json => json(
            cfg.fields.as_deref().unwrap_or(AccessLogField::DEFAULT),
            rec,
            now,
        ),
        AccessLogFormat::Common => clf(rec, now, false),
        AccessLogFormat::Combined => clf(rec, now, true),
    }
}

/// The envelope every other log line has (`timestamp`, `level`, `fields`, `target`), so
/// one parser reads the whole stream.
fn json(fields: &[AccessLogField], rec: &AccessRecord<'_>, now: OffsetDateTime) -> String {
    use serde_json::Value;
    let ip = |a: Option<IpAddr>| Value::from(a.map(|i| i.to_string()).unwrap_or_default());
    let mut out = String::with_capacity(384);
    out.push_str("{\"timestamp\":\"");
    push_rfc3339(&mut out, now);
    out.push_str("\",\"level\":\"INFO\",\"fields\":{");
    let mut first = true;
    for f in fields {
        let value = match f {
            AccessLogField::RequestId => Value::from(rec.request_id),
            AccessLogField::TraceId if rec.trace_id.is_empty() => continue,
            AccessLogField::TraceId => Value::from(rec.trace_id),
            AccessLogField::Method => Value::from(rec.method),
            AccessLogField::Path => Value::from(rec.path),
            AccessLogField::Query => Value::from(rec.query),
            AccessLogField::Protocol => Value::from(rec.protocol),
            AccessLogField::Host => Value::from(rec.host),
            AccessLogField::Route => Value::from(rec.route),
            AccessLogField::Upstream => Value::from(rec.upstream),
            AccessLogField::Endpoint => Value::from(rec.endpoint),
            AccessLogField::Status => Value::from(rec.status),
            AccessLogField::Source => Value::from(rec.source),
            AccessLogField::Error => Value::from(rec.error),
            AccessLogField::Detail => match &rec.detail {
                Some(d) => Value::from(d.as_str()),
                None => continue,
            },
            AccessLogField::Tries => Value::from(rec.tries),
            AccessLogField::DurationMs => Value::from(millis(rec.duration)),
            AccessLogField::FilterMs => Value::from(millis(rec.filter_time)),
            AccessLogField::BytesIn => Value::from(rec.bytes_in),
            AccessLogField::BytesOut => Value::from(rec.bytes_out),
            AccessLogField::ClientIp => ip(rec.client_ip),
            AccessLogField::PeerIp => ip(rec.peer_ip),
            AccessLogField::UserAgent => Value::from(rec.user_agent),
            AccessLogField::Referer => Value::from(rec.referer),
            AccessLogField::TunnelEnd => match rec.tunnel {
                Some((end, _)) => Value::from(end),
                None => continue,
            },
            AccessLogField::TunnelMs => match rec.tunnel {
                Some((_, d)) => Value::from(millis(d)),
                None => continue,
            },
        };
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "\"{}\":{value}", field_name(*f));
    }
    out.push_str("},\"target\":\"access\"}\n");
    out
}

/// The JSON key of `f`: its name in the config.
fn field_name(f: AccessLogField) -> &'static str {
    match f {
        AccessLogField::RequestId => "request_id",
        AccessLogField::TraceId => "trace_id",
        AccessLogField::Method => "method",
        AccessLogField::Path => "path",
        AccessLogField::Query => "query",
        AccessLogField::Protocol => "protocol",
        AccessLogField::Host => "host",
        AccessLogField::Route => "route",
        AccessLogField::Upstream => "upstream",
        AccessLogField::Endpoint => "endpoint",
        AccessLogField::Status => "status",
        AccessLogField::Source => "source",
        AccessLogField::Error => "error",
        AccessLogField::Detail => "detail",
        AccessLogField::Tries => "tries",
        AccessLogField::DurationMs => "duration_ms",
        AccessLogField::FilterMs => "filter_ms",
        AccessLogField::BytesIn => "bytes_in",
        AccessLogField::BytesOut => "bytes_out",
        AccessLogField::ClientIp => "client_ip",
        AccessLogField::PeerIp => "peer_ip",
        AccessLogField::UserAgent => "user_agent",
        AccessLogField::Referer => "referer",
        AccessLogField::TunnelEnd => "tunnel_end",
        AccessLogField::TunnelMs => "tunnel_ms",
    }
}

/// nginx's `common`/`combined`: `$remote_addr - $remote_user [$time_local] "$request"
/// $status $body_bytes_sent` (+ ` "$http_referer" "$http_user_agent"`). As nginx does, an
/// absent value is `-`, `"` and `\` and bytes outside printable ASCII in the quoted parts are
/// escaped as `\xHH`, and the time is the log's own clock (UTC here).
fn clf(rec: &AccessRecord<'_>, now: OffsetDateTime, combined: bool) -> String {
    let mut out = String::with_capacity(256);
    match rec.client_ip {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push('-'),
    }
    out.push_str(" - - [");
    push_clf_time(&mut out, now);
    out.push_str("] \"");
    if rec.method.is_empty() {
        // A request the parser refused has no request line to repeat (nginx writes `-`
        // for `$request` it could not read either).
        out.push('-');
    } else {
        push_escaped(&mut out, rec.method);
        out.push(' ');
        push_escaped(&mut out, rec.target);
        out.push(' ');
        push_escaped(&mut out, rec.protocol);
    }
    let _ = write!(out, "\" {} {}", rec.status, rec.bytes_out);
    if combined {
        for v in [rec.referer, rec.user_agent] {
            out.push_str(" \"");
            if v.is_empty() {
                out.push('-');
            } else {
                push_escaped(&mut out, v);
            }
            out.push('"');
        }
    }
    out.push('\n');
    out
}

/// nginx's escaping for quoted log values (`ngx_http_log_escape`): `"`, `\`, control bytes
/// and bytes above 0x7e become `\xHH`, so a header cannot forge a second line or field.
fn push_escaped(out: &mut String, v: &str) {
    for b in v.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}

/// `30/Nov/2026:09:07:23 +0000` (nginx's `$time_local`, in UTC).
fn push_clf_time(out: &mut String, t: OffsetDateTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS[usize::from(u8::from(t.month())) - 1];
    let _ = write!(
        out,
        "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
        t.day(),
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    );
}

/// `2026-11-30T08:56:09.025873Z`: the process log's timestamp (RFC 3339, UTC, µs).
fn push_rfc3339(out: &mut String, t: OffsetDateTime) {
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    );
}

/// `d` in milliseconds to the microsecond (at most 3 decimals): `as_secs_f64() * 1000.0`
/// printed float noise (`23.343404000000003`); a whole number of microseconds divided by
/// 1000 is the double nearest that decimal, which prints as it.
fn millis(d: Duration) -> f64 {
    // u64 microseconds: 584 000 years; f64 is exact below 2^53 µs (285 years).
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> OffsetDateTime {
        // 2026-11-30 09:07:23.025873 UTC
        OffsetDateTime::from_unix_timestamp_nanos(1_796_029_643_025_873_000).unwrap()
    }

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            request_id: "abc",
            method: "GET",
            path: "/a/b",
            target: "/a/./b?x=1",
            query: "x=1",
            protocol: "HTTP/1.1",
            host: "h",
            route: "r",
            upstream: "u",
            endpoint: "127.0.0.1:1",
            status: 200,
            source: "upstream",
            tries: 1,
            duration: Duration::from_micros(1500),
            bytes_out: 12,
            client_ip: "10.0.0.1".parse().ok(),
            peer_ip: "127.0.0.1".parse().ok(),
            user_agent: "curl/8 \"x\"",
            ..Default::default()
        }
    }

    fn cfg(format: AccessLogFormat, fields: Option<Vec<AccessLogField>>) -> AccessLogConfig {
        AccessLogConfig {
            enabled: true,
            format,
            fields,
        }
    }

    #[test]
    fn millis_have_at_most_three_decimals() {
        let d = Duration::from_nanos(23_343_404_123);
        assert_eq!(millis(d).to_string(), "23343.404");
        assert_eq!(
            millis(Duration::from_nanos(23_343_404)).to_string(),
            "23.343"
        );
        assert_eq!(millis(Duration::from_micros(100)).to_string(), "0.1");
        assert_eq!(
            serde_json::json!(millis(Duration::from_nanos(1_999))).to_string(),
            "0.001"
        );
        assert_eq!(millis(Duration::ZERO), 0.0);
    }

    #[test]
    fn default_json_line_keeps_the_documented_fields_in_order() {
        let line = render(&cfg(AccessLogFormat::Json, None), &record(), at());
        assert!(line.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], "2026-11-30T09:07:23.025873Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        let names = [
            "request_id",
            "method",
            "path",
            "host",
            "route",
            "upstream",
            "endpoint",
            "status",
            "source",
            "error",
            "tries",
            "duration_ms",
            "filter_ms",
            "bytes_in",
            "bytes_out",
            "client_ip",
            "peer_ip",
        ];
        assert_eq!(
            v["fields"].as_object().unwrap().len(),
            names.len(),
            "no detail: {line}"
        );
        let at: Vec<usize> = names
            .iter()
            .map(|n| line.find(&format!("\"{n}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "in order: {line}");
        assert_eq!(v["fields"]["duration_ms"], 1.5);
        assert_eq!(v["fields"]["status"], 200);
        assert_eq!(v["fields"]["client_ip"], "10.0.0.1");
    }

    #[test]
    fn the_trace_id_follows_the_request_id_when_there_is_one() {
        let rec = AccessRecord {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            ..record()
        };
        let line = render(&cfg(AccessLogFormat::Json, None), &rec, at());
        assert!(
            line.contains(
                "{\"request_id\":\"abc\",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"method\""
            ),
            "{line}"
        );
    }

    #[test]
    fn json_field_list_chooses_and_orders_the_fields() {
        use AccessLogField::*;
        let c = cfg(
            AccessLogFormat::Json,
            Some(vec![Status, UserAgent, Query, Detail]),
        );
        let line = render(&c, &record(), at());
        assert!(
            line.contains(
                "\"fields\":{\"status\":200,\"user_agent\":\"curl/8 \\\"x\\\"\",\"query\":\"x=1\"}"
            ),
            "{line}"
        );
        let mut refused = record();
        refused.detail = Some("bad header".into());
        let line = render(&c, &refused, at());
        assert!(line.contains(",\"detail\":\"bad header\"}"), "{line}");
    }

    #[test]
    fn common_and_combined_match_nginx() {
        let line = render(&cfg(AccessLogFormat::Common, None), &record(), at());
        assert_eq!(
            line,
            "10.0.0.1 - - [30/Nov/2026:09:07:23 +0000] \"GET /a/./b?x=1 HTTP/1.1\" 200 12\n"
        );
        let line = render(&cfg(AccessLogFormat::Combined, None), &record(), at());
        assert_eq!(
            line,
            "10.0.0.1 - - [30/Nov/2026:09:07:23 +0000] \"GET /a/./b?x=1 HTTP/1.1\" 200 12 \"-\" \"curl/8 \\x22x\\x22\"\n"
        );
    }

    #[test]
    fn text_formats_cannot_be_forged_by_the_client() {
        let mut r = record();
        r.referer = "a\"\n1.2.3.4 - - [x] \"GET / HTTP/1.1\" 200 0";
        r.user_agent = "é";
        let line = render(&cfg(AccessLogFormat::Combined, None), &r, at());
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains("\"a\\x22\\x0A1.2.3.4"), "{line}");
        assert!(line.ends_with("\"\\xC3\\xA9\"\n"), "{line}");
    }

    #[test]
    fn a_refused_request_has_a_dash_for_its_request_line() {
        let r = AccessRecord {
            status: 400,
            client_ip: "127.0.0.1".parse().ok(),
            ..Default::default()
        };
        let line = render(&cfg(AccessLogFormat::Common, None), &r, at());
        assert_eq!(
            line,
            "127.0.0.1 - - [30/Nov/2026:09:07:23 +0000] \"-\" 400 0\n"
        );
    }
}
