//! The OpenAPI 3.1 document served at `GET /openapi.json`. Each API surface
//! keeps its own fragment (`paths` and `components.schemas`) beside the
//! others here; `document()` merges them. `route::tests` fails if the merged
//! document and the route table disagree.

use serde_json::{Map, Value};

/// `base.json` first (info, shared schemas, health), then one per surface.
const FRAGMENTS: &[(&str, &str)] = &[
    ("base.json", include_str!("openapi.json")),
    ("keys.json", include_str!("../keys/openapi.json")),
    (
        "workspaces.json",
        include_str!("../workspaces/openapi.json"),
    ),
    ("execute.json", include_str!("../executes/openapi.json")),
    ("runs.json", include_str!("../runs/openapi.json")),
    ("computers.json", include_str!("../computers/openapi.json")),
    ("billing.json", include_str!("../billing/openapi.json")),
];

/// The merged document. A fragment that fails to parse is a build-time bug
/// caught by the unit tests; at runtime it is skipped rather than panicking.
pub fn document() -> Value {
    let mut doc = Value::Object(Map::new());
    for (_, text) in FRAGMENTS {
        if let Ok(fragment) = serde_json::from_str::<Value>(text) {
            merge(&mut doc, fragment);
        }
    }
    doc
}

/// Deep-merges objects; anything else in `from` replaces what `into` had.
fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in b {
                merge(a.entry(key).or_insert(Value::Null), value);
            }
        }
        (slot, value) => *slot = value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fragment_parses_and_adds_no_duplicate_path_or_schema() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, text) in FRAGMENTS {
            let fragment: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            let paths = fragment["paths"].as_object().into_iter().flatten();
            let schemas = fragment["components"]["schemas"]
                .as_object()
                .into_iter()
                .flatten();
            for (key, _) in paths.chain(schemas) {
                assert!(seen.insert(key.clone()), "{name} redefines {key}");
            }
        }
    }

    #[test]
    fn merging_keeps_both_sides() {
        let mut a = serde_json::json!({"paths": {"/a": {}}, "info": {"title": "t"}});
        merge(&mut a, serde_json::json!({"paths": {"/b": {}}}));
        assert!(a["paths"]["/a"].is_object() && a["paths"]["/b"].is_object());
        assert_eq!(a["info"]["title"], "t");
    }
}
