//! The health report (SPEC §6 `/v1/health`, seed 004's health check): what is open, what is
//! overdue, what is stuck, and what to do about it.

use std::collections::BTreeMap;

use lapse_core::store::HealthCounts;
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
    /// Judges the deployment's health now.
    pub async fn health(&self, caller: &Caller) -> Result<HealthReport, EngineError> {
        if matches!(caller, Caller::User(_)) {
            return Err(EngineError::Forbidden(
                "health needs an admin, service or cron credential".into(),
            ));
        }
        let now = self.now();
        let counts = self.store.counts().await?;
        let HealthCounts {
            overdue,
            stale_pending,
            deliveries_pending,
            deliveries_dead,
        } = self
            .store
            .health_counts(now - OVERDUE_AFTER, now - STALE_AFTER)
            .await?;
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
        let webhooks = BTreeMap::from([("pending", deliveries_pending), ("dead", deliveries_dead)]);
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
