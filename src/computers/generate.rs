//! Text for computers (pure): the prompts sent to the configured model, the
//! parsing of its answers, and the deterministic fallbacks used when no model
//! is configured or it fails — generated file content, collaborator replies,
//! judging, and draft specs from a one-line brief.

use serde_json::{json, Value};

use crate::computers::spec::{Collaborator, MUST_EVENT_TYPES};

/// Context taken from each dependency when generating a file.
const DEP_CONTEXT_CHARS: usize = 2_000;

/// A chat prompt: (system, user).
pub type Prompt = (String, String);

fn clip(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

// ---------------------------------------------------------------------------
// The OpenAI-compatible chat completions wire format.

/// Body of `POST {OPENAI_BASE_URL}/chat/completions`.
pub fn chat_request(model: &str, prompt: &Prompt) -> Value {
    json!({
        "model": model,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": prompt.0},
            {"role": "user", "content": prompt.1},
        ],
    })
}

/// `choices[0].message.content`, when non-empty.
pub fn chat_content(body: &Value) -> Option<String> {
    let text = body.pointer("/choices/0/message/content")?.as_str()?.trim();
    (!text.is_empty()).then(|| text.to_string())
}

// ---------------------------------------------------------------------------
// Files

/// A file the spec gives no content for.
pub struct FileToWrite<'a> {
    pub role: &'a str,
    pub path: &'a str,
    pub kind: &'a str,
    pub description: Option<&'a str>,
    /// (path, content) of the files it depends on, already materialized.
    pub deps: Vec<(&'a str, &'a str)>,
}

pub fn file_prompt(file: &FileToWrite) -> Prompt {
    let mut user = format!(
        "Write the full content of the file `{}` (kind: {}).\nDescription: {}\n",
        file.path,
        file.kind,
        file.description.unwrap_or("(none)")
    );
    for (path, content) in &file.deps {
        user.push_str(&format!(
            "\nIt depends on `{path}`:\n```\n{}\n```\n",
            clip(content, DEP_CONTEXT_CHARS)
        ));
    }
    user.push_str("\nAnswer with the file content only, no commentary.");
    let system = format!(
        "You create realistic files for an evaluation workspace used by a {}. \
         Stay consistent with the files it depends on.",
        file.role
    );
    (system, user)
}

/// The deterministic content of a file: its path, kind, description and
/// what it builds on, as a small Markdown document.
pub fn template_file(file: &FileToWrite) -> String {
    let mut out = format!("# {}\n\nKind: {}\n\n", file.path, file.kind);
    match file.description {
        Some(d) if !d.trim().is_empty() => out.push_str(&format!("{}\n", d.trim())),
        _ => out.push_str(&format!("A {} file for the {}.\n", file.kind, file.role)),
    }
    if !file.deps.is_empty() {
        let names: Vec<&str> = file.deps.iter().map(|(p, _)| *p).collect();
        out.push_str(&format!("\nBuilds on: {}\n", names.join(", ")));
    }
    out
}

// ---------------------------------------------------------------------------
// Collaborators

pub fn reply_prompt(
    collaborator: &Collaborator,
    message: &str,
    revealed: &[(&str, &str)],
) -> Prompt {
    let mut system = format!(
        "You are {}, a {} collaborating with an agent under evaluation.",
        collaborator.id, collaborator.role
    );
    if let Some(style) = &collaborator.style {
        system.push_str(&format!(" Your style: {style}."));
    }
    if let Some(focus) = &collaborator.focus {
        system.push_str(&format!(" You care most about: {focus}."));
    }
    system.push_str(" Answer in character, briefly.");
    for (path, content) in revealed {
        system.push_str(&format!(
            "\nYou are sharing your file `{path}` now:\n```\n{}\n```",
            clip(content, DEP_CONTEXT_CHARS)
        ));
    }
    (system, message.to_string())
}

