//! A route's filters as one chain: runs the request phase in order until a filter answers
//! or fails (short-circuit), runs the response phase of every filter, and times each
//! filter (`gatehouse_filter_duration_seconds{filter}`, and the total for the access
//! log's `filter_ms`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_http::{RequestHeader, ResponseHeader};
use prometheus::Histogram;

use crate::{
    BodyTransform, Filter, FilterError, FilterMetrics, FilterOutcome, FilterState, RequestCx,
    ResponseCx,
};

/// The filters of one route, in config order, each with its timing series.
#[derive(Default)]
pub struct Chain {
    filters: Vec<(Arc<dyn Filter>, Option<Histogram>)>,
    /// Per filter, whether its response phase may wait ([`Filter::waits_in_response`]).
    waits: Vec<bool>,
}

/// How a request phase ended when it did not go on to the upstream.
#[derive(Debug)]
pub enum Stop {
    /// A filter answered the request (a rejection or e.g. a CORS preflight).
    Respond(crate::Response),
    /// A filter failed (an infrastructure error, answered 500 by the gateway).
    Failed(FilterError),
}

impl Chain {
    /// A chain of `filters` in order, timed on `metrics`.
    pub fn new(filters: Vec<Arc<dyn Filter>>, metrics: &FilterMetrics) -> Self {
        Self {
            waits: filters.iter().map(|f| f.waits_in_response()).collect(),
            filters: filters
                .into_iter()
                .map(|f| {
                    let timer = metrics.filter_duration(f.kind());
                    (f, timer)
                })
                .collect(),
        }
    }

