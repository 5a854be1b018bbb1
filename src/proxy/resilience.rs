//! The resilience steps of one request (per-request glue over the policies in
//! `resilience/`), each called from one proxy phase (see `proxy/mod.rs`): admission before a try (backoff, breaker, bulkhead), the verdict on a
//! try (breaker, outlier detection, metrics), and whether to retry it.
//!
//! Retries use pingora's own loop: a retryable error from `fail_to_connect` or
//! `error_while_proxy` brings the request back to `upstream_peer`. A retry on a status is
//! an error returned from `upstream_response_filter` before the response header went
//! downstream; pingora then calls `error_while_proxy`, which we override so that the
//! decision made here stands (pingora's default would refuse non-idempotent methods and
//! fresh connections).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyWarnLogContext, Session};
use tokio::sync::OwnedSemaphorePermit;

use super::ctx::RequestCtx;
use super::refusal::Refusal;
use super::respond::classify;
use crate::clock::mono_ms;
use crate::resilience::breaker::{Admission, Breaker, Ticket};
use crate::resilience::{Outcome, OutcomeKind, RetryReason};
use crate::telemetry::Telemetry;

/// Header that tells the upstream how many milliseconds of the total deadline are left.
pub const DEADLINE_HEADER: &str = "x-gatehouse-deadline-ms";

/// Per-request resilience state, kept in the request context.
#[derive(Default)]
pub struct RequestResilience {
    /// The breaker's admission of the current try.
    ticket: Option<(Arc<Breaker>, Ticket)>,
    /// The bulkhead slot, held until the request ends (the context drops).
    permit: Option<OwnedSemaphorePermit>,
    /// When the current try started (slow-call detection).
    try_started: Option<Instant>,
    /// Set when `upstream_response_filter` decided to retry on a status.
    status_retry: bool,
    /// Retries of a failure on a reused pooled connection (pingora's default, once).
    stale_retries: u32,
    /// The outcome of the response header, counted when its body ends: a body the
    /// upstream cuts short turns it into `truncated` (see [`end_try`]).
    pending: Option<Outcome>,
}

impl RequestResilience {
    /// Whether the request holds a bulkhead slot.
    pub fn holds_slot(&self) -> bool {
        self.permit.is_some()
    }

    fn release_ticket(&mut self) {
        if let Some((b, t)) = self.ticket.take() {
            b.release(t);
        }
    }
}

impl Drop for RequestResilience {
    fn drop(&mut self) {
        // A probe whose request ended without a verdict gives its slot back.
        self.release_ticket();
    }
}

/// Time left of the route's total deadline, when there is one.
fn time_left(ctx: &RequestCtx) -> Option<Duration> {
    let route = ctx.route.as_ref()?;
    let total = route.cluster.upstream.peer.total?;
    Some(total.saturating_sub(ctx.started.elapsed()))
}

/// Before each try, in `upstream_peer` before an endpoint is picked: the backoff of a
/// retry (within the total deadline), the breaker, and on the first try the retry budget's
/// deposit and the bulkhead slot. An `Err` carries the gateway's [`Refusal`]
/// (`CircuitOpen`, `BulkheadFull`, `DeadlineSpent` when no room is left for another try).
pub async fn before_try(tel: &Telemetry, ctx: &mut RequestCtx) -> Result<()> {
    let Some(route) = ctx.route.clone() else {
        return Ok(());
    };
    let (u, r) = (&route.cluster.upstream, &route.cluster.resilience);
    ctx.resilience.release_ticket();

    if ctx.tries > 0 {
        if let Some(p) = &r.retry {
            let delay = p.backoff.delay(ctx.tries);
            if time_left(ctx).is_some_and(|left| left <= delay) {
                let r = Refusal::DeadlineSpent {
                    upstream: u.name.clone(),
                    retrying: true,
                };
                return Err(r.into_error("total deadline spent before a retry"));
            }
            tokio::time::sleep(delay).await;
        }
    }

    if let Some(b) = &r.breaker {
        let (admission, transition) = b.admit(mono_ms());
        if let Some(t) = transition {
            t.report(tel, &u.name);
        }
        match admission {
            Admission::Admit(t) => ctx.resilience.ticket = Some((b.clone(), t)),
            Admission::Reject { retry_after } => {
                tel.breaker_rejected(&u.name);
                let r = Refusal::CircuitOpen {
                    upstream: u.name.clone(),
                    retry_after,
                };
                return Err(r.into_error("circuit breaker open"));
            }
        }
    }

    if ctx.tries == 0 {
        r.budget.deposit(mono_ms());
        if let Some(bh) = &r.bulkhead {
            match bh.acquire(time_left(ctx)).await {
                Ok(p) => ctx.resilience.permit = Some(p),
                Err(e) => {
                    ctx.resilience.release_ticket();
                    tel.bulkhead_rejected(&u.name);
                    let r = Refusal::BulkheadFull {
                        upstream: u.name.clone(),
                        reason: e.to_string(),
                    };
                    return Err(r.into_error("bulkhead full"));
                }
            }
        }
    }
    ctx.resilience.try_started = Some(Instant::now());
    Ok(())
}

