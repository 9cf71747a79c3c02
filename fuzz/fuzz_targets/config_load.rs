//! The config loader (`Config::parse`, what `handover check` and `serve`
//! run) on arbitrary text. Every secret variable resolves (to a valid
//! journal key or a long token) so validation goes deep. Paths are
//! sandboxed: before validation, `dir`, `*_file` and `tls_*` values are
//! pointed into a scratch directory (validation creates the journal
//! directory and reads key files); text that is not a TOML table goes to
//! the loader unchanged. Checks: no panic, and an error always names the
//! file.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use handover::config::{Config, Env, TEST_JOURNAL_KEY};
use libfuzzer_sys::fuzz_target;

struct AnyEnv;

impl Env for AnyEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name.len() % 3 {
            _ if name.contains("KEY") => Some(TEST_JOURNAL_KEY.to_owned()),
            0 => None,
            _ => Some("fuzz-token-0123456789abcdef0123456789abcdef".to_owned()),
        }
    }
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "fuzz-token-0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        std::fs::write(dir.path().join("key"), TEST_JOURNAL_KEY).unwrap();
        dir
    })
    .path()
}

fn sandbox(table: &mut toml::Table) {
    for (name, value) in table.iter_mut() {
        match value {
            toml::Value::Table(inner) => sandbox(inner),
            toml::Value::String(text)
                if name == "dir" || name.ends_with("_file") || name.starts_with("tls_") =>
            {
                let file = match (name.as_str(), text.len() % 3) {
                    ("dir", _) => "journal",
                    (_, 0) => "missing",
                    (n, _) if n.contains("key") => "key",
                    _ => "secret",
                };
                *text = scratch().join(file).display().to_string();
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = match text.parse::<toml::Table>() {
        Ok(mut table) => {
            sandbox(&mut table);
            toml::to_string(&table).unwrap_or_default()
        }
        Err(_) => text.to_owned(),
    };
    let path = Path::new("fuzz.toml");
    if let Err(err) = Config::parse(&text, path, &AnyEnv) {
        assert!(err.to_string().contains("fuzz.toml"), "{err}");
    }
});
