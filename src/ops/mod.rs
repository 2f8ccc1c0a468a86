//! Operations over many databases and sets: the TOML config that names them ([`config`]), and
//! their health — `status` rows, staleness, Prometheus text and the loopback metrics endpoint
//! ([`health`]), the schedules that run walbundle unattended ([`schedule`]), and
//! [`protect::Protector`], continuous capture embedded in an application.

pub mod backup;
pub mod config;
pub mod health;
pub mod list;
pub mod protect;
pub mod schedule;
pub mod sources;