/// Counts one try's outcome, once per try: metrics, the breaker and outlier detection.
/// `None` (the client went away, a gateway-internal error) only ends the try.
pub fn record_try(tel: &Telemetry, ctx: &mut RequestCtx, outcome: Option<Outcome>) {
    if ctx.try_outcome_recorded {
        return;
    }
    ctx.try_outcome_recorded = true;
    super::trace::end_try(ctx, outcome.as_ref());
    let Some(ep) = ctx.endpoint.clone() else {
        return;
    };
    ctx.endpoint_inflight = None;
    let ticket = ctx.resilience.ticket.take();
    let (Some(o), Some(route)) = (outcome, ctx.route.clone()) else {
        if let Some((b, t)) = ticket {
            b.release(t);
        }
        return;
    };
    let (u, r) = (&route.cluster.upstream, &route.cluster.resilience);
    ep.count_outcome(tel, &u.name, o.kind.label());
    if let Some((b, t)) = ticket {
        if let Some(tr) = b.record(t, o.failure, mono_ms()) {
            tr.report(tel, &u.name);
        }
    }
    if let Some(op) = &r.outlier {
        if let Some(time) = op.record(&u.endpoints(), &ep, o.failure, mono_ms()) {
            let why = format!(
                "{} consecutive failures, ejected for {}s (ejection #{})",
                op.consecutive_failures,
                time.as_secs_f64(),
                ep.ejections()
            );
            ep.announce_health(tel, &u.name, false, &why);
        }
    }
}

/// At the end of a failed request, counts the try that reached an endpoint but neither
/// got a response header nor was counted by an error hook (an error after the hooks,
/// e.g. while the response body streamed), with the classifier's outcome.
pub fn record_unfinished_try(tel: &Telemetry, ctx: &mut RequestCtx, e: &Error) {
    if !ctx.try_outcome_recorded && ctx.endpoint.is_some() && ctx.upstream_status.is_none() {
        record_try(tel, ctx, classify(e).outcome);
    }
}

/// `upstream_response_filter`: the try's status, its outcome (`on_response_header`), and
/// the error that retries it when its status is one to retry (`retry_on_status`).
pub fn on_upstream_response(
    tel: &Telemetry,
    session: &Session,
    ctx: &mut RequestCtx,
    resp: &ResponseHeader,
) -> Result<()> {
    let status = resp.status.as_u16();
    ctx.upstream_status = Some(status);
    on_response_header(tel, ctx, session.req_header(), resp);
    retry_on_status(tel, ctx, status, &Replay::of(session))
}

/// A response with a body keeps its header's outcome until the body ends ([`end_try`],
/// from the upstream body filter's end of stream, before the last bytes go to the
/// client); one without a body (RFC 9112 section 6.3: a response
/// to HEAD, 1xx, 204, 304, `Content-Length: 0`; and a 101 whose tunnel may last
/// forever) is counted at once, as is a status retry ([`retry_on_status`]).
fn on_response_header(
    tel: &Telemetry,
    ctx: &mut RequestCtx,
    req: &RequestHeader,
    resp: &ResponseHeader,
) {
    let status = resp.status.as_u16();
    ctx.resilience.pending = response_outcome(ctx, status);
    let empty_length = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    let bodiless = req.method == http::Method::HEAD
        || status < 200
        || status == 204
        || status == 304
        || (empty_length && !resp.headers.contains_key(http::header::TRANSFER_ENCODING));
    if bodiless {
        end_try(tel, ctx, None);
    }
}

