//! A closed-loop load generator for the chaos and Redis-topology tests: `per_lane` clients
//! per lane (a URL and the header that carries the rate-limit key), each sending its next
//! request as soon as the previous one is answered, and recording every answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// One answered (or failed) request of a load run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Since the run started (sent).
    pub at: Duration,
    pub took: Duration,
    /// 0: no answer (transport error).
    pub status: u16,
    pub lane: usize,
}

/// The clients' shared record; they stop at [`Load::stop`] or after their cap.
pub struct Load {
    started: Instant,
    samples: Mutex<Vec<Sample>>,
    stop: AtomicBool,
}

/// The key of request `n` of client `c` on lane `lane`.
pub type KeyFn = dyn Fn(usize, usize, u64) -> String + Send + Sync;

impl Load {
    /// Starts `per_lane` clients per `(url, key header)` lane; each stops at [`Load::stop`]
    /// or after `cap`, whichever is first. `key(lane, client, n)` is the header's value.
    pub fn start(
        lanes: Vec<(String, &'static str)>,
        per_lane: usize,
        cap: Duration,
        key: impl Fn(usize, usize, u64) -> String + Send + Sync + 'static,
    ) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let load = Arc::new(Self {
            started: Instant::now(),
            samples: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let key: Arc<KeyFn> = Arc::new(key);
        let mut tasks = Vec::new();
        for (lane, (url, header)) in lanes.into_iter().enumerate() {
            for c in 0..per_lane {
                let (load, url, key) = (load.clone(), url.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    let mut n = 0u64;
                    while !load.stop.load(Ordering::Relaxed) && load.started.elapsed() < cap {
                        n += 1;
                        let t = Instant::now();
                        let at = load.started.elapsed();
                        let status =
                            match http.get(&url).header(header, key(lane, c, n)).send().await {
                                Ok(r) => {
                                    let s = r.status().as_u16();
                                    match r.bytes().await {
                                        Ok(_) => s,
                                        Err(_) => 0,
                                    }
                                }
                                Err(_) => 0,
                            };
                        load.samples.lock().unwrap().push(Sample {
                            at,
                            took: t.elapsed(),
                            status,
                            lane,
                        });
                    }
                }));
            }
        }
        (load, tasks)
    }

    /// One lane per URL, key header `x-k`, 64 rotating keys per client (rate-limit
    /// batching sees several keys at once).
    pub fn start_rotating(
        urls: Vec<String>,
        per_lane: usize,
        cap: Duration,
    ) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let lanes = urls.into_iter().map(|u| (u, "x-k")).collect();
        Self::start(lanes, per_lane, cap, |lane, c, n| {
            format!("c{lane}-{c}-{}", n % 64)
        })
    }

    /// Time since the run started.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the clients, waits for them, and returns every sample.
    pub async fn stop(&self, tasks: Vec<JoinHandle<()>>) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        self.samples.lock().unwrap().clone()
    }
}

/// `d` in milliseconds, for figures.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (0..=1) of `v`, sorted in place; zero when empty.
pub fn quantile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}
