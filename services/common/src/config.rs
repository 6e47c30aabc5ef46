//! Configuration layering: defaults, then a TOML file, then environment.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

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

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    Text(String),
    One(T),
}

/// THE syntax of every list setting (`#[serde(deserialize_with =
/// "cbir_common::config::list")]`): an array (TOML, or JSON in the
/// environment: `TRAINING_ALLOWED_ROOTS='["/a", "/b"]'`) or one string of
/// comma-separated items (`TRAINING_ALLOWED_ROOTS=/a,/b`), blanks around
/// items ignored. An item therefore cannot contain a comma in the second
/// form.
pub fn list<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match OneOrMany::<T>::deserialize(d)? {
        OneOrMany::Many(v) => Ok(v),
        OneOrMany::One(v) => Ok(vec![v]),
        OneOrMany::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|e| serde::de::Error::custom(format!("list item {s:?}: {e}")))
            })
            .collect(),
    }
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
    fn lists_are_arrays_or_comma_separated() {
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(default)]
        struct L {
            #[serde(deserialize_with = "super::list")]
            roots: Vec<std::path::PathBuf>,
            #[serde(deserialize_with = "super::list")]
            sizes: Vec<usize>,
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("LIST_ROOTS", "/a, /b");
            jail.set_env("LIST_SIZES", "[8, 16]");
            let got: L = super::load("LIST_", None).map_err(|e| e.to_string())?;
            assert_eq!(got.roots, [std::path::Path::new("/a"), "/b".as_ref()]);
            assert_eq!(got.sizes, [8, 16]);
            jail.set_env("LIST_ROOTS", r#"["/images"]"#);
            jail.set_env("LIST_SIZES", "8,16");
            let got: L = super::load("LIST_", None).map_err(|e| e.to_string())?;
            assert_eq!(got.roots, [std::path::Path::new("/images")]);
            assert_eq!(got.sizes, [8, 16]);
            jail.set_env("LIST_SIZES", "32");
            let got: L = super::load("LIST_", None).map_err(|e| e.to_string())?;
            assert_eq!(got.sizes, [32]);
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