/// Ends the current try once its response is over: counts the outcome of its header, or,
/// when the upstream's side of the body failed (`err` from the upstream: the connection
/// closed before `Content-Length` bytes or the last chunk, a read timeout), a failure:
/// `truncated` (or `timeout`) for the metrics, the breaker and outlier detection, one
/// warning, and the access log's `error`. The client's connection is then closed by
/// pingora (the header went out, so `fail_to_proxy` cannot answer), so a client never
/// takes the cut body for a complete one (RFC 9112 section 8). A client that went away
/// (a downstream error) leaves the header's outcome as it was.
pub fn end_try(tel: &Telemetry, ctx: &mut RequestCtx, err: Option<&Error>) {
    let Some(pending) = ctx.resilience.pending.take() else {
        return;
    };
    let failed = err.and_then(|e| classify(e).outcome.map(|o| (e, o.kind)));
    let Some((e, kind)) = failed else {
        record_try(tel, ctx, Some(pending));
        return;
    };
    let (kind, code) = match kind {
        OutcomeKind::Timeout => (OutcomeKind::Timeout, Refusal::UpstreamTimeout.code()),
        _ => (OutcomeKind::Truncated, Refusal::UpstreamTruncated.code()),
    };
    ctx.body_error = Some(code);
    tracing::warn!(
        request_id = %ctx.request_id,
        route = ctx.route_name(),
        upstream = ctx.upstream_name(),
        endpoint = ctx.endpoint.as_ref().map_or("", |e| e.address.as_str()),
        status = pending.status.unwrap_or(0),
        code,
        error = %e,
        "upstream response body cut short; client connection closed"
    );
    let outcome = Outcome {
        kind,
        status: pending.status,
        failure: true,
    };
    record_try(tel, ctx, Some(outcome));
}

/// The outcome of a response header (the classifier, with slow-call timing).
pub fn response_outcome(ctx: &RequestCtx, status: u16) -> Option<Outcome> {
    let route = ctx.route.as_ref()?;
    let elapsed = ctx
        .resilience
        .try_started
        .map_or(Duration::ZERO, |t| t.elapsed());
    Some(
        route
            .cluster
            .resilience
            .classifier
            .response(status, elapsed),
    )
}

/// Whether the policy, the method, the body, the deadline and the budget allow another
/// try for `reason`. Takes the retry from the budget and counts it when they do.
fn allow_retry(
    tel: &Telemetry,
    ctx: &RequestCtx,
    reason: RetryReason,
    req: &RequestHeader,
    body_truncated: bool,
) -> bool {
    let Some(route) = ctx.route.as_ref() else {
        return false;
    };
    let (u, r) = (&route.cluster.upstream, &route.cluster.resilience);
    let Some(p) = &r.retry else {
        return false;
    };
    if !p.covers(reason) || ctx.tries >= p.attempts {
        return false;
    }
    if body_truncated {
        tracing::debug!(request_id = %ctx.request_id, upstream = %u.name, "not retried: the request body went beyond the retry buffer");
        return false;
    }
    if reason.needs_idempotency() && !p.method_allowed(&req.method, &req.headers) {
        return false;
    }
    if time_left(ctx).is_some_and(|l| l.is_zero()) {
        return false;
    }
    if !r
        .budget
        .try_withdraw(p.budget_ratio, p.min_retries_per_second, mono_ms())
    {
        tel.retry_budget_exhausted(&u.name);
        tracing::debug!(request_id = %ctx.request_id, upstream = %u.name, "not retried: retry budget exhausted");
        return false;
    }
    tel.retried(&u.name, reason.label());
    true
}

/// What a retry decision needs from the client's side of the exchange: the request
/// (its method), whether pingora's retry buffer overflowed (the body cannot be replayed)
/// and whether a response header already went to the client (then nothing is retried).
pub struct Replay<'a> {
    /// The client's request.
    pub req: &'a RequestHeader,
    /// The request body is larger than pingora's retry buffer.
    pub body_truncated: bool,
    /// A response header was already sent downstream.
    pub response_written: bool,
}

impl<'a> Replay<'a> {
    /// Read from the session.
    pub fn of(session: &'a Session) -> Self {
        Self {
            req: session.req_header(),
            body_truncated: session.as_ref().retry_buffer_truncated(),
            response_written: session.response_written().is_some(),
        }
    }
}

/// `fail_to_connect`: counts the failed try and marks the error retryable when allowed.
/// Nothing reached the upstream, so any method may be retried.
pub fn on_connect_error(
    tel: &Telemetry,
    ctx: &mut RequestCtx,
    replay: &Replay<'_>,
    mut e: Box<Error>,
) -> Box<Error> {
    let outcome = classify(&e).outcome;
    record_try(tel, ctx, outcome);
    let (req, body_truncated) = (replay.req, replay.body_truncated);
    let retry =
        outcome.is_some() && allow_retry(tel, ctx, RetryReason::ConnectError, req, body_truncated);
    e.set_retry(retry);
    e
}

/// The log line of a failed try that is retried, in place of pingora's (`true`: pingora's
/// is suppressed); the request's last failure is `request failed` (`respond::fail`).
/// Other warnings pingora logs stay its own.
pub fn log_retry(ctx: &RequestCtx, e: &Error, context: ProxyWarnLogContext) -> bool {
    if !matches!(context, ProxyWarnLogContext::UpstreamRetry) {
        return false;
    }
    tracing::warn!(
        request_id = %ctx.request_id,
        route = ctx.route_name(),
        upstream = ctx.upstream_name(),
        endpoint = ctx.endpoint.as_ref().map_or("", |e| e.address.as_str()),
        tries = ctx.tries,
        error = %e,
        "upstream try failed; retrying"
    );
    true
}

