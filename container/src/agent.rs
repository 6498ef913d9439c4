//! Running the agent on a workspace: the Codex CLI by default
//! (`codex exec --json`, resuming the workspace's thread), or any command given
//! as `AGENT_COMMAND` (run with `bash -lc`, the task in `$CLOUDBOX_TASK`) that
//! prints the same JSONL events. The agent reaches the model only through the
//! metering proxy; it gets a placeholder credential, never the real one.

use std::path::Path;
use std::time::Duration;

use cloudbox::executes::agent_events::{parse_line, AgentEvent, AgentSummary};
use cloudbox::wire::StreamName;
use tokio::sync::watch;

use crate::config::StepUser;
use crate::process::{self, Finished, Spec};

/// The env var the agent's model provider reads its key from; its value is a
/// placeholder, since the proxy adds the real credential.
pub const MODEL_KEY_VAR: &str = "CLOUDBOX_MODEL_KEY";

pub struct AgentTask<'a> {
    /// The materialized workspace: the agent's working directory.
    pub workdir: &'a Path,
    /// `CODEX_HOME`: config and the session's rollout files.
    pub codex_home: &'a Path,
    pub task: &'a str,
    pub resume_thread: Option<&'a str>,
    /// `AGENT_COMMAND`; `None` runs the Codex CLI.
    pub command: Option<&'a str>,
    pub codex_bin: &'a str,
    pub model: &'a str,
    /// The metering proxy, e.g. `http://127.0.0.1:PORT/v1`.
    pub model_base_url: &'a str,
    pub timeout: Duration,
    /// The runner's clean base environment (PATH, HOME, …).
    pub base_env: Vec<(String, String)>,
    /// The user the agent runs as (`RUNNER_STEP_USER`), who then owns CODEX_HOME.
    pub user: Option<StepUser>,
}

/// `$CODEX_HOME/config.toml`: one provider, the proxy, Responses wire API.
pub fn codex_config(model: &str, base_url: &str) -> String {
    let quote = |s: &str| toml_string(s);
    format!(
        "model = {model}\nmodel_provider = \"cloudbox\"\n\n[model_providers.cloudbox]\nname = \"cloudbox\"\nbase_url = {base}\nenv_key = \"{MODEL_KEY_VAR}\"\nwire_api = \"responses\"\n",
        model = quote(model),
        base = quote(base_url),
    )
}

