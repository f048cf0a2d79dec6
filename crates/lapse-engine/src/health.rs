//! The health report (SPEC §6 `/v1/health`, seed 004's health check): what is open, what is
//! overdue, what is stuck, and what to do about it; and the same counts as `/metrics` reads
//! them, at most once every few seconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapse_core::store::{DeliveryStatus, HealthCounts, StatusCount};
use lapse_core::{Span, Timestamp};
use serde::Serialize;

use crate::{Caller, Engine, EngineError};

/// A rule is overdue once it has waited this long past its wake-up.
const OVERDUE_AFTER: Span = Span::from_secs(60);
/// A pending session is stale after this long.
const STALE_AFTER: Span = Span::from_secs(3600);
/// This many overdue sessions means the sweeper is not keeping up at all.
const UNHEALTHY_OVERDUE: i64 = 1000;
/// This many pending deliveries means endpoints are not keeping up.
const WEBHOOK_BACKLOG: i64 = 1000;
/// How long `/metrics` reports the database's counts as read once.
pub const COUNTS_FRESH_FOR: Span = Span::from_secs(5);

/// The database's counts as `/metrics` reports them: sessions by kind and status, and the
/// health counts.
#[derive(Debug)]
pub struct Counted {
    /// Sessions by kind and status.
    pub sessions: Vec<StatusCount>,
    /// Overdue and stale sessions, deliveries waiting and given up.
    pub health: HealthCounts,
}

impl Counted {
    /// Webhook deliveries waiting and given up, by status name.
    pub fn webhooks(&self) -> BTreeMap<&'static str, i64> {
        by_delivery_status(&self.health)
    }
}

/// The deliveries of `counts` waiting and given up, by status name (as the health report and
/// `/metrics` show them).
fn by_delivery_status(counts: &HealthCounts) -> BTreeMap<&'static str, i64> {
    BTreeMap::from([
        (DeliveryStatus::Pending.as_str(), counts.deliveries_pending),
        (DeliveryStatus::Dead.as_str(), counts.deliveries_dead),
    ])
}

/// The last [`Counted`]: when, by the engine's clock and by the machine's, and what.
pub(crate) type LastCounted = tokio::sync::Mutex<Option<(Timestamp, Instant, Arc<Counted>)>>;

/// Overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Nothing to do.
    Healthy,
    /// Working, with problems worth a look.
    Degraded,
    /// Not doing its job.
    Unhealthy,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// A stable code to alert on.
    pub code: &'static str,
    /// What was found.
    pub detail: String,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    /// The verdict.
    pub health: Health,
    /// When it was judged.
    pub now: Timestamp,
    /// Sessions by status.
    pub sessions: BTreeMap<&'static str, i64>,
    /// Sessions whose rules are due for over a minute and not applied.
    pub overdue: i64,
    /// Pending sessions older than an hour.
    pub stale_pending: i64,
    /// Webhook deliveries waiting, and given up.
    pub webhooks: BTreeMap<&'static str, i64>,
    /// Findings.
    pub problems: Vec<Problem>,
    /// What to do about them.
    pub recommendations: Vec<String>,
}

impl Engine {
    /// The database's counts for `/metrics`, read at most once every [`COUNTS_FRESH_FOR`].
    ///
    /// Counting sessions by kind and status reads every entry of an index: about 80 ms at a
    /// million sessions. `/metrics` takes no credentials, so a scrape must not be able to ask
    /// for that as often as it likes: every scrape within the interval gets the same counts,
    /// and scrapes that come while they are being read wait for them. Fresh means fresh by
    /// both clocks: the engine's (a test moves it) and the machine's (a manual clock that
    /// stands still does not freeze them).
    pub async fn counted(&self) -> Result<Arc<Counted>, EngineError> {
        let mut last = self.counted.lock().await;
        let now = self.now();
        if let Some((at, read, counted)) = &*last
            && now.since(*at) < COUNTS_FRESH_FOR
            && read.elapsed() < Duration::from_millis(COUNTS_FRESH_FOR.millis() as u64)
        {
            return Ok(counted.clone());
        }
        let counted = Arc::new(Counted {
            sessions: self.store.counts().await?,
            health: self
                .store
                .health_counts(now - OVERDUE_AFTER, now - STALE_AFTER)
                .await?,
        });
        *last = Some((now, Instant::now(), counted.clone()));
        Ok(counted)
    }

    /// Judges the deployment's health now.
    pub async fn health(&self, caller: &Caller) -> Result<HealthReport, EngineError> {
        if matches!(caller, Caller::User(_)) {
            return Err(EngineError::Forbidden(
                "health needs an admin, service or cron credential".into(),
            ));
        }
        let now = self.now();
        let counts = self.store.counts().await?;
        let health_counts = self
            .store
            .health_counts(now - OVERDUE_AFTER, now - STALE_AFTER)
            .await?;
        let webhooks = by_delivery_status(&health_counts);
        let HealthCounts {
            overdue,
            stale_pending,
            deliveries_pending,
            deliveries_dead,
        } = health_counts;
        let mut sessions = BTreeMap::from([("total", 0)]);
        for c in &counts {
            *sessions.entry(c.status.as_str()).or_default() += c.count;
            *sessions.entry("total").or_default() += c.count;
        }

        let mut problems = Vec::new();
        let mut recommendations = Vec::new();
        if overdue > 0 {
            problems.push(Problem {
                code: "overdue_rules",
                detail: format!(
                    "{overdue} session(s) have rules due for over a minute and not applied"
                ),
            });
            recommendations.push(if self.clock.is_manual() {
                "The clock is manual: rules apply only on /v1/sweep and on access; call /v1/sweep."
                    .into()
            } else {
                "Check that the sweeper runs (`lapse serve`, or a cron job calling /v1/sweep or \
                 `lapse sweep`) and that the database keeps up."
                    .into()
            });
        }
        if stale_pending > 0 {
            problems.push(Problem {
                code: "stale_pending",
                detail: format!("{stale_pending} session(s) have been pending for over an hour"),
            });
            recommendations.push(
                "If nobody will start them, give their kind an `unused` or `pending` rule so \
                 they stop blocking hosts (see `lapse explain ID`)."
                    .into(),
            );
        }
        if deliveries_pending > WEBHOOK_BACKLOG {
            problems.push(Problem {
                code: "webhook_backlog",
                detail: format!("{deliveries_pending} webhook deliveries are waiting"),
            });
            recommendations.push("Check that webhook endpoints answer quickly with 2xx.".into());
        }
        if deliveries_dead > 0 {
            problems.push(Problem {
                code: "webhook_dead",
                detail: format!("{deliveries_dead} webhook deliveries gave up"),
            });
            recommendations.push(
                "See GET /v1/webhooks/deliveries?status=dead, fix the endpoint, then \
                 POST /v1/webhooks/deliveries/{id}/retry."
                    .into(),
            );
        }
        let health = if overdue >= UNHEALTHY_OVERDUE {
            Health::Unhealthy
        } else if problems.is_empty() {
            recommendations.push("All systems healthy".into());
            Health::Healthy
        } else {
            Health::Degraded
        };
        Ok(HealthReport {
            health,
            now,
            sessions,
            overdue,
            stale_pending,
            webhooks,
            problems,
            recommendations,
        })
    }
}
