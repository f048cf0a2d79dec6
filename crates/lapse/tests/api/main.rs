//! lapse over HTTP: the real server on a random port, a temp database, a manual clock. One
//! module per seed system, plus the races, errors and identity rules.

mod helpers;

mod config;
mod errors;
mod identity;
mod races;
mod seed_000_study;
mod seed_001_reading;
mod seed_002_mentoring;
mod seed_003_coding;
mod seed_004_repair;
