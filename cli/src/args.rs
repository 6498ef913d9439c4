//! The command line (CLI.md, "Commands"). Where the contract is silent,
//! the choice is said here, in `cloudbox help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Settings: flag > CLOUDBOX_URL / CLOUDBOX_API_KEY (CLOUDBOX_ADMIN_KEY for admin) > profile.
Config: $CLOUDBOX_CONFIG, else $XDG_CONFIG_HOME/cloudbox/config.toml, else ~/.config/cloudbox/config.toml.
With --json, stdout is exactly one JSON document (NDJSON for `runs events`), errors included.

Exit codes: 0 done; 1 the remote work failed; 2 usage error or input the API refuses;
3 authentication or permission; 4 not found; 5 conflict; 6 money; 7 rate limited;
8 server or network; 124 --timeout passed (the work is cancelled); 130 Ctrl-C (the work is cancelled).";

#[derive(Parser, Debug)]
#[command(name = "cloudbox", version, about = "Cloudbox from a terminal or an agent: push, pull and exec a folder, repo runs, computers, admin", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The service's URL (default http://127.0.0.1:8787, the local stack)
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// An API key (prefer `cloudbox login`: a flag lands in shell history)
    #[arg(long, global = true, hide_env_values = true)]
    pub key: Option<String>,
    /// The admin key for `admin` commands (or CLOUDBOX_ADMIN_KEY)
    #[arg(long, global = true)]
    pub admin_key: Option<String>,
    /// The config profile to use
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Exactly one JSON document on stdout (NDJSON for streams)
    #[arg(long, global = true)]
    pub json: bool,
    /// Never ask a question
    #[arg(long, global = true)]
    pub no_input: bool,
    /// No progress or notes on stderr
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check a key with GET /billing/account and save it in the profile.
    /// The key is read from --key, CLOUDBOX_API_KEY or stdin (asked for,
    /// unechoed, on a terminal).
    Login,
    /// Forget the profile's key
    Logout,
    /// Balance, held, spent today and this month, limits, alerts
    Account,
    /// Upload a folder incrementally to a workspace (only missing blobs)
    #[command(
        after_help = "Honours .gitignore and .cloudboxignore; never sends .git/ or .cloudbox/. \
A symlink to a file inside DIR is sent as that file; symlinks to folders are not followed; \
broken symlinks are skipped with a note; a symlink out of DIR is refused (exit 2)."
    )]
    Push {
        dir: PathBuf,
        #[arg(long)]
        workspace: String,
    },
    /// Bring a workspace version into a folder, writing only what differs
    #[command(
        after_help = "Each file is written under a temporary name and renamed. \
--delete removes files the version lacks among those push would send (ignored files, \
.git/ and .cloudbox/ are never touched); emptied folders are kept."
    )]
    Pull {
        workspace: String,
        dir: PathBuf,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        delete: bool,
    },
    /// Push DIR, run an agent task on it with live progress, pull the result
    #[command(
        after_help = "The workspace id: --workspace, else the one remembered in DIR/.cloudbox/workspace, \
else DIR's name, '-' and 8 hex characters of a hash of its absolute path (then remembered). \
After an ok execute the new version is pulled into DIR: files the agent changed are written, files it deleted are removed, a file you changed meanwhile is kept \
(ignored files, .git/ and .cloudbox/ are never touched). Nothing is pulled when the execute is not ok (exit 1). \
A dropped connection is resumed (the same Idempotency-Key, then Last-Event-ID): the task never runs twice. \
Ctrl-C cancels the execute and says what was charged (exit 130)."
    )]
    Exec(ExecArgs),
    /// A repo run, streamed: one line per receipt, live output, the verdict
    #[command(
        after_help = "Exit 0 when every verify step passed, else 1. --json prints the run's body once it ends. \
--detach prints the run id as soon as the run is started and returns."
    )]
    Run(RunArgs),
    /// The repo-run routes
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Typed evaluation workspaces
    #[command(subcommand)]
    Computer(ComputerCommand),
    /// Keys, credits and limits (with --admin-key or CLOUDBOX_ADMIN_KEY)
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print a shell completion script
    Completions { shell: clap_complete::Shell },
}

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    pub task: String,
    #[arg(long)]
    pub workspace: Option<String>,
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    #[arg(long, conflicts_with = "new_session")]
    pub session: Option<String>,
    /// Forget the workspace's agent session first
    #[arg(long)]
    pub new_session: bool,
    /// The client's deadline in seconds (exit 124; the execute is cancelled)
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// https://github.com/OWNER/REPO
    pub repo: String,
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// A command (repeatable, in order)
    #[arg(long = "cmd", value_name = "C")]
    pub commands: Vec<String>,
    /// A verify step (repeatable, in order)
    #[arg(long = "verify", value_name = "V")]
    pub verify: Vec<String>,
    /// A file of the checkout to bring back
    #[arg(long)]
    pub artifact: Option<String>,
    /// Also write the artifact to this local file
    #[arg(long, requires = "artifact")]
    pub out: Option<PathBuf>,
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// The server-side limit of each step, seconds
    #[arg(long, value_name = "S")]
    pub step_timeout: Option<u64>,
    /// The client's deadline in seconds (exit 124; the run is cancelled)
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
    #[arg(long)]
    pub live: bool,
    #[arg(long, requires = "live", value_name = "S")]
    pub ttl: Option<u64>,
    #[arg(long)]
    pub public: bool,
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    #[arg(long)]
    pub detach: bool,
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Your runs, newest first
    List {
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    Get {
        id: String,
    },
    /// A run's events; without --follow, those so far (it stops at the
    /// run's end, or once no event came for 2 s)
    Events {
        id: String,
        /// Until the run ends, reconnecting after the last event seen
        #[arg(long)]
        follow: bool,
    },
    /// Check the run's receipt chain on the server (exit 1 when invalid)
    Verify {
        id: String,
    },
    Cancel {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Print the public proof page's URL (and open it, on a terminal); the
    /// run must be public (`run --public`)
    Open {
        id: String,
    },
    /// Run one command in a live run's checkout (`run --live`); prints its
    /// output, exit 1 when it fails
    Exec {
        id: String,
        command: String,
        /// Seconds the command may take (cut to the run's expiry)
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Print one file of a live run's checkout, or write it to --out
    Read {
        id: String,
        path: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write one file of a live run's checkout from FILE, or stdin ('-' or
    /// nothing)
    Write {
        id: String,
        path: String,
        file: Option<PathBuf>,
        /// Permission bits in octal, e.g. 755
        #[arg(long)]
        mode: Option<String>,
    },
    /// Snapshot a live run and release its container (state stopped)
    Stop {
        id: String,
    },
    /// Restore a stopped, expired or lost run's snapshot into a fresh
    /// container (state live again, its TTL renewed)
    Resume {
        id: String,
    },
    /// A new run from this run's latest snapshot (one taken now if it is
    /// live); created stopped unless --live
    Fork {
        id: String,
        #[arg(long)]
        live: bool,
        /// The fork's TTL in seconds (default: the parent's)
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long)]
        public: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ComputerCommand {
    /// Create (or find) a computer from a spec file ('-' for stdin)
    Create {
        spec: PathBuf,
    },
    /// A draft spec from a one-line brief; --create makes it too
    Brief {
        text: String,
        #[arg(long)]
        create: bool,
    },
    Files {
        id: String,
    },
    Read {
        id: String,
        path: String,
    },
    /// Write a file: its content from FILE, or stdin ('-' or nothing)
    Write {
        id: String,
        path: String,
        file: Option<PathBuf>,
    },
    Ask {
        id: String,
        who: String,
        message: String,
    },
    Submit {
        id: String,
        objective: String,
        #[arg(long)]
        decision: Option<String>,
        #[arg(long = "path")]
        paths: Vec<String>,
        #[arg(long)]
        notes: Option<String>,
    },
    /// The rubric as a table (criterion, weight, status)
    Grade {
        id: String,
    },
    Receipts {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Add credits to a key's account (negative: a correction)
    Credits {
        key_id: String,
        #[arg(allow_negative_numbers = true)]
        amount: f64,
        #[arg(long)]
        description: String,
    },
    /// Set a key's spending limits (USD)
    Limits {
        key_id: String,
        #[arg(long)]
        daily: Option<f64>,
        #[arg(long)]
        monthly: Option<f64>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KeyType {
    Standard,
    Internal,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Mint a key (printed once)
    Create {
        name: String,
        #[arg(long = "type", value_enum)]
        key_type: Option<KeyType>,
        #[arg(long, value_name = "USD")]
        daily: Option<f64>,
        #[arg(long, value_name = "USD")]
        monthly: Option<f64>,
        /// Join an existing account (a team)
        #[arg(long)]
        account: Option<String>,
        /// Comma-separated: execute,read,write
        #[arg(long, value_delimiter = ',')]
        permissions: Vec<String>,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, value_name = "DAYS")]
        expires_in: Option<u64>,
        #[arg(long)]
        description: Option<String>,
        /// Then add this much credit to the new key's account (one more
        /// request; if it fails the key is still printed)
        #[arg(long, value_name = "USD")]
        credits: Option<f64>,
    },
    List {
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        offset: Option<u32>,
    },
    Get {
        id: String,
    },
    /// Revoke a key: it stops working at once
    Revoke {
        id: String,
    },
    /// A new key (printed once); the old one revoked
    Rotate {
        id: String,
    },
}
