//! The CLI client: commands that talk to a Flywheel server over its HTTP API.
//! Errors become one clear line on stderr and a non-zero exit.

use crate::output::{self, LiveStatus};
use crate::sse::SseReader;
use crate::{ClientArgs, ExecuteArgs, ExecutionsCommand, SecretsCommand, WorkflowsCommand};
use anyhow::{anyhow, bail, Context};
use flywheel_server::routes::workflows::slugify;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub enum ClientCommand {
    Workflows(WorkflowsCommand),
    Execute(ExecuteArgs),
    Executions(ExecutionsCommand),
    Secrets(SecretsCommand),
}

/// Runs a client command; returns the process exit code.
pub fn run(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start a runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: ClientCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClientCommand::Workflows(cmd) => workflows(cmd).await,
        ClientCommand::Execute(args) => execute(args).await,
        ClientCommand::Executions(cmd) => executions(cmd).await,
        ClientCommand::Secrets(cmd) => secrets(cmd).await,
    }
}

/// A connection to one server.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let key = args.api_key.clone().or_else(|| {
            std::fs::read_to_string("data/api-key").ok().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty())
        });
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("could not create an HTTP client")?;
        Ok(Client { http, base: args.url.trim_end_matches('/').to_owned(), key })
    }

    fn builder(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        request
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "could not reach Flywheel at {}: is `flywheel serve` running? (set FLYWHEEL_URL to another server)",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(anyhow!("{}", describe_error(status, &body, self.key.is_some())))
    }

    /// Sends a request and returns the JSON answer (`null` for 204).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut request = self.builder(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        response.json().await.context("the server's answer is not JSON")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// Opens the event stream of an execution after `after`.
    pub async fn events(&self, execution: &str, after: i64) -> anyhow::Result<SseReader> {
        let request = self
            .builder(Method::GET, &format!("/api/executions/{execution}/events"))
            .header("last-event-id", after.to_string());
        Ok(SseReader::new(self.send(request).await?))
    }
}

/// One line for a failed request, from the FastAPI error body.
fn describe_error(status: StatusCode, body: &Value, has_key: bool) -> String {
    let detail = match &body["detail"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let loc: Vec<String> = item["loc"]
                    .as_array()
                    .map(|l| l.iter().map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned)).collect())
                    .unwrap_or_default();
                let loc: Vec<String> = loc.into_iter().skip_while(|s| s == "body").collect();
                format!("{}: {}", loc.join("."), item["msg"].as_str().unwrap_or("invalid"))
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    if status == StatusCode::UNAUTHORIZED && !has_key {
        return format!("{detail} (no API key: set FLYWHEEL_API_KEY or pass --api-key)");
    }
    format!("{detail} ({})", status.as_u16())
}

/// Reads a workflow file (YAML or JSON; `-` is stdin) into a create body.
fn read_workflow_file(path: &Path) -> anyhow::Result<Value> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("could not read stdin")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?
    };
    let doc: Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not valid YAML or JSON", path.display()))?;
    let Value::Object(mut map) = doc else {
        bail!("{} must hold an object with name and specification", path.display());
    };
    if !map.contains_key("specification") && !map.contains_key("configuration") {
        let mut body = serde_json::Map::new();
        for key in ["name", "description", "slug"] {
            if let Some(v) = map.remove(key) {
                body.insert(key.to_owned(), v);
            }
        }
        body.insert("specification".into(), Value::Object(map));
        return Ok(Value::Object(body));
    }
    Ok(Value::Object(map))
}

/// `--input`: JSON, or `@file`.
fn read_input(raw: &str) -> anyhow::Result<Value> {
    let text = match raw.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("could not read {file}"))?,
        None => raw.to_owned(),
    };
    let value: Value = serde_json::from_str(&text).context("--input is not valid JSON")?;
    if !value.is_object() {
        bail!("--input must be a JSON object, like '{{\"name\": \"Ada\"}}'");
    }
    Ok(value)
}

