//! The daemon's HTTP routes: `metrics.listen`, its state for Prometheus
//! on `GET /metrics` in the Prometheus text format (0.0.4), and
//! `alertmanager.listen`, Alertmanager's webhook (`alerts`). Each is off by
//! default; on, it listens where the configuration says (one listener when
//! both name one address) and serves nothing else: another path is 404,
//! another method 405, and `/metrics` reads no request body.
//!
//! A scrape reads the counters (`counters`: what the daemon did since it
//! started) and, at that moment, the state database (incidents open by
//! kind, approvals waiting and the oldest one's age) and the daemon's own
//! status (the signal stream, the decisions waiting). At most
//! [`MAX_CONNECTIONS`] scrapers are served at once, each bounded in time;
//! a scrape costs one read of `state.db`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::alerts::Receiver;
use crate::counters::{kind_of, Counters, KindLabel};
use crate::model::status;
use crate::store::Store;

/// Scrapers served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a scraper may take to send its request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What a scrape reads.
pub struct Exporter {
    counters: Arc<Counters>,
    store: Store,
    watching: status::Shared,
}

impl Exporter {
    pub fn new(counters: Arc<Counters>, store: Store, watching: status::Shared) -> Self {
        Self { counters, store, watching }
    }

    /// The whole exposition: the counters, then what holds now.
    pub fn render(&self) -> Result<String, String> {
        let mut out = String::new();
        self.counters.encode(&mut out).map_err(|e| e.to_string())?;
        let now = self.now().map_err(|e| e.to_string())?;
        prometheus_client::encoding::prometheus_text::encode(&mut out, &now).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// The gauges read at the scrape.
    fn now(&self) -> Result<Registry, crate::store::StoreError> {
        let mut r = Registry::with_prefix("macha");
        let open = Family::<KindLabel, Gauge>::default();
        for (fp, _) in self.store.open_incidents()? {
            open.get_or_create(&KindLabel { kind: kind_of(&fp) }).inc();
        }
        r.register("incidents_open", "Incidents open now, by kind", open);
        let pending = self.store.pending()?;
        let waiting = Gauge::<i64>::default();
        waiting.set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        r.register("approvals_pending", "Actions waiting for a person's approval", waiting);
        let oldest = Gauge::<i64>::default();
        if let Some(first) = pending.iter().map(|a| a.created_at).min() {
            oldest.set((Utc::now() - first).num_seconds().max(0));
        }
        r.register_with_unit(
            "approval_oldest_age",
            "How long the oldest action waiting for approval has waited (0: none waits)",
            Unit::Seconds,
            oldest,
        );
        let w = self.watching.get();
        let up = Gauge::<i64>::default();
        up.set(i64::from(w.events.live));
        r.register("event_stream_up", "Whether systemd's signal stream is followed now (1) or lost (0)", up);
        let reconnects = Counter::<u64>::default();
        reconnects.inc_by(u64::from(w.events.reconnects));
        r.register("event_stream_reconnects", "Times the signal stream was lost and made again", reconnects);
        let signals = Counter::<u64>::default();
        signals.inc_by(w.events.signals);
        r.register("event_stream_signals", "Signals of systemd taken", signals);
        let queued = Gauge::<i64>::default();
        queued.set(i64::try_from(w.waiting.len()).unwrap_or(i64::MAX) + i64::from(w.deciding.is_some()));
        r.register("decisions_waiting", "Incidents recorded and waiting for, or in, their decision", queued);
        Ok(r)
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
            r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match self.render() {
            Ok(text) => {
                let mut r = reply(StatusCode::OK, text);
                r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(CONTENT_TYPE));
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "a scrape could not be answered");
                reply(StatusCode::INTERNAL_SERVER_ERROR, format!("the metrics could not be read: {e}\n"))
            }
        }
    }
}

fn reply(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r
}

/// What one listener serves: `/metrics`, `/alertmanager`, or both (when
/// `metrics.listen` and `alertmanager.listen` are one address).
#[derive(Default)]
pub struct Routes {
    pub metrics: Option<Exporter>,
    pub alerts: Option<Rc<Receiver>>,
}

impl Routes {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.uri().path(), &self.metrics, &self.alerts) {
            ("/metrics", Some(exporter), _) => exporter.answer(&request),
            ("/alertmanager", _, Some(alerts)) => alerts.answer(request).await,
            _ => {
                let served = [self.metrics.as_ref().map(|_| "/metrics"), self.alerts.as_ref().map(|_| "/alertmanager")];
                let served: Vec<&str> = served.into_iter().flatten().collect();
                reply(StatusCode::NOT_FOUND, format!("not found: only {} is served here\n", served.join(" and ")))
            }
        }
    }
}

/// Listens on `addr`; the error names the address and the key (`key`).
pub async fn listen(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("{key} = \"{addr}\": cannot listen there: {e}"))
}

/// Serves `routes` on `listener` until the task is dropped. Must run on a
/// `LocalSet` (the routes read the daemon's own status and state).
pub async fn serve(listener: TcpListener, routes: Rc<Routes>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait, then accept again.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let routes = routes.clone();
        tokio::task::spawn_local(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(routes.answer(request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            // A client that goes quiet is dropped after the head's timeout.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
        });
    }
}
