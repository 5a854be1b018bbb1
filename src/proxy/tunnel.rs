//! Upgraded connections (a WebSocket after `101 Switching Protocols`): the tunnel's idle
//! timeout on the client's side, and when and why it ended, for the access log.

use std::time::{Duration, Instant};

use pingora_core::{Error, ErrorType};
use pingora_proxy::Session;

use super::ctx::RequestCtx;

/// Why a tunnel ended (the access log's `tunnel_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The client closed its connection first.
    ClientClose,
    /// The upstream closed its connection first.
    UpstreamClose,
    /// One side sent nothing for the route's `websocket.idle_timeout`.
    IdleTimeout,
    /// A read or write failed.
    Error,
}

impl TunnelEnd {
    /// The log value.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::ClientClose => "client_close",
            TunnelEnd::UpstreamClose => "upstream_close",
            TunnelEnd::IdleTimeout => "idle_timeout",
            TunnelEnd::Error => "error",
        }
    }
}

/// A request's tunnel: when the `101` went out, and the first side seen to close.
#[derive(Debug, Clone, Copy)]
pub struct Tunnel {
    started: Instant,
    closed: Option<TunnelEnd>,
}

/// `response_filter`: a `101` starts the tunnel. The client's side then waits for bytes as
/// long as the route's `websocket.idle_timeout` (the upstream's side gets it from the peer,
/// vendor patch 13), instead of pingora's 60 s body read timeout.
pub fn on_response(session: &mut Session, ctx: &mut RequestCtx, status: u16) {
    if status != 101 {
        return;
    }
    if let Some(route) = &ctx.route {
        session.set_read_timeout(Some(route.tunnel_idle_timeout));
    }
    ctx.tunnel = Some(Tunnel {
        started: Instant::now(),
        closed: None,
    });
}

/// A side's end of stream in the tunnel (`ClientClose` from the request body filter,
/// `UpstreamClose` from the upstream's body filter); the first one seen is the cause.
pub fn closed(ctx: &mut RequestCtx, by: TunnelEnd) {
    if let Some(t) = &mut ctx.tunnel {
        t.closed.get_or_insert(by);
    }
}

/// `logging`: why the request's tunnel ended and how long it lasted (`None` without one):
/// the side that closed first, else a read timeout on either side (the idle timeout), else
/// an error.
pub fn finish(ctx: &RequestCtx, e: Option<&Error>) -> Option<(&'static str, Duration)> {
    let t = ctx.tunnel?;
    let end = match (t.closed, e.map(|e| e.etype())) {
        (Some(by), _) => by,
        (None, Some(ErrorType::ReadTimedout)) => TunnelEnd::IdleTimeout,
        (None, _) => TunnelEnd::Error,
    };
    Some((end.as_str(), t.started.elapsed()))
}