/// A TOML basic string (JSON string escaping is a valid subset).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// The program and arguments that run the agent.
pub fn agent_argv(t: &AgentTask<'_>) -> (String, Vec<String>) {
    if let Some(command) = t.command {
        return ("bash".into(), vec!["-lc".into(), command.to_string()]);
    }
    let mut args: Vec<String> = [
        "exec",
        "--json",
        "--skip-git-repo-check",
        // Our container is the sandbox; Codex's own needs privileges it lacks.
        "--sandbox",
        "danger-full-access",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(thread) = t.resume_thread {
        args.push("resume".into());
        args.push(thread.to_string());
    }
    // After `--`, a task starting with `-` is not read as a flag.
    args.push("--".into());
    args.push(t.task.to_string());
    (t.codex_bin.to_string(), args)
}

/// Runs the agent to its end (or timeout / cancel), reporting each event.
pub async fn run_agent(
    t: AgentTask<'_>,
    cancel: &mut watch::Receiver<bool>,
    mut on_event: impl FnMut(&AgentEvent),
) -> (AgentSummary, Finished) {
    if let Err(err) = std::fs::create_dir_all(t.codex_home)
        .and_then(|_| {
            std::fs::write(
                t.codex_home.join("config.toml"),
                codex_config(t.model, t.model_base_url),
            )
        })
        .and_then(|_| match t.user {
            Some(user) => crate::tree::give_to(t.codex_home, user),
            None => Ok(()),
        })
    {
        let failed = Finished {
            exit_code: Some(127),
            stderr: format!("cannot prepare CODEX_HOME: {err}"),
            ..Finished::default()
        };
        return (AgentSummary::default(), failed);
    }
    let (program, args) = agent_argv(&t);
    let mut env = t.base_env.clone();
    env.push(("CODEX_HOME".into(), t.codex_home.display().to_string()));
    env.push((MODEL_KEY_VAR.into(), "cloudbox-proxy".into()));
    env.push(("CLOUDBOX_TASK".into(), t.task.to_string()));
    env.push((
        "CLOUDBOX_MODEL_BASE_URL".into(),
        t.model_base_url.to_string(),
    ));
    env.push(("CLOUDBOX_MODEL".into(), t.model.to_string()));
    if let Some(thread) = t.resume_thread {
        env.push(("CLOUDBOX_THREAD_ID".into(), thread.to_string()));
    }
    let mut summary = AgentSummary::default();
    let mut pending = String::new();
    let finished = process::run(
        Spec {
            program: &program,
            args,
            cwd: t.workdir,
            env,
            timeout: t.timeout,
            user: t.user,
        },
        cancel,
        |stream, text| {
            if stream != StreamName::Stdout {
                return;
            }
            pending.push_str(&text);
            while let Some(newline) = pending.find('\n') {
                let line: String = pending.drain(..=newline).collect();
                if let Some(event) = parse_line(&line) {
                    summary.apply(&event);
                    on_event(&event);
                }
            }
        },
    )
    .await;
    if let Some(event) = parse_line(&pending) {
        summary.apply(&event);
        on_event(&event);
    }
    (summary, finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task<'a>(command: Option<&'a str>, resume: Option<&'a str>, dir: &'a Path) -> AgentTask<'a> {
        AgentTask {
            workdir: dir,
            codex_home: dir,
            task: "-rf everything",
            resume_thread: resume,
            command,
            codex_bin: "codex",
            model: "m",
            model_base_url: "http://127.0.0.1:1/v1",
            timeout: Duration::from_secs(5),
            base_env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            user: None,
        }
    }

    #[test]
    fn codex_argv_resumes_and_protects_the_task() {
        let dir = Path::new("/tmp");
        let (program, args) = agent_argv(&task(None, Some("thread-1"), dir));
        assert_eq!(program, "codex");
        let tail: Vec<&str> = args
            .iter()
            .rev()
            .take(4)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(tail, ["resume", "thread-1", "--", "-rf everything"]);
        let (_, fresh) = agent_argv(&task(None, None, dir));
        assert!(!fresh.contains(&"resume".to_string()));
    }

    #[test]
    fn config_escapes_values() {
        let toml = codex_config("gpt \"x\"", "http://127.0.0.1:9/v1");
        assert!(toml.contains(r#"model = "gpt \"x\"""#));
        assert!(toml.contains(r#"base_url = "http://127.0.0.1:9/v1""#));
        assert!(toml.contains(r#"wire_api = "responses""#));
    }

    #[tokio::test]
    async fn a_scripted_agent_command_is_parsed_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"echo '{"type":"thread.started","thread_id":"t-9"}'
echo "$CLOUDBOX_TASK" > task.txt
echo '{"type":"item.completed","item":{"type":"agent_message","text":"ok"}}'
printf '{"type":"turn.completed","usage":{"input_tokens":5,"output_tokens":2}}'"#;
        let (_tx, mut cancel) = watch::channel(false);
        let mut seen = 0;
        let (summary, finished) =
            run_agent(task(Some(script), None, dir.path()), &mut cancel, |_| {
                seen += 1
            })
            .await;
        assert_eq!(finished.exit_code, Some(0), "{}", finished.stderr);
        assert_eq!(summary.thread_id.as_deref(), Some("t-9"));
        assert_eq!(summary.output, "ok");
        assert_eq!(summary.usage.input_tokens, 5);
        assert_eq!(seen, 3);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("task.txt")).unwrap(),
            "-rf everything\n"
        );
        assert!(dir.path().join("config.toml").is_file());
    }
}
