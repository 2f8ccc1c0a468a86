//! Operations over many databases and sets: the TOML config that names them ([`config`]), and
//! their health — `status` rows, staleness, Prometheus text and the loopback metrics endpoint
//! ([`health`]), the schedules that run walbundle unattended ([`schedule`]),
//! [`protect::Protector`], continuous capture embedded in an application, and [`demo`], the
//! main job end to end on a database of its own.

pub mod backup;
pub mod config;
pub mod demo;
pub mod health;
pub mod hook;
pub mod list;
pub mod protect;
pub mod schedule;
pub mod sources;