/// A deterministic reply in the collaborator's role, style and focus.
pub fn template_reply(collaborator: &Collaborator, message: &str, revealed: &[String]) -> String {
    let mut out = format!(
        "{} ({}) here. You asked: \"{}\".",
        collaborator.id,
        collaborator.role,
        clip(message.trim(), 200)
    );
    if let Some(focus) = &collaborator.focus {
        out.push_str(&format!(" From where I sit, what matters most is {focus}."));
    }
    if let Some(style) = &collaborator.style {
        out.push_str(&format!(" (Style: {style}.)"));
    }
    if !revealed.is_empty() {
        out.push_str(&format!(" I've shared my files: {}.", revealed.join(", ")));
    }
    out
}

// ---------------------------------------------------------------------------
// Judging criteria without a mustEvent

pub fn judge_prompt(must: &str, actions: &str) -> Prompt {
    (
        "You grade an agent's work from its recorded actions. Answer with PASS or FAIL \
         on the first line, then one sentence of reason."
            .to_string(),
        format!("Criterion: {must}\n\nRecorded actions:\n{actions}"),
    )
}

/// `PASS`/`FAIL` (case-insensitive) at the start of the answer, and the rest as reason.
pub fn parse_verdict(text: &str) -> Option<(bool, String)> {
    let trimmed = text.trim_start();
    let upper = trimmed.get(..4).unwrap_or("").to_ascii_uppercase();
    let pass = match upper.as_str() {
        "PASS" => true,
        "FAIL" => false,
        _ => return None,
    };
    let reason =
        trimmed[4..].trim_matches(|c: char| c.is_whitespace() || c == ':' || c == '.' || c == '-');
    Some((pass, clip(reason, 500)))
}

// ---------------------------------------------------------------------------
// Briefs

pub fn brief_prompt(brief: &str) -> Prompt {
    let system = format!(
        "You design evaluation workspaces for AI agents. Answer with one JSON object, a ComputerSpec: \
         {{\"name\", \"profile\": {{\"role\"}}, \"filesystem\": [{{\"path\", \"kind\", \"description\", \"content\"?, \"dependsOn\"?}}], \
         \"collaborators\": [{{\"id\", \"role\", \"style\", \"focus\", \"privateFiles\": [{{\"path\", \"kind\", \"description\"}}]}}], \
         \"objectives\": [{{\"id\", \"title\"}}], \"rubric\": [{{\"id\", \"weight\", \"must\", \"mustEvent\"?}}]}}. \
         Paths are relative. mustEvent is {{\"type\": one of {}, ...}} with fields path / before, after / \
         objective, decision / who / who, notWho that name files, objectives and collaborators of the spec. \
         No commentary.",
        MUST_EVENT_TYPES.join(", ")
    );
    (system, format!("Brief: {brief}"))
}

/// The first JSON object in a model answer (bare or in a code fence).
pub fn extract_json_object(text: &str) -> Option<Value> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    if end < start {
        return None;
    }
    let value: Value = serde_json::from_str(&text[start..=end]).ok()?;
    value.is_object().then_some(value)
}