/// `logging`: the try still open at the end of the request is recorded (with the error
/// that ended the request, if any) and the endpoint's in-flight count released.
pub fn end_request(tel: &Telemetry, ctx: &mut RequestCtx, e: Option<&Error>) {
    if let Some(e) = e {
        record_unfinished_try(tel, ctx, e);
    }
    end_try(tel, ctx, e);
    ctx.endpoint_inflight = None;
}

/// After the try was recorded ([`on_upstream_response`]): when the status is one to retry
/// and nothing went downstream yet, returns the error that makes pingora try again.
fn retry_on_status(
    tel: &Telemetry,
    ctx: &mut RequestCtx,
    status: u16,
    replay: &Replay<'_>,
) -> Result<()> {
    let (req, body_truncated) = (replay.req, replay.body_truncated);
    if status < 200 || replay.response_written {
        return Ok(());
    }
    let listed = ctx
        .route
        .as_ref()
        .and_then(|r| r.cluster.resilience.retry.as_ref())
        .is_some_and(|p| p.covers(RetryReason::Status(status)));
    if !listed || !allow_retry(tel, ctx, RetryReason::Status(status), req, body_truncated) {
        return Ok(());
    }
    // This response is dropped: its try ends now.
    end_try(tel, ctx, None);
    ctx.resilience.status_retry = true;
    ctx.upstream_status = None;
    let mut e = Error::explain(
        ErrorType::HTTPStatus(status),
        format!("upstream answered {status}; retrying"),
    )
    .into_up();
    e.set_retry(true);
    Err(e)
}

/// `error_while_proxy`: counts the failed try (unless it was a status retry, already
/// counted) and decides whether to retry.
pub fn on_proxy_error(
    tel: &Telemetry,
    ctx: &mut RequestCtx,
    e: &mut Error,
    replay: &Replay<'_>,
    client_reused: bool,
) {
    let (req, body_truncated) = (replay.req, replay.body_truncated);
    if std::mem::take(&mut ctx.resilience.status_retry) {
        e.set_retry(true);
        return;
    }
    if ctx.resilience.pending.is_some() {
        // The response header came: the failure is in its body, which (partly) went out.
        end_try(tel, ctx, Some(e));
        e.set_retry(false);
        return;
    }
    let outcome = classify(e).outcome;
    if ctx.endpoint.is_some() && ctx.upstream_status.is_none() {
        record_try(tel, ctx, outcome);
    }
    let Some(reason) = outcome.and_then(|o| o.retry_reason()) else {
        e.set_retry(false);
        return;
    };
    if replay.response_written {
        e.set_retry(false);
        return;
    }
    if allow_retry(tel, ctx, reason, req, body_truncated) {
        e.set_retry(true);
        return;
    }
    // pingora's own default: a failure on a reused pooled connection is most likely a
    // connection the upstream had closed; an idempotent request gets one more try. Any
    // method gets it when the upstream reset the connection before any response byte: a
    // reset means our bytes reached a socket that was closed or never read them, so the
    // request was not acted on (the keep-alive race; Chromium resends any method then).
    let stale = client_reused
        && ctx.resilience.stale_retries == 0
        && (req.method.is_idempotent() || reset_unread(e))
        && !body_truncated;
    if stale {
        ctx.resilience.stale_retries += 1;
    }
    e.set_retry(stale);
}

/// Whether `e` is a connection reset by the upstream before any response byte: while the
/// gateway wrote the request (pingora's `WriteError`: the socket was already closed, the
/// keep-alive race) or waited for the response header (`ReadError`/`ConnectionClosed`),
/// with an io reset as cause. Chromium resends any method on a reused connection then.
fn reset_unread(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ReadError | ErrorType::ConnectionClosed | ErrorType::WriteError
    ) && e
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
}

/// `upstream_request_filter`: tells the upstream how much of the total deadline is left
/// (`X-Gatehouse-Deadline-Ms`), and never forwards a client's copy of the header.
pub fn deadline_header(ctx: &RequestCtx, req: &mut RequestHeader) -> Result<()> {
    // By name constant: removing by `&str` parsed the name on every request.
    static NAME: http::HeaderName = http::HeaderName::from_static(DEADLINE_HEADER);
    req.remove_header(&NAME);
    if let Some(left) = time_left(ctx) {
        req.insert_header(DEADLINE_HEADER, left.as_millis().to_string())?;
    }
    Ok(())
}