/// The server's JSON for scripts, or the human form.
fn show(json: bool, value: &Value, human: impl FnOnce(&Value)) {
    if json {
        print_json(value);
    } else {
        human(value);
    }
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

async fn workflows(cmd: WorkflowsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkflowsCommand::Create { file, client } => {
            let body = read_workflow_file(&file)?;
            let c = Client::new(&client)?;
            let created = c.call(Method::POST, "/api/workflows", Some(&body)).await?;
            show(client.json, &created, |created| {
                println!(
                    "Created workflow {} ({}), version {}, uuid {}",
                    created["name"].as_str().unwrap_or_default(),
                    created["slug"].as_str().unwrap_or_default(),
                    created["current_version"],
                    created["workflow_uuid"].as_str().unwrap_or_default()
                );
                for warning in created["warnings"].as_array().into_iter().flatten() {
                    println!("warning: {}", warning.as_str().unwrap_or_default());
                }
            });
        }
        WorkflowsCommand::Apply { file, client } => {
            let body = read_workflow_file(&file)?;
            let c = Client::new(&client)?;
            let name = body["name"].as_str().context("the file has no name")?;
            let slug = body["slug"].as_str().map_or_else(|| slugify(name), str::to_owned);
            let existing = c.get(&format!("/api/workflows/{slug}")).await;
            let (verb, workflow) = match existing {
                Ok(current) => {
                    let before = current["current_version"].clone();
                    let updated = c.call(Method::PATCH, &format!("/api/workflows/{slug}"), Some(&body)).await?;
                    let verb = if updated["current_version"] == before { "Unchanged" } else { "Updated" };
                    (verb, updated)
                }
                Err(_) => ("Created", c.call(Method::POST, "/api/workflows", Some(&body)).await?),
            };
            show(client.json, &workflow, |workflow| {
                println!(
                    "{verb} workflow {} ({}), version {}",
                    workflow["name"].as_str().unwrap_or_default(),
                    workflow["slug"].as_str().unwrap_or_default(),
                    workflow["current_version"]
                );
                for warning in workflow["warnings"].as_array().into_iter().flatten() {
                    println!("warning: {}", warning.as_str().unwrap_or_default());
                }
            });
        }
        WorkflowsCommand::List { limit, client } => {
            let page = Client::new(&client)?.get(&format!("/api/workflows?limit={limit}")).await?;
            show(client.json, &page, |page| output::workflow_table(&page["items"]));
        }
        WorkflowsCommand::Get { workflow, client } => {
            let wf = Client::new(&client)?.get(&format!("/api/workflows/{workflow}")).await?;
            show(client.json, &wf, output::workflow_details);
        }
        WorkflowsCommand::Delete { workflow, yes, client } => {
            let c = Client::new(&client)?;
            if !yes {
                let wf = c.get(&format!("/api/workflows/{workflow}")).await?;
                let question = format!(
                    "Delete workflow {} ({}) with its {} versions, {} executions and their artifacts? [y/N] ",
                    wf["name"].as_str().unwrap_or_default(),
                    wf["slug"].as_str().unwrap_or_default(),
                    wf["versions"].as_array().map_or(0, Vec::len),
                    wf["executions"]
                );
                if !std::io::stdin().is_terminal() {
                    bail!("deleting needs confirmation: pass --yes");
                }
                eprint!("{question}");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer).context("could not read the answer")?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("Nothing deleted.");
                    return Ok(ExitCode::FAILURE);
                }
            }
            c.call(Method::DELETE, &format!("/api/workflows/{workflow}"), None).await?;
            if !client.json {
                println!("Deleted workflow {workflow} with its versions, executions and artifacts");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn execute(args: ExecuteArgs) -> anyhow::Result<ExitCode> {
    let input = read_input(&args.input)?;
    let client = Client::new(&args.client)?;
    let mut body = json!({"inputPayload": input});
    if let Some(version) = &args.version {
        body["version"] = version.parse::<i64>().map_or_else(|_| Value::String(version.clone()), Value::from);
    }
    let created = client.call(Method::POST, &format!("/api/workflows/{}/execute", args.workflow), Some(&body)).await?;
    announce_and_maybe_wait(&client, &args.client, created, args.wait, "Queued").await
}

async fn announce_and_maybe_wait(
    client: &Client,
    args: &ClientArgs,
    created: Value,
    wait: bool,
    verb: &str,
) -> anyhow::Result<ExitCode> {
    let id = created["execution_uuid"].as_str().context("the server's answer has no execution_uuid")?.to_owned();
    if !wait {
        if args.json {
            print_json(&created);
        } else {
            println!("{verb} execution {id} of {}", created["workflow_name"].as_str().unwrap_or_default());
            for warning in created["warnings"].as_array().into_iter().flatten() {
                println!("warning: {}", warning.as_str().unwrap_or_default());
            }
            println!("Follow it with: flywheel executions logs {id} --follow");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        eprintln!("{verb} execution {id} of {}", created["workflow_name"].as_str().unwrap_or_default());
        for warning in created["warnings"].as_array().into_iter().flatten() {
            eprintln!("warning: {}", warning.as_str().unwrap_or_default());
        }
    }
    let mut id = id;
    let mut done = loop {
        let live = (!args.json && std::io::stderr().is_terminal()).then(LiveStatus::new);
        follow(client, &id, 0, |entry| {
            if let Some(live) = &live {
                live.update(entry);
            }
        })
        .await?;
        if let Some(live) = &live {
            live.clear();
        }
        let done = client.get(&format!("/api/executions/{id}")).await?;
        // An automatic retry (retry_attempts) is part of the same run.
        match done["retried_by"].as_str() {
            Some(next) if done["error"]["code"] != "stopped" => {
                if !args.json {
                    eprintln!(
                        "Attempt {} failed ({}); following its retry {next}",
                        done["attempt"],
                        done["error"]["message"].as_str().unwrap_or("unknown error")
                    );
                }
                id = next.to_owned();
            }
            _ => break done,
        }
    };
    if args.json {
        if let Some(map) = done.as_object_mut() {
            map.remove("logs");
        }
        print_json(&done);
    } else {
        output::execution_details(&done, false);
    }
    Ok(if done["status"] == "completed" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Streams an execution's entries after `after` until it ends, reconnecting
/// (and resuming) if the connection drops.
async fn follow(
    client: &Client,
    execution: &str,
    mut after: i64,
    mut on_entry: impl FnMut(&Value),
) -> anyhow::Result<()> {
    let mut failures = 0;
    loop {
        let mut reader = match client.events(execution, after).await {
            Ok(reader) => reader,
            Err(err) if failures < 5 => {
                failures += 1;
                tracing::debug!(error = %err, "reconnecting");
                tokio::time::sleep(Duration::from_millis(500 * failures)).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        loop {
            match reader.next().await {
                Ok(Some(event)) if event.event == "end" => return Ok(()),
                Ok(Some(event)) => {
                    if let Ok(entry) = serde_json::from_str::<Value>(&event.data) {
                        after = entry["seq"].as_i64().unwrap_or(after);
                        failures = 0;
                        on_entry(&entry);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        failures += 1;
        if failures > 5 {
            bail!("lost the event stream of execution {execution}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn executions(cmd: ExecutionsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ExecutionsCommand::List { workflow, status, limit, client } => {
            let c = Client::new(&client)?;
            let mut query = format!("/api/executions?limit={limit}");
            if let Some(workflow) = workflow {
                let wf = c.get(&format!("/api/workflows/{workflow}")).await?;
                query.push_str(&format!("&workflow_uuid={}", wf["workflow_uuid"].as_str().unwrap_or_default()));
            }
            if let Some(status) = status {
                query.push_str(&format!("&status={status}"));
            }
            let page = c.get(&query).await?;
            show(client.json, &page, |page| output::execution_table(&page["items"]));
        }
        ExecutionsCommand::Get { execution, client } => {
            let e = Client::new(&client)?.get(&format!("/api/executions/{execution}")).await?;
            show(client.json, &e, |e| output::execution_details(e, true));
        }
        ExecutionsCommand::Logs { execution, follow: follow_on, client } => {
            let c = Client::new(&client)?;
            let mut after = 0;
            loop {
                let page = c.get(&format!("/api/executions/{execution}/logs?after={after}&limit=1000")).await?;
                for entry in page["items"].as_array().into_iter().flatten() {
                    after = entry["seq"].as_i64().unwrap_or(after);
                    output::log_line(entry, client.json);
                }
                if page["next_after"].is_null() {
                    break;
                }
            }
            if follow_on {
                follow(&c, &execution, after, |entry| output::log_line(entry, client.json)).await?;
            }
        }
        ExecutionsCommand::Retry { execution, wait, client } => {
            let c = Client::new(&client)?;
            let created = c.call(Method::POST, &format!("/api/executions/{execution}/retry"), None).await?;
            return announce_and_maybe_wait(&c, &client, created, wait, "Retrying as").await;
        }
        ExecutionsCommand::Stop { execution, client } => {
            let stopped =
                Client::new(&client)?.call(Method::POST, &format!("/api/executions/{execution}/stop"), None).await?;
            show(client.json, &stopped, |_| println!("Stopped execution {execution}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn secrets(cmd: SecretsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretsCommand::Set { name, client } => {
            if std::io::stdin().is_terminal() {
                eprintln!("Type the value of {name}, then press Ctrl-D:");
            }
            let mut value = String::new();
            std::io::stdin().read_to_string(&mut value).context("could not read the value from stdin")?;
            let value = value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value);
            if value.is_empty() {
                bail!("the value is empty: pipe it in, e.g. printf %s \"$VALUE\" | flywheel secrets set {name}");
            }
            let saved = Client::new(&client)?
                .call(Method::PUT, &format!("/api/secrets/{name}"), Some(&json!({"value": value})))
                .await?;
            show(client.json, &saved, |_| println!("Saved secret {name}; use it as {{{{ secrets.{name} }}}}"));
        }
        SecretsCommand::List { client } => {
            let list = Client::new(&client)?.get("/api/secrets").await?;
            show(client.json, &list, |list| output::secret_table(&list["items"]));
        }
        SecretsCommand::Delete { name, client } => {
            Client::new(&client)?.call(Method::DELETE, &format!("/api/secrets/{name}"), None).await?;
            if !client.json {
                println!("Deleted secret {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_readable() {
        let body = json!({"detail": [{"loc": ["body", "specification", "steps", 0], "msg": "the step has no action", "type": "value_error"}]});
        assert_eq!(
            describe_error(StatusCode::UNPROCESSABLE_ENTITY, &body, true),
            "specification.steps.0: the step has no action (422)"
        );
        let body = json!({"detail": "Invalid API key"});
        assert!(describe_error(StatusCode::UNAUTHORIZED, &body, false).contains("FLYWHEEL_API_KEY"));
    }

    #[test]
    fn workflow_files_may_be_a_bare_specification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wf.yaml");
        std::fs::write(&path, "name: Demo\nsteps:\n  - shell: echo hi\n").unwrap();
        let body = read_workflow_file(&path).unwrap();
        assert_eq!(body, json!({"name": "Demo", "specification": {"steps": [{"shell": "echo hi"}]}}));
        assert!(read_input("[1]").is_err());
        assert_eq!(read_input("{\"a\": 1}").unwrap(), json!({"a": 1}));
    }
}
