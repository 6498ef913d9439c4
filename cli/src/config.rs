//! The config file (named profiles, one default) and where each setting
//! comes from: flag > environment > profile (CLI.md, "Global").

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::exit::{Failure, Result};

pub const DEFAULT_PROFILE: &str = "default";
pub const DEFAULT_URL: &str = "http://127.0.0.1:8787";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// The profile used without `--profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

impl ConfigFile {
    /// The profile a command uses: `--profile`, else the file's default.
    pub fn profile_name(&self, flag: Option<&str>) -> String {
        flag.map(str::to_string)
            .or_else(|| self.default.clone())
            .unwrap_or_else(|| DEFAULT_PROFILE.to_string())
    }

    pub fn profile(&self, name: &str) -> Profile {
        self.profiles.get(name).cloned().unwrap_or_default()
    }
}

/// The config file's path: `$CLOUDBOX_CONFIG`, else
/// `$XDG_CONFIG_HOME/cloudbox/config.toml`, else `~/.config/cloudbox/config.toml`.
pub fn config_path(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(path) = set("CLOUDBOX_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    if let Some(xdg) = set("XDG_CONFIG_HOME") {
        return Ok(Path::new(&xdg).join("cloudbox/config.toml"));
    }
    match set("HOME") {
        Some(home) => Ok(Path::new(&home).join(".config/cloudbox/config.toml")),
        None => Err(Failure::usage(
            "no config location: set CLOUDBOX_CONFIG, XDG_CONFIG_HOME or HOME",
        )),
    }
}

pub fn load(path: &Path) -> Result<ConfigFile> {
    match fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| Failure::usage(format!("{}: not a cloudbox config: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(Failure::usage(format!("{}: {e}", path.display()))),
    }
}

/// Writes the file with mode 0600 in a 0700 folder, through a temporary
/// file and a rename, so a crash never leaves half a config.
pub fn save(path: &Path, config: &ConfigFile) -> Result<()> {
    let io = |e: std::io::Error| Failure::usage(format!("{}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() && !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let text = toml::to_string(config).map_err(|e| Failure::usage(format!("config: {e}")))?;
    let tmp = path.with_extension("toml.tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Where the URL and key of one command come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub key: Option<String>,
    pub admin_key: Option<String>,
}

/// Flag > environment > profile; the URL falls back to the local stack.
pub fn resolve(
    flag_url: Option<&str>,
    flag_key: Option<&str>,
    flag_admin_key: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    profile: &Profile,
) -> Settings {
    let env_set = |name: &str| env(name).filter(|v| !v.is_empty());
    let url = flag_url
        .map(str::to_string)
        .or_else(|| env_set("CLOUDBOX_URL"))
        .or_else(|| profile.url.clone())
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    Settings {
        url: url.trim_end_matches('/').to_string(),
        key: flag_key
            .map(str::to_string)
            .or_else(|| env_set("CLOUDBOX_API_KEY"))
            .or_else(|| profile.key.clone()),
        admin_key: flag_admin_key
            .map(str::to_string)
            .or_else(|| env_set("CLOUDBOX_ADMIN_KEY")),
    }
}

/// A URL the CLI may talk to: http(s), no credentials, no key in it.
pub fn check_url(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            Failure::usage(format!(
                "--url {url:?}: must start with http:// or https://"
            ))
        })?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        return Err(Failure::usage(
            "--url: needs a host and no user:password@ part",
        ));
    }
    if url.contains('?') {
        return Err(Failure::usage(
            "--url: no query string (keys never go in URLs)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn flag_beats_environment_beats_profile() {
        let profile = Profile {
            url: Some("https://p.example".into()),
            key: Some("cbx_profile".into()),
        };
        let env = env_of(&[
            ("CLOUDBOX_URL", "https://e.example/"),
            ("CLOUDBOX_API_KEY", "cbx_env"),
        ]);
        let s = resolve(None, None, None, &env, &profile);
        assert_eq!(s.url, "https://e.example");
        assert_eq!(s.key.as_deref(), Some("cbx_env"));
        let s = resolve(
            Some("https://f.example"),
            Some("cbx_flag"),
            None,
            &env,
            &profile,
        );
        assert_eq!(s.url, "https://f.example");
        assert_eq!(s.key.as_deref(), Some("cbx_flag"));
        let s = resolve(
            None,
            None,
            None,
            &env_of(&[("CLOUDBOX_API_KEY", "")]),
            &profile,
        );
        assert_eq!(s.url, "https://p.example");
        assert_eq!(s.key.as_deref(), Some("cbx_profile"));
        let s = resolve(None, None, None, &env_of(&[]), &Profile::default());
        assert_eq!(s.url, DEFAULT_URL);
        assert_eq!(s.key, None);
        assert_eq!(s.admin_key, None);
        let s = resolve(
            None,
            None,
            None,
            &env_of(&[("CLOUDBOX_ADMIN_KEY", "adm")]),
            &profile,
        );
        assert_eq!(s.admin_key.as_deref(), Some("adm"));
    }

    #[test]
    fn config_location_order() {
        let p = config_path(&env_of(&[("CLOUDBOX_CONFIG", "/c.toml"), ("HOME", "/h")])).unwrap();
        assert_eq!(p, PathBuf::from("/c.toml"));
        let p = config_path(&env_of(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])).unwrap();
        assert_eq!(p, PathBuf::from("/x/cloudbox/config.toml"));
        let p = config_path(&env_of(&[("HOME", "/h")])).unwrap();
        assert_eq!(p, PathBuf::from("/h/.config/cloudbox/config.toml"));
        assert!(config_path(&env_of(&[])).is_err());
    }

    #[test]
    fn saved_with_private_modes_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/cloudbox/config.toml");
        let mut config = ConfigFile::default();
        config.profiles.insert(
            "work".into(),
            Profile {
                url: Some("https://w.example".into()),
                key: Some("cbx_k".into()),
            },
        );
        config.default = Some("work".into());
        save(&path, &config).unwrap();
        assert_eq!(load(&path).unwrap(), config);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(config.profile_name(None), "work");
        assert_eq!(config.profile_name(Some("x")), "x");
        assert_eq!(
            load(&dir.path().join("absent.toml")).unwrap(),
            ConfigFile::default()
        );
    }

    #[test]
    fn urls_without_credentials_only() {
        assert!(check_url("https://cloudbox.example").is_ok());
        assert!(check_url("http://127.0.0.1:8787").is_ok());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("https://u:p@x").is_err());
        assert!(check_url("https://x/?key=1").is_err());
        assert!(check_url("https://").is_err());
    }
}
