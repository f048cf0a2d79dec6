//! lapse as its own process, the way a service manager runs it: stopped with SIGTERM, killed
//! with SIGKILL, started again on the same database, and judged by what the database holds
//! afterwards.

mod cli;
mod crash;
mod kills;
mod ledger;
mod logs;
mod outage;
mod reload;
mod retention;
mod running;
mod shutdown;
