//! How to reach an object store, when the standard AWS environment is not the whole answer:
//! a config file's `[s3]` table (for every `s3://` destination it names) and a database's own
//! `s3 = { … }` (for its destination only). Each field set here wins over the environment.
//!
//! The settings are registered per destination URL ([`configure`]) and found again by the
//! longest registered prefix of a set's URL ([`for_url`]), so every command that opens a set —
//! `capture`, `snapshot`, `status`, `compact`, and `restore`/`list`/`verify` given `--config` —
//! reaches each bucket as its config says, however the set's path travels to it. An embedding
//! program calls [`configure`] itself (or builds an `S3Store` directly).

use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};

/// Per-destination object-store settings. Unset fields fall back to the AWS environment
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …, `AWS_PROFILE` and `~/.aws`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The endpoint URL (`https://<account>.r2.cloudflarestorage.com`, `http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// The signing region (`us-east-1`, `auto` for R2).
    pub region: Option<String>,
    /// A profile of `~/.aws/credentials` and `~/.aws/config` to take keys, region and endpoint
    /// from; when named here it wins over `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`.
    pub profile: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); default: on for a custom endpoint.
    pub path_style: Option<bool>,
    /// Allow plain `http://` to a host that is not loopback (as `AWS_ALLOW_HTTP=true`).
    pub allow_http: Option<bool>,
    /// An access key id (prefer `profile`: a config file is easier to leak than `~/.aws`).
    pub access_key_id: Option<String>,
    /// Its secret; needs `access_key_id`.
    pub secret_access_key: Option<String>,
    /// A session token for temporary credentials.
    pub session_token: Option<String>,
}

impl S3Settings {
    /// `self`, with every field it leaves unset taken from `base`.
    #[must_use]
    pub fn over(&self, base: &Self) -> Self {
        macro_rules! pick {
            ($($f:ident),*) => { Self { $($f: self.$f.clone().or_else(|| base.$f.clone())),* } };
        }
        pick!(
            endpoint,
            region,
            profile,
            path_style,
            allow_http,
            access_key_id,
            secret_access_key,
            session_token
        )
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// A key pair given halfway is an error, so that a typo does not fall back to other keys.
    ///
    /// # Errors
    /// `Usage` naming the missing half.
    pub fn check(&self) -> Result<()> {
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => Err(Error::usage(
                "s3 settings give access_key_id without secret_access_key",
            )),
            (None, Some(_)) => Err(Error::usage(
                "s3 settings give secret_access_key without access_key_id",
            )),
            _ if self.session_token.is_some() && self.access_key_id.is_none() => Err(Error::usage(
                "s3 settings give session_token without a key pair",
            )),
            _ => Ok(()),
        }
    }
}

type Registry = Vec<(String, Arc<S3Settings>)>;

static REGISTRY: Mutex<Registry> = Mutex::new(Vec::new());

/// The scheme in lower case, no trailing `/` (keys are case-sensitive, so the rest stays).
fn normalized(url: &str) -> String {
    let url = url.trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
        None => url.to_string(),
    }
}

/// Reach everything under `url` (`s3://bucket` or `s3://bucket/prefix`) with `settings`.
/// Registering a URL again replaces its settings.
pub fn configure(url: &str, settings: S3Settings) {
    let key = normalized(url);
    let mut reg = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    reg.retain(|(k, _)| *k != key);
    reg.push((key, Arc::new(settings)));
}

/// The settings registered for the longest prefix of `url` (whole path components), or the
/// empty settings (the environment alone).
pub fn for_url(url: &str) -> Arc<S3Settings> {
    let url = normalized(url);
    let reg = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    reg.iter()
        .filter(|(k, _)| {
            url.strip_prefix(k.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|(k, _)| k.len())
        .map_or_else(|| Arc::new(S3Settings::default()), |(_, s)| Arc::clone(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_on_component_boundaries() {
        let a = S3Settings {
            region: Some("a".into()),
            ..S3Settings::default()
        };
        let b = S3Settings {
            region: Some("b".into()),
            ..S3Settings::default()
        };
        configure("s3://unit-bk", a.clone());
        configure("s3://unit-bk/team/", b.clone());
        assert_eq!(*for_url("s3://unit-bk/app"), a);
        assert_eq!(*for_url("s3://unit-bk/team/app"), b);
        assert_eq!(*for_url("s3://unit-bk/teamx/app"), a);
        assert!(for_url("s3://unit-other/app").is_empty());
        assert_eq!(*for_url("S3://unit-bk/team/app"), b);
        assert_eq!(*for_url("s3://unit-bk/Team/app"), a);
        let merged = b.over(&S3Settings {
            endpoint: Some("http://e".into()),
            region: Some("z".into()),
            ..S3Settings::default()
        });
        assert_eq!(merged.region.as_deref(), Some("b"));
        assert_eq!(merged.endpoint.as_deref(), Some("http://e"));
    }
}
