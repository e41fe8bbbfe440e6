//! The example workflows `flywheel serve --load-examples` creates, so that
//! a new user has something to run in the first minute.

use anyhow::Context;
use flywheel_model::Specification;
use flywheel_store::records::NewWorkflow;
use flywheel_store::{Store, StoreError};
use serde_json::Value;
use tracing::info;
use uuid::Uuid;

/// (file name, YAML) of each example.
const EXAMPLES: &[(&str, &str)] = &[
    ("hello.yaml", include_str!("../../../examples/hello.yaml")),
    ("acme-invoices.yaml", include_str!("../../../examples/acme-invoices.yaml")),
];

/// Creates each example whose slug is not taken yet. `$FLYWHEEL_URL` in an
/// example becomes `public_url` (the demo portal is served by this server).
pub async fn load(store: &dyn Store, public_url: &str) -> anyhow::Result<()> {
    for (file, yaml) in EXAMPLES {
        let yaml = yaml.replace("$FLYWHEEL_URL", public_url.trim_end_matches('/'));
        let doc: Value = serde_yaml_ng::from_str(&yaml).with_context(|| format!("example {file} is not valid YAML"))?;
        let slug = doc["slug"].as_str().context("examples have a slug")?.to_owned();
        match store.get_workflow(&slug).await {
            Ok(_) => continue,
            Err(StoreError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
        let parsed = Specification::parse(&doc["specification"])
            .map_err(|e| anyhow::anyhow!("example {file} has an invalid specification: {e:?}"))?;
        store
            .create_workflow(NewWorkflow {
                uuid: Uuid::now_v7(),
                version_uuid: Uuid::now_v7(),
                name: doc["name"].as_str().unwrap_or(&slug).to_owned(),
                slug: slug.clone(),
                description: doc["description"].as_str().unwrap_or_default().to_owned(),
                specification: parsed.normalized,
            })
            .await?;
        info!(%slug, "created the example workflow");
    }
    Ok(())
}
