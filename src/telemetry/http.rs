//! The HTTP series: requests and their latency by route template, method and status,
//! registered on first use.

use std::sync::PoisonError;
use std::time::Duration;

use axum::http::Method;
use metrics::{Counter, Histogram, Key, Label, Recorder};

use super::{Metrics, META};

/// The series of one route, by method and status.
pub(super) type RouteSeries = Vec<(Method, u16, HttpSeries)>;

#[derive(Clone)]
pub(super) struct HttpSeries {
    requests: Counter,
    duration: Histogram,
}

impl Metrics {
    /// Records one HTTP request.
    pub fn request(&self, route: &str, method: &Method, status: u16, took: Duration) {
        let record = |series: &HttpSeries| {
            series.requests.increment(1);
            series.duration.record(took.as_secs_f64());
        };
        {
            let http = self.http.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, _, series)) = http
                .get(route)
                .and_then(|v| v.iter().find(|(m, s, _)| m == method && *s == status))
            {
                record(series);
                return;
            }
        }
        record(&self.register_http(route, method, status));
    }

    fn register_http(&self, route: &str, method: &Method, status: u16) -> HttpSeries {
        let mut http = self.http.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, series)) = http
            .get(route)
            .and_then(|v| v.iter().find(|(m, s, _)| m == method && *s == status))
        {
            return series.clone();
        }
        let labels = || {
            vec![
                Label::new("route", route.to_owned()),
                Label::new("method", method_label(method)),
                Label::new("status", status.to_string()),
            ]
        };
        let series = HttpSeries {
            requests: self.recorder.register_counter(
                &Key::from_parts("heimdall_http_requests_total", labels()),
                &META,
            ),
            duration: self.recorder.register_histogram(
                &Key::from_parts("heimdall_http_request_duration_seconds", labels()),
                &META,
            ),
        };
        http.entry(route.to_owned())
            .or_default()
            .push((method.clone(), status, series.clone()));
        series
    }
}

/// Methods outside the standard set share one label value.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
