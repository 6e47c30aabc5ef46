//! Configuration layering: defaults, then a TOML file, then environment.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// Loads `T` from its defaults, then `file` (which must exist when given),
/// then environment variables `PREFIX_KEY` with `__` separating nested keys
/// (`INFERENCE_BATCHER__MAX_BATCH_SIZE` sets `batcher.max_batch_size`).
pub fn load<T>(prefix: &str, file: Option<&Path>) -> Result<T>
where
    T: Default + Serialize + DeserializeOwned,
{
    figment::<T>(prefix, file)?
        .extract()
        .map_err(|e| Error::Config(e.to_string()))
}

pub fn figment<T: Default + Serialize>(prefix: &str, file: Option<&Path>) -> Result<Figment> {
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        // Figment skips a missing file silently; a path the user typed must exist.
        if !path.is_file() {
            return Err(Error::ConfigFileMissing {
                path: path.display().to_string(),
            });
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    Ok(fig.merge(Env::prefixed(prefix).split("__")))
}

/// A database URL as sea-orm wants it: for `sqlite://PATH` the file's folder
/// is created and the file too (`mode=rwc`) unless the URL sets options;
/// `mysql://` passes as is; anything else is refused with what to write.
pub fn database_url(url: &str) -> std::result::Result<String, String> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = Path::new(path).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
        }
        Ok(if url.contains('?') {
            url.to_string()
        } else {
            format!("{url}?mode=rwc")
        })
    } else if url.starts_with("mysql://") {
        Ok(url.to_string())
    } else {
        Err(format!(
            "database url {url:?} must start with sqlite:// or mysql://"
        ))
    }
}

#[cfg(test)]
// figment::Jail fixes the closure's error type.
#[allow(clippy::result_large_err)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        size: u32,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        name: String,
        inner: Inner,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                name: "default".into(),
                inner: Inner { size: 4 },
            }
        }
    }

    #[test]
    fn layers_defaults_file_env() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            jail.create_file("c.toml", "name = \"file\"\n[inner]\nsize = 8\n")?;
            let got: Sample = super::load("SAMPLE_", None).map_err(|e| e.to_string())?;
            assert_eq!(got, Sample::default());
            let got: Sample =
                super::load("SAMPLE_", Some(&dir.join("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(got.inner.size, 8);
            assert_eq!(got.name, "file");
            jail.set_env("SAMPLE_INNER__SIZE", "16");
            let got: Sample =
                super::load("SAMPLE_", Some(&dir.join("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(got.inner.size, 16);
            assert_eq!(got.name, "file");
            Ok(())
        });
    }

    #[test]
    fn missing_file_and_unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            let err = super::load::<Sample>("SAMPLE_", Some(&dir.join("nope.toml"))).unwrap_err();
            assert!(err.to_string().contains("does not exist"), "{err}");
            jail.create_file("bad.toml", "nmae = \"typo\"\n")?;
            let err = super::load::<Sample>("SAMPLE_", Some(&dir.join("bad.toml"))).unwrap_err();
            assert!(err.to_string().contains("nmae"), "{err}");
            Ok(())
        });
    }
}
