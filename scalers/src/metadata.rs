//! Trigger metadata with KEDA's lookup rules.
//!
//! KEDA hands an external scaler the trigger's `metadata` map as it is, except that every
//! `<key>FromEnv` entry arrives with the *resolved* environment value under the same
//! `<key>FromEnv` name. So a key is looked up as `<key>`, then as `<key>FromEnv`. Values are trimmed and an empty value counts as missing, as in KEDA's
//! `scalersconfig/typed_config.go`.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// One invalid or missing metadata key. The message names the key and never carries the
/// value of a secret key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The metadata key at fault, as the user wrote it in the trigger.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { key: key.into(), reason: reason.into() }
    }

    pub fn missing(key: &str) -> Self {
        Self::new(key, "required key is missing")
    }
}

/// Every problem found in one trigger's metadata, so the user sees all of them at once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    /// `Ok(())` when nothing was recorded.
    pub fn into_result(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The keys at fault, in the order found.
    pub fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.key.as_str()).collect()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read-only view of a trigger's metadata map.
#[derive(Debug, Clone, Copy)]
pub struct Metadata<'a> {
    map: &'a HashMap<String, String>,
}

impl<'a> Metadata<'a> {
    pub fn new(map: &'a HashMap<String, String>) -> Self {
        Self { map }
    }

    pub fn raw(&self) -> &'a HashMap<String, String> {
        self.map
    }

    /// The trimmed value of `key`, else of `<key>FromEnv`; `None` when absent or empty.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        let direct = self.map.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        direct.or_else(|| self.map.get(&format!("{key}FromEnv")).map(|v| v.trim()).filter(|v| !v.is_empty()))
    }

    /// Like [`Metadata::get`] but the value is not trimmed: secrets and PEM blocks are
    /// passed on exactly as given (PEM is trimmed of surrounding blank lines only).
    pub fn get_untrimmed(&self, key: &str) -> Option<&'a str> {
        let pick = |k: &str| self.map.get(k).map(String::as_str).filter(|v| !v.trim().is_empty());
        pick(key).or_else(|| pick(&format!("{key}FromEnv")))
    }

    pub fn required(&self, key: &str) -> Result<&'a str, ConfigError> {
        self.get(key).ok_or_else(|| ConfigError::missing(key))
    }

    /// A float: KEDA parses with Go's `strconv.ParseFloat`, which rejects NaN only when
    /// asked to; we reject NaN and infinities since no threshold can be either.
    pub fn f64(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        self.get(key)
            .map(|v| match v.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                _ => Err(ConfigError::new(key, format!("{v:?} is not a number"))),
            })
            .transpose()
    }

    pub fn i64(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        self.get(key)
            .map(|v| v.parse::<i64>().map_err(|_| ConfigError::new(key, format!("{v:?} is not an integer"))))
            .transpose()
    }

    pub fn u32(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.parse::<u32>().map_err(|_| ConfigError::new(key, format!("{v:?} is not a non-negative integer")))
            })
            .transpose()
    }

    /// A boolean as Go's `strconv.ParseBool` reads it.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|v| match v {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
                "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
                _ => Err(ConfigError::new(key, format!("{v:?} is not a boolean"))),
            })
            .transpose()
    }

    /// Seconds, fractional allowed (`"0.5"`, `"30"`). Must be > 0.
    pub fn seconds(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        self.get(key)
            .map(|v| match v.parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
                _ => Err(ConfigError::new(key, format!("{v:?} is not a positive number of seconds"))),
            })
            .transpose()
    }

    /// One of a fixed set of values, compared case-insensitively as KEDA does for enums.
    pub fn one_of(&self, key: &str, allowed: &[&'static str]) -> Result<Option<&'static str>, ConfigError> {
        self.get(key)
            .map(|v| {
                allowed
                    .iter()
                    .copied()
                    .find(|a| a.eq_ignore_ascii_case(v))
                    .ok_or_else(|| ConfigError::new(key, format!("{v:?} is not one of {}", allowed.join(", "))))
            })
            .transpose()
    }

    /// A `k=v,k=v` list (KEDA's `customHeaders`, `queryParameters`). Pairs are trimmed;
    /// a pair without `=` is an error naming the key. Values are not echoed, since
    /// headers often carry credentials.
    pub fn pairs(&self, key: &str) -> Result<Vec<(String, String)>, ConfigError> {
        let Some(v) = self.get(key) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for (i, item) in v.split(',').enumerate() {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            match item.split_once('=') {
                Some((k, val)) if !k.trim().is_empty() => out.push((k.trim().to_string(), val.trim().to_string())),
                _ => {
                    return Err(ConfigError::new(key, format!("entry {} is not of the form key=value", i + 1)));
                }
            }
        }
        Ok(out)
    }
}

/// Collects the `Ok` value of a lookup, recording the error otherwise.
pub fn collect<T>(errors: &mut ConfigErrors, r: Result<T, ConfigError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn from_env_key_is_read_when_plain_key_is_absent() {
        // KEDA resolves `passwordFromEnv` and delivers the value under the same key.
        let m = md(&[("passwordFromEnv", "s3cret")]);
        assert_eq!(Metadata::new(&m).get("password"), Some("s3cret"));
        let m = md(&[("password", "a"), ("passwordFromEnv", "b")]);
        assert_eq!(Metadata::new(&m).get("password"), Some("a"));
    }

    #[test]
    fn empty_and_blank_values_count_as_missing() {
        let m = md(&[("query", "   ")]);
        assert_eq!(Metadata::new(&m).get("query"), None);
        assert_eq!(Metadata::new(&m).required("query").unwrap_err().key, "query");
    }

    #[test]
    fn typed_getters_name_the_key() {
        let m = md(&[("threshold", "ten"), ("flag", "yes"), ("n", "-1"), ("pollingInterval", "0")]);
        let m = Metadata::new(&m);
        assert_eq!(m.f64("threshold").unwrap_err().key, "threshold");
        assert_eq!(m.bool("flag").unwrap_err().key, "flag");
        assert_eq!(m.u32("n").unwrap_err().key, "n");
        assert_eq!(m.seconds("pollingInterval").unwrap_err().key, "pollingInterval");
    }

    #[test]
    fn go_parse_bool_spellings() {
        for (v, want) in [("1", true), ("t", true), ("TRUE", true), ("0", false), ("F", false), ("false", false)] {
            let m = md(&[("b", v)]);
            assert_eq!(Metadata::new(&m).bool("b").unwrap(), Some(want), "{v}");
        }
    }

    #[test]
    fn fractional_seconds() {
        let m = md(&[("pollingInterval", "0.25")]);
        assert_eq!(Metadata::new(&m).seconds("pollingInterval").unwrap(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn pairs_parse_and_reject_without_echoing_values() {
        let m = md(&[("customHeaders", "X-A=1, X-B = two ,")]);
        assert_eq!(
            Metadata::new(&m).pairs("customHeaders").unwrap(),
            vec![("X-A".into(), "1".into()), ("X-B".into(), "two".into())]
        );
        let m = md(&[("customHeaders", "X-A=1,secretvalue")]);
        let e = Metadata::new(&m).pairs("customHeaders").unwrap_err();
        assert_eq!(e.key, "customHeaders");
        assert!(!e.to_string().contains("secretvalue"));
    }
}
