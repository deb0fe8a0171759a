//! KEDA trigger type names → metadata parsers. The trigger names the type in `scalerType`.
//!
//! Kept as a sorted slice (as KEDA keeps its `switch` sorted); a test checks the order.

use std::collections::HashMap;
use std::sync::Arc;

use crate::{ConfigError, ConfigErrors, Metadata, Scaler};

/// A parser from trigger metadata to a typed scaler config.
pub type ParseFn = fn(&Metadata<'_>) -> Result<Arc<dyn Scaler>, ConfigErrors>;

/// Every scaler type ebb serves, sorted by name.
pub const SCALERS: &[(&str, ParseFn)] = &[
    ("azure-eventhub", crate::azure_eventhub::parse),
    ("azure-queue", crate::azure_queue::parse),
    ("azure-servicebus", crate::azure_servicebus::parse),
    ("kafka", crate::kafka::parse),
    ("prometheus", crate::prometheus::parse),
];

/// The metadata key naming the scaler type.
pub const SCALER_TYPE_KEY: &str = "scalerType";

/// Parses a trigger's metadata with the scaler named by its `scalerType`.
pub fn parse(map: &HashMap<String, String>) -> Result<Arc<dyn Scaler>, ConfigErrors> {
    let md = Metadata::new(map);
    let ty = md.required(SCALER_TYPE_KEY)?;
    let known = || SCALERS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    let parse =
        SCALERS.iter().find(|(name, _)| *name == ty).map(|(_, f)| *f).ok_or_else(|| {
            ConfigError::new(SCALER_TYPE_KEY, format!("unknown scaler type {ty:?}; known: {}", known()))
        })?;
    parse(&md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_sorted_and_unique() {
        let names: Vec<_> = SCALERS.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn missing_or_unknown_scaler_type_names_the_key() {
        let e = parse(&HashMap::new()).unwrap_err();
        assert_eq!(e.keys(), vec!["scalerType"]);
        let m: HashMap<_, _> = [("scalerType".to_string(), "rabbitmq".to_string())].into();
        let e = parse(&m).unwrap_err();
        assert_eq!(e.keys(), vec!["scalerType"]);
        assert!(e.to_string().contains("prometheus"), "{e}");
    }
}