    /// Whether the route has no filter.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// How many filters it runs.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// The filters, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Filter>> {
        self.filters.iter().map(|(f, _)| f)
    }

    /// The most body bytes any filter needs to see before the request phase (0: none).
    pub fn body_prefix(&self) -> usize {
        self.iter()
            .filter_map(|f| f.body_prefix_limit())
            .max()
            .unwrap_or(0)
    }

    /// Runs every filter's request phase in order; the first that answers or fails ends
    /// the chain (the filters after it do not run). Each filter's time is observed and
    /// added to `spent`.
    pub async fn on_request(
        &self,
        req: &mut RequestHeader,
        cx: &mut RequestCx<'_>,
        spent: &mut Duration,
    ) -> Result<(), Stop> {
        self.on_request_range(0..self.filters.len(), req, cx, spent)
            .await
    }

    /// Whether a filter needs the whole request body ([`Filter::buffers_request_body`]).
    pub fn buffers_request_body(&self) -> bool {
        self.iter().any(|f| f.buffers_request_body())
    }

    /// The index of the first filter that reads the request body (the chain's length when
    /// none does): the filters before it can run before the body is read.
    pub fn first_body_reader(&self) -> usize {
        self.iter()
            .position(|f| f.body_prefix_limit().is_some() || f.buffers_request_body())
            .unwrap_or(self.filters.len())
    }

    /// [`Chain::on_request`] over the filters in `range` only (in order).
    pub async fn on_request_range(
        &self,
        range: std::ops::Range<usize>,
        req: &mut RequestHeader,
        cx: &mut RequestCx<'_>,
        spent: &mut Duration,
    ) -> Result<(), Stop> {
        for (f, timer) in self.filters.get(range).unwrap_or_default() {
            let start = Instant::now();
            let outcome = f.on_request(req, cx).await;
            observe(timer, start, spent);
            match outcome {
                Ok(FilterOutcome::Continue) => {}
                Ok(FilterOutcome::Respond(resp)) => return Err(Stop::Respond(resp)),
                Err(e) => return Err(Stop::Failed(e)),
            }
        }
        Ok(())
    }

    /// Runs every filter's request-trailer phase in order ([`Filter::on_request_trailers`]),
    /// observing each filter's time and adding it to `spent`.
    pub fn on_request_trailers(
        &self,
        req: &mut RequestHeader,
        trailers: &mut http::HeaderMap,
        state: &FilterState,
        spent: &mut Duration,
    ) {
        for (f, timer) in &self.filters {
            let start = Instant::now();
            f.on_request_trailers(req, trailers, state);
            observe(timer, start, spent);
        }
    }

    /// Runs every filter's response phase in order, collecting body transforms into
    /// `transforms`. A failing filter does not stop the others (the response is already
    /// the upstream's); its error is returned for the log. Each filter's time is observed
    /// and added to `spent` (for a filter that waits, the wait included).
    pub async fn on_response(
        &self,
        resp: &mut ResponseHeader,
        cx: &ResponseCx<'_>,
        transforms: &mut Vec<Box<dyn BodyTransform>>,
        spent: &mut Duration,
    ) -> Vec<FilterError> {
        let mut errors = Vec::new();
        for ((f, timer), waits) in self.filters.iter().zip(&self.waits) {
            let start = Instant::now();
            let result = if *waits {
                f.on_response_waiting(resp, cx).await
            } else {
                f.on_response(resp, cx)
            };
            observe(timer, start, spent);
            match result {
                Ok(Some(t)) => transforms.push(t),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        errors
    }
}

fn observe(timer: &Option<Histogram>, start: Instant, spent: &mut Duration) {
    let took = start.elapsed();
    *spent += took;
    if let Some(h) = timer {
        h.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use http::StatusCode;

    use super::*;
    use crate::RequestResult;

    /// A test filter: counts its calls, waits `wait`, then does `then`.
    struct Probe {
        kind: &'static str,
        calls: AtomicU32,
        wait: Duration,
        then: fn() -> RequestResult,
    }

    #[async_trait]
    impl Filter for Probe {
        fn kind(&self) -> &'static str {
            self.kind
        }
        async fn on_request(
            &self,
            _req: &mut RequestHeader,
            _cx: &mut RequestCx<'_>,
        ) -> RequestResult {
            self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.wait).await;
            (self.then)()
        }
    }

    fn probe(kind: &'static str, wait: Duration, then: fn() -> RequestResult) -> Arc<Probe> {
        Arc::new(Probe {
            kind,
            calls: AtomicU32::new(0),
            wait,
            then,
        })
    }

    fn cx() -> RequestCx<'static> {
        crate::test_cx()
    }

    fn chain(filters: &[Arc<Probe>], metrics: &FilterMetrics) -> Chain {
        Chain::new(
            filters
                .iter()
                .map(|p| p.clone() as Arc<dyn Filter>)
                .collect(),
            metrics,
        )
    }

    #[tokio::test]
    async fn the_first_answer_or_failure_ends_the_chain() {
        let metrics = FilterMetrics::disabled();
        let pass = || Ok(FilterOutcome::Continue);
        let answer = || {
            Ok(FilterOutcome::Respond(crate::Response::error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "slow down",
            )))
        };
        let fail = || {
            Err(FilterError {
                kind: "fail",
                message: "redis down".into(),
            })
        };
        let (a, b, c) = (
            probe("a", Duration::ZERO, pass),
            probe("b", Duration::ZERO, answer),
            probe("c", Duration::ZERO, pass),
        );
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut spent = Duration::ZERO;
        let stop = chain(&[a.clone(), b.clone(), c.clone()], &metrics)
            .on_request(&mut req, &mut cx(), &mut spent)
            .await;
        assert!(
            matches!(&stop, Err(Stop::Respond(r)) if r.status == StatusCode::TOO_MANY_REQUESTS),
            "{stop:?}"
        );
        let calls = |p: &Probe| p.calls.load(Ordering::Relaxed);
        assert_eq!((calls(&a), calls(&b), calls(&c)), (1, 1, 0));

        let f = probe("fail", Duration::ZERO, fail);
        let stop = chain(&[f.clone(), c.clone()], &metrics)
            .on_request(&mut req, &mut cx(), &mut spent)
            .await;
        assert!(
            matches!(&stop, Err(Stop::Failed(e)) if e.kind == "fail"),
            "{stop:?}"
        );
        assert_eq!(calls(&c), 0, "nothing runs after a failure");

        let ok = chain(&[a.clone(), c.clone()], &metrics)
            .on_request(&mut req, &mut cx(), &mut spent)
            .await;
        assert!(ok.is_ok());
        assert_eq!((calls(&a), calls(&c)), (2, 1));
    }

    #[tokio::test]
    async fn each_filter_is_timed_by_kind_and_summed() {
        let registry = prometheus::Registry::new();
        let metrics = FilterMetrics::register(&registry, false).unwrap();
        let pass = || Ok(FilterOutcome::Continue);
        let slow = probe("slow", Duration::from_millis(30), pass);
        let fast = probe("fast", Duration::ZERO, pass);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut spent = Duration::ZERO;
        chain(&[slow, fast], &metrics)
            .on_request(&mut req, &mut cx(), &mut spent)
            .await
            .unwrap();
        assert!(spent >= Duration::from_millis(30), "{spent:?}");
        let h = |kind: &str| metrics.filter_duration(kind).unwrap();
        assert_eq!(h("slow").get_sample_count(), 1);
        assert_eq!(h("fast").get_sample_count(), 1);
        assert!(h("slow").get_sample_sum() >= 0.030);
        assert_eq!(h("other").get_sample_count(), 0);
    }
}
