//! KEDA trigger type names → metadata parsers. The trigger names the type in `scalerType`.
//!
//! A [`Registry`] is a value: the engine holds one, with the [`ScalerContext`] every poller it
//! builds gets. `ebb serve` and `ebb check` build it with [`Registry::builtin`] from the same
//! [`Settings`] (`ebb bench` runs `ebb serve`); tests register scalers they control.
//!
//! Adding a scaler is one line in the crate root's `sources!`: its module, whose `SCALER_TYPE`,
//! `parse` and `EXAMPLE` (valid metadata, which the contract test in `tests/contract.rs` runs
//! every registered scaler through) register it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::{ConfigError, ConfigErrors, Metadata, Poller, Scaler, ScalerContext, Settings};

/// A parser from trigger metadata to a typed scaler config.
pub type ParseFn = fn(&Metadata<'_>) -> Result<Arc<dyn Scaler>, ConfigErrors>;

/// A parser that may hold state (test doubles).
pub type DynParse = Arc<dyn Fn(&Metadata<'_>) -> Result<Arc<dyn Scaler>, ConfigErrors> + Send + Sync>;

/// One scaler type.
#[derive(Clone)]
pub struct Registration {
    /// KEDA's trigger type name (`prometheus`).
    pub scaler_type: &'static str,
    pub parse: DynParse,
    /// Metadata that parses, with every secret value containing `s3cr3t` (the contract test
    /// checks that it never shows).
    pub example: &'static [(&'static str, &'static str)],
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration").field("scaler_type", &self.scaler_type).finish_non_exhaustive()
    }
}

impl Registration {
    pub fn new(scaler_type: &'static str, parse: ParseFn, example: &'static [(&'static str, &'static str)]) -> Self {
        Self { scaler_type, parse: Arc::new(parse), example }
    }
}

/// Every scaler type ebb serves, sorted by name (as KEDA keeps its `switch`; a test checks).
pub fn builtin() -> Vec<Registration> {
    crate::builtin_scalers()
}

/// The metadata key naming the scaler type.
pub const SCALER_TYPE_KEY: &str = "scalerType";

/// Scaler types and the context their pollers are built with.
#[derive(Debug, Clone)]
pub struct Registry {
    scalers: Vec<Registration>,
    context: Arc<ScalerContext>,
}

impl Registry {
    /// Every built-in scaler, with a context built from `settings`.
    pub fn builtin(settings: Settings) -> Self {
        Self { scalers: builtin(), context: Arc::new(ScalerContext::new(settings)) }
    }

    /// No scaler yet ([`Registry::register`] adds them).
    pub fn empty(context: ScalerContext) -> Self {
        Self { scalers: Vec::new(), context: Arc::new(context) }
    }

    /// Adds (or replaces) a scaler type.
    pub fn register(mut self, r: Registration) -> Self {
        self.scalers.retain(|s| s.scaler_type != r.scaler_type);
        self.scalers.push(r);
        self.scalers.sort_by_key(|s| s.scaler_type);
        self
    }

    pub fn scalers(&self) -> &[Registration] {
        &self.scalers
    }

    pub fn context(&self) -> &Arc<ScalerContext> {
        &self.context
    }

    /// Parses a trigger's metadata with the scaler named by its `scalerType`.
    pub fn parse(&self, map: &HashMap<String, String>) -> Result<Arc<dyn Scaler>, ConfigErrors> {
        let md = Metadata::new(map);
        let ty = md.required(SCALER_TYPE_KEY)?;
        let known = || self.scalers.iter().map(|s| s.scaler_type).collect::<Vec<_>>().join(", ");
        let r = self.scalers.iter().find(|s| s.scaler_type == ty).ok_or_else(|| {
            ConfigError::new(SCALER_TYPE_KEY, format!("unknown scaler type {ty:?}; known: {}", known()))
        })?;
        (r.parse)(&md)
    }

    /// The poller for a parsed trigger, built with this registry's context.
    pub fn poller(&self, scaler: &dyn Scaler) -> Result<Arc<dyn Poller>, ConfigErrors> {
        scaler.poller(&self.context)
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin(Settings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_sorted_and_unique() {
        let names: Vec<_> = builtin().iter().map(|r| r.scaler_type).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn missing_or_unknown_scaler_type_names_the_key() {
        let reg = Registry::default();
        let e = reg.parse(&HashMap::new()).unwrap_err();
        assert_eq!(e.keys(), vec!["scalerType"]);
        let m: HashMap<_, _> = [("scalerType".to_string(), "rabbitmq".to_string())].into();
        let e = reg.parse(&m).unwrap_err();
        assert_eq!(e.keys(), vec!["scalerType"]);
        assert!(e.to_string().contains("prometheus"), "{e}");
    }
}
