//! Gateway configuration: a TOML file (`--config`), then flags and `LOGSTREAM_*`
//! environment variables on top. Validated at start with a message naming the field.
//!
//! The file format (every type, its defaults and `Config::validate`) lives in
//! [`logstream_model::config`], shared with the operator that writes these files; what
//! needs I/O (reading the file) is here.

use std::path::Path;

pub use logstream_model::config::*;

/// Reads a TOML configuration file; the error names the file and the bad key.
pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        field: "--config",
        problem: format!("{}: {e}", path.display()),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError {
        field: "--config",
        problem: format!("{}: {e}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_is_read_and_its_errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "role = \"store\"\n[quotas]\ningest_lines_per_sec = 10\n",
        )
        .unwrap();
        let c = from_file(&path).unwrap();
        assert_eq!(c.role, Role::Store);
        assert_eq!(c.quotas.ingest_lines_per_sec, 10);

        std::fs::write(&path, "listn = \"0.0.0.0:8080\"\n").unwrap();
        let e = from_file(&path).unwrap_err();
        assert_eq!(e.field, "--config");
        assert!(
            e.problem.contains("gateway.toml") && e.problem.contains("listn"),
            "{e}"
        );

        let e = from_file(&dir.path().join("missing.toml")).unwrap_err();
        assert!(e.problem.contains("missing.toml"), "{e}");
    }
}
