//! Where configuration values come from: [`Env`], the process environment or a map, and
//! [`ConfigError`], which names the variable at fault.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::secret::Secret;

/// A value of one environment variable could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value for {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// Why its value was refused (the value itself is left out: it may be a secret).
    pub reason: String,
}

impl ConfigError {
    pub fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self {
            var,
            reason: reason.into(),
        }
    }
}

/// Where configuration values come from.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    /// Every variable asked for, set or not (docs/configuration.md is checked against it).
    asked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Env {
    /// The process environment, read once.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
            asked: Default::default(),
        }
    }

    /// A fixed set of variables, for tests and tools.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            asked: Default::default(),
        }
    }

    /// The names of every variable asked for so far, set or not.
    pub fn asked(&self) -> Vec<String> {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The raw value; an empty value counts as unset.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(var.to_owned());
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn string(&self, var: &'static str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_owned()
    }

    /// Parses `var` with `FromStr`, falling back to `default` when unset.
    pub fn parse<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e| ConfigError::new(var, format!("{e} (got {raw:?})"))),
        }
    }

    pub fn parse_opt<T>(&self, var: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(var)
            .map(|raw| {
                raw.trim()
                    .parse()
                    .map_err(|e| ConfigError::new(var, format!("{e} (got {raw:?})")))
            })
            .transpose()
    }

    /// A whole number within `min..=max`.
    pub fn bounded(
        &self,
        var: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let v: u64 = self.parse(var, default)?;
        if v < min || v > max {
            return Err(ConfigError::new(
                var,
                format!("{v} is outside {min}..={max}"),
            ));
        }
        Ok(v)
    }

    pub fn millis(
        &self,
        var: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        self.bounded(var, default, min, max)
            .map(Duration::from_millis)
    }

    pub fn addr(&self, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.get(var).unwrap_or(default);
        raw.parse()
            .map_err(|e| ConfigError::new(var, format!("{e} (got {raw:?}, want HOST:PORT)")))
    }

    pub fn secret(&self, var: &'static str, default: Option<&str>) -> Option<Secret> {
        self.get(var).or(default).map(|v| Secret::new(v.to_owned()))
    }
}