/// A lowercase slug of the brief for names (`a-b-c`, at most 40 chars).
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "task".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The deterministic draft: a task file, context that depends on it, a
/// lead with private notes, one objective, and a rubric that checks reading
/// the task first, consulting the lead, writing a report and submitting.
pub fn draft_spec(brief: &str) -> Value {
    let brief = brief.trim();
    let title = clip(brief, 120);
    json!({
        "name": slug(brief),
        "profile": {"role": "software engineer", "brief": brief},
        "filesystem": [
            {"path": "TASK.md", "kind": "task", "description": "The assignment", "content": format!("# Task\n\n{brief}\n")},
            {"path": "docs/context.md", "kind": "doc", "description": format!("Background for: {title}"), "dependsOn": ["TASK.md"]},
            {"path": "docs/constraints.md", "kind": "doc", "description": "Constraints and acceptance criteria", "dependsOn": ["TASK.md", "docs/context.md"]}
        ],
        "collaborators": [
            {"id": "lead", "role": "team lead", "style": "concise", "focus": title,
             "privateFiles": [{"path": "private/lead-notes.md", "kind": "notes", "description": "What the lead knows but has not written down yet"}]}
        ],
        "objectives": [{"id": "deliver", "title": title}],
        "rubric": [
            {"id": "read-task-first", "weight": 1, "must": "Read the task before the background", "mustEvent": {"type": "readBefore", "before": "TASK.md", "after": "docs/context.md"}},
            {"id": "consult-lead", "weight": 1, "must": "Ask the lead", "mustEvent": {"type": "asked", "who": "lead"}},
            {"id": "write-report", "weight": 2, "must": "Write a report", "mustEvent": {"type": "wrote", "path": "REPORT.md"}},
            {"id": "submit", "weight": 2, "must": "Submit the objective", "mustEvent": {"type": "submitted", "objective": "deliver"}},
            {"id": "quality", "weight": 1, "must": "The report is clear and addresses the brief"}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collab() -> Collaborator {
        Collaborator {
            id: "alice".into(),
            role: "SRE".into(),
            style: Some("terse".into()),
            focus: Some("latency".into()),
            private_files: vec![],
        }
    }

    #[test]
    fn template_files_use_kind_description_and_dependencies() {
        let file = FileToWrite {
            role: "engineer",
            path: "notes.md",
            kind: "notes",
            description: Some("Open questions"),
            deps: vec![("README.md", "hello")],
        };
        let text = template_file(&file);
        assert!(text.contains("notes.md") && text.contains("Kind: notes"));
        assert!(text.contains("Open questions") && text.contains("Builds on: README.md"));
        assert_eq!(text, template_file(&file), "deterministic");
        let (system, user) = file_prompt(&file);
        assert!(
            system.contains("engineer") && user.contains("README.md") && user.contains("hello")
        );
    }

    #[test]
    fn template_replies_speak_in_role_style_and_focus() {
        let reply = template_reply(&collab(), "What broke?", &["private/a.md".into()]);
        for needle in [
            "alice",
            "SRE",
            "What broke?",
            "latency",
            "terse",
            "private/a.md",
        ] {
            assert!(reply.contains(needle), "{needle} in {reply}");
        }
        let (system, user) = reply_prompt(&collab(), "What broke?", &[("private/a.md", "secret")]);
        assert!(
            system.contains("terse") && system.contains("latency") && system.contains("secret")
        );
        assert_eq!(user, "What broke?");
    }

    #[test]
    fn chat_wire_format() {
        let body = chat_request("m", &("s".into(), "u".into()));
        assert_eq!(body["messages"][1]["content"], "u");
        assert_eq!(body["model"], "m");
        let answer = json!({"choices": [{"message": {"role": "assistant", "content": " hi "}}]});
        assert_eq!(chat_content(&answer).as_deref(), Some("hi"));
        assert_eq!(chat_content(&json!({"choices": []})), None);
        assert_eq!(
            chat_content(&json!({"choices": [{"message": {"content": "  "}}]})),
            None
        );
    }

    #[test]
    fn verdicts_parse() {
        assert_eq!(
            parse_verdict("PASS: it is fine"),
            Some((true, "it is fine".into()))
        );
        assert_eq!(
            parse_verdict("fail\nno report"),
            Some((false, "no report".into()))
        );
        assert_eq!(parse_verdict("maybe"), None);
        assert_eq!(parse_verdict(""), None);
    }

    #[test]
    fn json_objects_are_found_in_fenced_answers() {
        let text = "Here:\n```json\n{\"a\": {\"b\": 1}}\n```";
        assert_eq!(extract_json_object(text), Some(json!({"a": {"b": 1}})));
        assert_eq!(extract_json_object("no json"), None);
        assert_eq!(extract_json_object("[1]"), None);
    }

    #[test]
    fn the_draft_spec_is_valid_and_deterministic() {
        let draft = draft_spec("Fix the flaky checkout test in the payments service");
        let spec = crate::computers::spec::parse(&draft).expect("the draft validates");
        assert_eq!(
            spec.objectives[0].title,
            "Fix the flaky checkout test in the payments service"
        );
        assert_eq!(draft["name"], "fix-the-flaky-checkout-test-in-the-payme");
        assert_eq!(
            draft,
            draft_spec("Fix the flaky checkout test in the payments service")
        );
        assert!(crate::computers::spec::parse(&draft_spec("!!!")).is_ok());
        assert_eq!(draft_spec("!!!")["name"], "task");
    }

    #[test]
    fn clip_counts_characters() {
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hi", 2), "hi");
    }
}
