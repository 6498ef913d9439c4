//! `cloudbox`: the command-line client of Cloudbox (../shared/CLI.md).
//! It speaks only the public HTTP API. Each command's handler is in the
//! module named after it; every failure is one `exit::Failure`, printed
//! here with its exit code.

mod admin;
mod args;
mod client;
mod computer;
mod config;
mod exit;
mod folder;
mod login;
mod output;
mod runs;
mod sse;
mod stream;
mod sync;
mod tree;

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command, Global};
use crate::client::Api;
use crate::config::{ConfigFile, Settings};
use crate::exit::{Exit, Failure, Result};
use crate::output::Out;

/// What every command gets: the global flags, the output, the settings.
pub struct Ctx {
    pub global: Global,
    pub out: Out,
    pub config_path: PathBuf,
    pub config: ConfigFile,
    pub profile: String,
    pub settings: Settings,
}

impl Ctx {
    fn new(global: Global) -> Result<Ctx> {
        let env = |name: &str| std::env::var(name).ok();
        let config_path = config::config_path(&env)?;
        let config = config::load(&config_path)?;
        let profile = config.profile_name(global.profile.as_deref());
        let settings = config::resolve(
            global.url.as_deref(),
            global.key.as_deref(),
            global.admin_key.as_deref(),
            &env,
            &config.profile(&profile),
        );
        config::check_url(&settings.url)?;
        Ok(Ctx {
            out: Out::new(global.json, global.quiet),
            global,
            config_path,
            config,
            profile,
            settings,
        })
    }

    /// The API with the user's key.
    pub fn api(&self) -> Api {
        Api::new(&self.settings.url, self.settings.key.clone())
    }

    /// The API with the admin key.
    pub fn admin_api(&self) -> Result<Api> {
        match &self.settings.admin_key {
            Some(key) => Ok(Api::new(&self.settings.url, Some(key.clone()))),
            None => Err(Failure::new(
                Exit::Auth,
                "no_admin_key",
                "admin commands need --admin-key or CLOUDBOX_ADMIN_KEY",
            )),
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Completions { shell } = &cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(*shell, &mut cmd, "cloudbox", &mut std::io::stdout());
        return Ok(());
    }
    let ctx = Ctx::new(cli.global.clone())?;
    match cli.command {
        Command::Login => login::login(&ctx),
        Command::Logout => login::logout(&ctx),
        Command::Account => login::account(&ctx),
        Command::Push { dir, workspace } => folder::push(&ctx, &dir, &workspace),
        Command::Pull {
            workspace,
            dir,
            version,
            delete,
        } => folder::pull(&ctx, &workspace, &dir, version, delete),
        Command::Exec(args) => folder::exec(&ctx, args),
        Command::Run(args) => runs::run(&ctx, args),
        Command::Runs(cmd) => runs::runs(&ctx, cmd),
        Command::Computer(cmd) => computer::computer(&ctx, cmd),
        Command::Admin(cmd) => admin::admin(&ctx, cmd),
        Command::Completions { .. } => Ok(()),
    }
}

fn main() {
    let wants_json = std::env::args().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if wants_json && e.use_stderr() => {
            let f = Failure::usage(e.kind().to_string());
            println!("{}", f.to_json());
            std::process::exit(Exit::Usage.code());
        }
        // clap exits 2 on usage errors, 0 for --help and --version.
        Err(e) => e.exit(),
    };
    stream::install_interrupt_handler();
    let json = cli.global.json;
    if let Err(failure) = run(cli) {
        if json {
            if !failure.shown {
                println!("{}", failure.to_json());
            }
        } else {
            eprintln!("cloudbox: {failure}");
        }
        std::process::exit(failure.exit.code());
    }
}
