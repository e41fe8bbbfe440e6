//! Input payloads checked against a workflow's `payload_schema` (JSON
//! Schema, any draft). Violations are warnings, or a 422 when the
//! specification sets `strict_payload`. Compiled schemas are cached per
//! workflow version: versions never change, so neither do their schemas.

use flywheel_model::field_error::LocSegment;
use flywheel_model::FieldError;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Most compiled schemas kept.
const MAX_CACHED: usize = 1024;

/// Checks that `schema` is a usable JSON Schema.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    jsonschema::validator_for(schema).map(|_| ()).map_err(|e| e.to_string())
}

#[derive(Default)]
pub struct ValidatorCache {
    validators: Mutex<HashMap<Uuid, Arc<jsonschema::Validator>>>,
}

impl ValidatorCache {
    /// Validates `payload` against the schema of `version`; returns one
    /// error per violation, located under `loc`.
    pub fn validate(
        &self,
        version: Uuid,
        schema: &Value,
        payload: &Value,
        loc: &[LocSegment],
    ) -> Result<Vec<FieldError>, String> {
        let validator = self.get_or_compile(version, schema)?;
        Ok(validator
            .iter_errors(payload)
            .map(|err| {
                let mut path = loc.to_vec();
                for segment in err.instance_path().as_str().split('/').skip(1) {
                    let segment = segment.replace("~1", "/").replace("~0", "~");
                    path.push(match segment.parse::<usize>() {
                        Ok(i) => LocSegment::Index(i),
                        Err(_) => LocSegment::Key(segment),
                    });
                }
                FieldError::new(path, "schema_error", err.to_string())
            })
            .collect())
    }

    fn get_or_compile(&self, version: Uuid, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        if let Some(v) = self.lock().get(&version) {
            return Ok(v.clone());
        }
        let compiled = Arc::new(jsonschema::validator_for(schema).map_err(|e| e.to_string())?);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(version, compiled.clone());
        Ok(compiled)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<jsonschema::Validator>>> {
        self.validators.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn violations_point_into_the_payload() {
        let cache = ValidatorCache::default();
        let schema = json!({"type": "object", "required": ["email"], "properties": {"age": {"type": "integer"}}});
        let errors = cache
            .validate(Uuid::now_v7(), &schema, &json!({"age": "old"}), &["body".into(), "inputPayload".into()])
            .unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.msg.contains("email")));
        assert!(errors.iter().any(|e| e.to_string().starts_with("body.inputPayload.age:")));
        assert!(cache.validate(Uuid::now_v7(), &schema, &json!({"email": "a@b"}), &[]).unwrap().is_empty());
        assert!(check_schema(&json!({"type": 12})).is_err());
    }
}
