//! An S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph RGW, Cloudflare R2,
//! Backblaze B2, Tigris) as a [`Store`]: requests are signed with SigV4 (`rusty-s3`) and sent
//! with a blocking HTTP client (`ureq`), one connection pool per store.
//!
//! Publication is `PUT` with `If-None-Match: *` (the store answers 412 if the key exists); a
//! file over [`MULTIPART_THRESHOLD`] goes up in parts and is published by the completion
//! request, also conditional. Nothing is ever overwritten: a write that finds the key taken
//! reads what is there and succeeds only if it holds the same bytes (a retry whose first answer
//! was lost), and is refused otherwise (another writer won the race).
//!
//! Transient failures — connection refused or reset, timeouts, 5xx, 429 and `SlowDown` — are
//! retried with exponential backoff and jitter (0.4 s doubling to 10 s, eight tries over about
//! 21 s: [`Retry`]).
//!
//! Configuration is the standard AWS one: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`),
//! `AWS_REGION` (or `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, and with `AWS_PROFILE` (default `default`) the shared files
//! `~/.aws/credentials` and `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE`,
//! `AWS_CONFIG_FILE`). Plain `http://` is allowed only for a loopback endpoint or with
//! `AWS_ALLOW_HTTP=true`. A custom endpoint is addressed path-style (`endpoint/bucket/key`),
//! AWS itself virtual-host style.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusty_s3::actions::{CompleteMultipartUpload, CreateMultipartUpload, ListObjectsV2, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use super::{Counters, Kind, Object, Requests, Store, TEMP_PREFIX};
use crate::error::{Error, ErrorKind, Result};

/// Files larger than this go up in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// The size of each part of a multipart upload (the last may be smaller).
pub const PART_SIZE: u64 = 16 << 20;
/// How long a signed request stays valid.
const SIGN_FOR: Duration = Duration::from_secs(900);

/// Where and how to reach a bucket.
#[derive(Clone)]
pub struct S3Config {
    /// The endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:9000`.
    pub endpoint: url::Url,
    /// The region signed into every request.
    pub region: String,
    /// Path-style addressing (custom endpoints) or virtual-host style (AWS).
    pub path_style: bool,
    /// Credentials; `None` sends unsigned requests (public buckets).
    pub credentials: Option<Credentials>,
    /// How failures are retried.
    pub retry: Retry,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("credentials", &self.credentials.as_ref().map(|_| "(set)"))
            .finish_non_exhaustive()
    }
}

/// Retries of transient failures: `attempts` tries in all, waiting between half and all of
/// `base` × 2ⁿ (at most `max`; the part in between random) before try n+1.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Tries in all (1: no retry).
    pub attempts: u32,
    /// The first backoff's ceiling.
    pub base: Duration,
    /// The largest backoff.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 8,
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `[section]` → key = value pairs of an AWS shared config or credentials file.
fn ini_section(path: &Path, section: &str) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

impl S3Config {
    /// A custom endpoint (path-style) in `region` with an access key pair.
    ///
    /// # Errors
    /// `Usage` if `endpoint` is not a URL.
    pub fn custom(endpoint: &str, region: &str, key: &str, secret: &str) -> Result<Self> {
        Ok(Self {
            endpoint: url::Url::parse(endpoint)
                .map_err(|e| Error::usage(format!("endpoint {endpoint:?} is not a URL: {e}")))?,
            region: region.to_string(),
            path_style: true,
            credentials: Some(Credentials::new(key, secret)),
            retry: Retry::default(),
        })
    }

    /// The configuration the standard AWS environment and shared files give (see the module
    /// documentation).
    ///
    /// # Errors
    /// As [`S3Config::resolve`].
    pub fn from_env() -> Result<Self> {
        Self::resolve(&super::S3Settings::default())
    }

    /// The configuration `settings` give, each unset field taken from the standard AWS
    /// environment and shared files. Credentials: the settings' own key pair, else the
    /// settings' `profile` in the shared files, else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
    /// else the `AWS_PROFILE` (or `default`) profile.
    ///
    /// # Errors
    /// `Usage` for a half-given key pair, an endpoint that is not a URL, or plain `http://` to
    /// a host that is not loopback without `allow_http` (or `AWS_ALLOW_HTTP=true`).
    pub fn resolve(settings: &super::S3Settings) -> Result<Self> {
        settings.check()?;
        let home = crate::sys::home_dir().unwrap_or_default();
        let profile = settings
            .profile
            .clone()
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        let cred_file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map_or_else(|| home.join(".aws/credentials"), PathBuf::from);
        let conf_file =
            env("AWS_CONFIG_FILE").map_or_else(|| home.join(".aws/config"), PathBuf::from);
        let mut shared = ini_section(&cred_file, &profile);
        let conf_section = if profile == "default" {
            "default".to_string()
        } else {
            format!("profile {profile}")
        };
        shared.extend(ini_section(&conf_file, &conf_section));
        let from_files = |k: &str| {
            shared
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        if settings.profile.is_some() && shared.is_empty() {
            return Err(Error::usage(format!(
                "s3 settings name profile {profile:?}, which {} and {} do not have",
                cred_file.display(),
                conf_file.display()
            )));
        }
        let region = settings
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| from_files("region"))
            .unwrap_or_else(|| "us-east-1".into());
        let custom = settings
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| from_files("endpoint_url"));
        let endpoint_text = custom
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = url::Url::parse(&endpoint_text)
            .map_err(|e| Error::usage(format!("endpoint {endpoint_text:?} is not a URL: {e}")))?;
        if endpoint.scheme() == "http" {
            let loopback = match endpoint.host() {
                Some(url::Host::Ipv4(a)) => a.is_loopback(),
                Some(url::Host::Ipv6(a)) => a.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            let allowed = settings.allow_http.unwrap_or_else(|| {
                env("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            });
            if !loopback && !allowed {
                return Err(Error::usage(format!(
                    "endpoint {endpoint_text} is plain http to a host that is not loopback: \
                     credentials and backups would cross the network unencrypted"
                ))
                .hint("use https://, or set AWS_ALLOW_HTTP=true (allow_http = true in a config) if the network is trusted"));
            }
        }
        let from_profile = settings.profile.is_some();
        let pick = |own: &Option<String>, var: &str, file_key: &str| {
            own.clone().or_else(|| {
                if from_profile {
                    from_files(file_key).or_else(|| env(var))
                } else {
                    env(var).or_else(|| from_files(file_key))
                }
            })
        };
        let own_pair = settings.access_key_id.is_some();
        let key = pick(
            &settings.access_key_id,
            "AWS_ACCESS_KEY_ID",
            "aws_access_key_id",
        );
        let secret = pick(
            &settings.secret_access_key,
            "AWS_SECRET_ACCESS_KEY",
            "aws_secret_access_key",
        );
        // A session token belongs to its key pair: never pair the settings' keys with the
        // environment's token.
        let token = if own_pair {
            settings.session_token.clone()
        } else {
            pick(&None, "AWS_SESSION_TOKEN", "aws_session_token")
        };
        let credentials = match (key, secret, token) {
            (Some(k), Some(s), Some(t)) => Some(Credentials::new_with_token(k, s, t)),
            (Some(k), Some(s), None) => Some(Credentials::new(k, s)),
            _ => None,
        };
        Ok(Self {
            endpoint,
            region,
            path_style: settings.path_style.unwrap_or(custom.is_some()),
            credentials,
            retry: Retry::default(),
        })
    }
}

/// A bucket and a key prefix in it, as a [`Store`].
pub struct S3Store {
    /// Tries per request (0: the config's).
    patience: std::sync::atomic::AtomicU32,
    bucket: Bucket,
    /// `""` or `prefix/`.
    prefix: String,
    config: S3Config,
    agent: ureq::Agent,
    counts: Counters,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket.name())
            .field("prefix", &self.prefix)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one attempt of a request came to.
enum Outcome<T> {
    Done(T),
    /// Worth another try, with why.
    Transient(String),
}

fn is_transient_status(code: u16) -> bool {
    code == 408 || code == 429 || (500..600).contains(&code)
}

impl S3Store {
    /// The store for `prefix` (no leading or trailing `/`; `""` for the bucket's root) in
    /// `bucket`, reached as `config` says.
    ///
    /// # Errors
    /// `Usage` if the endpoint and bucket name make no valid URL.
    pub fn new(bucket: &str, prefix: &str, config: S3Config) -> Result<Self> {
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let b = Bucket::new(
            config.endpoint.clone(),
            style,
            bucket.to_string(),
            config.region.clone(),
        )
        .map_err(|e| Error::usage(format!("bucket {bucket:?} at {}: {e}", config.endpoint)))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_send_body(Some(Duration::from_secs(120)))
            .build()
            .into();
        let prefix = prefix.trim_matches('/');
        Ok(Self {
            patience: std::sync::atomic::AtomicU32::new(0),
            bucket: b,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            config,
            agent,
            counts: Counters::default(),
        })
    }

    /// Create the bucket (for tests and first-time setup); one that exists and is ours is fine.
    ///
    /// # Errors
    /// `Io` if the store refuses.
    pub fn create_bucket(&self) -> Result<()> {
        let Some(creds) = &self.config.credentials else {
            return Err(Error::usage("creating a bucket needs credentials"));
        };
        let url = self.bucket.create_bucket(creds).sign(SIGN_FOR);
        self.retrying("", "creating the bucket", Kind::Put, || {
            let mut r = self
                .agent
                .put(url.as_str())
                .send_empty()
                .map_err(transport)?;
            let code = r.status().as_u16();
            let body = r.body_mut().read_to_string().unwrap_or_default();
            Ok(match code {
                200..=299 => Outcome::Done(()),
                409 if body.contains("BucketAlreadyOwnedByYou") => Outcome::Done(()),
                c if is_transient_status(c) => Outcome::Transient(format!("HTTP {c}")),
                c => return Err(self.status_error("", "creating the bucket", c, &body)),
            })
        })
    }

    /// The size of `key` (HEAD), `None` if missing.
    fn head_size(&self, key: &str) -> Result<Option<u64>> {
        let full = self.full_key(key);
        let url = self
            .bucket
            .head_object(self.config.credentials.as_ref(), &full)
            .sign(SIGN_FOR);
        self.retrying(key, "probing", Kind::Head, || {
            let r = match self.agent.head(url.as_str()).call() {
                Ok(r) => r,
                Err(e) => return Ok(Outcome::Transient(e.to_string())),
            };
            match r.status().as_u16() {
                200..=299 => Ok(Outcome::Done(
                    r.headers()
                        .get("content-length")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok()),
                )),
                404 => Ok(Outcome::Done(None)),
                c if is_transient_status(c) => Ok(Outcome::Transient(format!("HTTP {c}"))),
                c => Err(self.status_error(key, "probing", c, "")),
            }
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn status_error(&self, key: &str, action: &str, code: u16, body: &str) -> Error {
        let what = xml_tag(body, "Code").unwrap_or_default();
        let msg = xml_tag(body, "Message").unwrap_or_default();
        let kind = if code == 403 || code == 401 {
            "access denied"
        } else {
            "refused"
        };
        let mut e = Error::new(
            ErrorKind::Io,
            format!("{action}: the store answered HTTP {code} {what} ({kind}) {msg}")
                .trim()
                .to_string(),
        )
        .at(self.location(key));
        if code == 403 || code == 401 {
            e = e.hint(
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the \
                 bucket policy",
            );
        } else if code == 404 && what == "NoSuchBucket" {
            e = e.hint("create the bucket first, or check the name and AWS_ENDPOINT_URL");
        }
        e
    }

    /// Run `attempt` until it is done, fails for good, or the retries run out; each try is one
    /// request of `kind`.
    fn retrying<T>(
        &self,
        key: &str,
        action: &str,
        kind: Kind,
        mut attempt: impl FnMut() -> Result<Outcome<T>>,
    ) -> Result<T> {
        let mut retry = self.config.retry;
        let patience = self.patience.load(std::sync::atomic::Ordering::Relaxed);
        if patience > 0 {
            retry.attempts = patience;
        }
        let mut last = String::new();
        for n in 0..retry.attempts.max(1) {
            // A lowered patience (capture's) retries at once: its caller tries again at its next
            // poll, and a backoff here would stall its loop on every poll while the store is
            // down (200 – 400 ms each, so commits were read that much later).
            if n > 0 && patience == 0 {
                std::thread::sleep(backoff(retry, n));
            }
            self.counts.count(kind);
            match attempt()? {
                Outcome::Done(v) => return Ok(v),
                Outcome::Transient(why) => last = why,
            }
        }
        Err(Error::new(
            ErrorKind::Io,
            format!(
                "{action}: the store did not answer after {} tries ({last})",
                retry.attempts.max(1)
            ),
        )
        .at(self.location(key))
        .hint("check that the store is up and AWS_ENDPOINT_URL is right; nothing was published"))
    }

    fn sign_get(&self, key: &str) -> url::Url {
        let full = self.full_key(key);
        self.bucket
            .get_object(self.config.credentials.as_ref(), &full)
            .sign(SIGN_FOR)
    }

    /// GET `key`, optionally a byte range; `Ok(None)` if missing.
    fn get_inner(&self, key: &str, range: Option<(u64, u64)>, max: u64) -> Result<Vec<u8>> {
        let url = self.sign_get(key);
        self.retrying(key, "reading", Kind::Get, || {
            let mut req = self.agent.get(url.as_str());
            if let Some((off, len)) = range {
                if len == 0 {
                    return Ok(Outcome::Done(Vec::new()));
                }
                req = req.header("Range", format!("bytes={off}-{}", off + len - 1));
            }
            let mut r = match req.call() {
                Ok(r) => r,
                Err(e) => return Ok(Outcome::Transient(e.to_string())),
            };
            let code = r.status().as_u16();
            match code {
                200 | 206 => {}
                404 => return Err(not_found(&self.location(key))),
                416 => return Ok(Outcome::Done(Vec::new())),
                c if is_transient_status(c) => return Ok(Outcome::Transient(format!("HTTP {c}"))),
                c => {
                    let body = r.body_mut().read_to_string().unwrap_or_default();
                    return Err(self.status_error(key, "reading", c, &body));
                }
            }
            let declared = r
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(n) = declared.filter(|n| *n > max) {
                return Err(Error::corrupt(
                    self.location(key),
                    format!(
                        "object is {n} bytes, more than the {max} such an object can honestly hold"
                    ),
                ));
            }
            let mut buf = Vec::new();
            let read = r.body_mut().as_reader().take(max + 1).read_to_end(&mut buf);
            match read {
                Ok(_) if buf.len() as u64 > max => Err(Error::corrupt(
                    self.location(key),
                    format!("object is more than the {max} bytes such an object can honestly hold"),
                )),
                Ok(_) => Ok(Outcome::Done(buf)),
                Err(e) => Ok(Outcome::Transient(e.to_string())),
            }
        })
    }

    /// A conditional PUT of `body` at `url`; `Ok(false)` if the key was taken (412).
    fn put_if_absent(&self, key: &str, url: &url::Url, body: &[u8]) -> Result<bool> {
        self.retrying(key, "writing", Kind::Put, || {
            let r = self
                .agent
                .put(url.as_str())
                .header("If-None-Match", "*")
                .send(body);
            let mut r = match r {
                Ok(r) => r,
                Err(e) => return Ok(Outcome::Transient(e.to_string())),
            };
            let code = r.status().as_u16();
            match code {
                200..=299 => Ok(Outcome::Done(true)),
                412 => Ok(Outcome::Done(false)),
                // A conditional write racing another on the same key: retry, then decide.
                409 => Ok(Outcome::Transient("HTTP 409 (a concurrent write)".into())),
                c if is_transient_status(c) => Ok(Outcome::Transient(format!("HTTP {c}"))),
                c => {
                    let body = r.body_mut().read_to_string().unwrap_or_default();
                    Err(self.status_error(key, "writing", c, &body))
                }
            }
        })
    }

    /// The key is taken: success if it holds `same` (compared by `matches`), else refused.
    fn taken(&self, key: &str, matches: impl FnOnce(&Self) -> Result<bool>) -> Result<()> {
        if matches(self)? {
            return Ok(());
        }
        Err(Error::refused(
            "already exists with other contents: another writer published here first \
             (nothing is ever overwritten)",
        )
        .at(self.location(key)))
    }

    /// A listing GET of the signed `url` (for `key`, doing `what`), retried while transient, its
    /// answer (at most 64 MiB) parsed by `parse`.
    fn list_request<T>(
        &self,
        url: &url::Url,
        key: &str,
        what: &str,
        parse: impl Fn(&str) -> Result<T>,
    ) -> Result<T> {
        self.retrying(key, what, Kind::List, || {
            let mut r = match self.agent.get(url.as_str()).call() {
                Ok(r) => r,
                Err(e) => return Ok(Outcome::Transient(e.to_string())),
            };
            let code = r.status().as_u16();
            let body = match r.body_mut().with_config().limit(64 << 20).read_to_string() {
                Ok(b) => b,
                Err(e) => return Ok(Outcome::Transient(e.to_string())),
            };
            match code {
                200 => parse(&body).map(Outcome::Done),
                c if is_transient_status(c) => Ok(Outcome::Transient(format!("HTTP {c}"))),
                c => Err(self.status_error(key, what, c, &body)),
            }
        })
    }

    /// One page of ListMultipartUploads under `full_prefix` from the given markers: the
    /// uploads (key, upload id, initiated) and the markers of the next page.
    #[allow(clippy::type_complexity)]
    fn list_uploads_page(
        &self,
        full_prefix: &str,
        markers: Option<&(String, String)>,
    ) -> Result<(Vec<(String, String, String)>, Option<(String, String)>)> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some((k, u)) = markers {
            query.push(("key-marker", k));
            query.push(("prefix", full_prefix));
            query.push(("upload-id-marker", u));
        } else {
            query.push(("prefix", full_prefix));
        }
        query.push(("uploads", ""));
        let base = self.bucket.base_url().clone();
        let url = match &self.config.credentials {
            Some(c) => rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Get,
                base,
                c.key(),
                c.secret(),
                c.token(),
                &self.config.region,
                SIGN_FOR.as_secs(),
                query.iter().copied(),
                std::iter::empty(),
            ),
            None => {
                let mut u = base;
                u.query_pairs_mut().extend_pairs(query.iter().copied());
                u
            }
        };
        let body =
            self.list_request(
                &url,
                "",
                "listing unfinished uploads",
                |b| Ok(b.to_string()),
            )?;
        let uploads = xml_blocks(&body, "Upload")
            .into_iter()
            .filter_map(|u| {
                Some((
                    xml_unescape(&xml_tag(u, "Key")?),
                    xml_unescape(&xml_tag(u, "UploadId")?),
                    xml_tag(u, "Initiated").unwrap_or_default(),
                ))
            })
            .collect();
        let next = (xml_tag(&body, "IsTruncated").as_deref() == Some("true"))
            .then(|| {
                Some((
                    xml_unescape(&xml_tag(&body, "NextKeyMarker")?),
                    xml_unescape(&xml_tag(&body, "NextUploadIdMarker")?),
                ))
            })
            .flatten()
            .filter(|m| Some(m) != markers);
        Ok((uploads, next))
    }

    fn multipart(&self, key: &str, src: &Path, size: u64) -> Result<bool> {
        let full = self.full_key(key);
        let creds = self.config.credentials.as_ref();
        let url = CreateMultipartUpload::new(&self.bucket, creds, &full).sign(SIGN_FOR);
        let upload_id = self.retrying(key, "starting an upload", Kind::Put, || {
            let mut r = match self.agent.post(url.as_str()).send_empty() {
                Ok(r) => r,
                Err(e) => return Ok(Outcome::Transient(e.to_string())),
            };
            let code = r.status().as_u16();
            let body = r.body_mut().read_to_string().unwrap_or_default();
            match code {
                200..=299 => CreateMultipartUpload::parse_response(&body)
                    .map(|p| Outcome::Done(p.upload_id().to_string()))
                    .map_err(|e| Error::corrupt(self.location(key), format!("upload answer: {e}"))),
                c if is_transient_status(c) => Ok(Outcome::Transient(format!("HTTP {c}"))),
                c => Err(self.status_error(key, "starting an upload", c, &body)),
            }
        })?;
        let res = self.upload_parts(key, &full, src, size, &upload_id);
        if res.is_err() {
            let url = self
                .bucket
                .abort_multipart_upload(creds, &full, &upload_id)
                .sign(SIGN_FOR);
            self.counts.count(Kind::Delete);
            let _ = self.agent.delete(url.as_str()).call();
        }
        res
    }

    fn upload_parts(
        &self,
        key: &str,
        full: &str,
        src: &Path,
        size: u64,
        upload_id: &str,
    ) -> Result<bool> {
        use std::io::{Seek, SeekFrom};
        let creds = self.config.credentials.as_ref();
        let mut f = std::fs::File::open(src).map_err(|e| Error::io(src, "opening", e))?;
        let mut etags = Vec::new();
        let parts = size.div_ceil(PART_SIZE);
        let mut buf = Vec::new();
        for i in 0..parts {
            let number = u16::try_from(i + 1)
                .map_err(|_| Error::usage("file too large for 65,535 parts").at(src))?;
            buf.clear();
            f.seek(SeekFrom::Start(i * PART_SIZE))
                .map_err(|e| Error::io(src, "seeking", e))?;
            Read::by_ref(&mut f)
                .take(PART_SIZE)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(src, "reading", e))?;
            let url = self
                .bucket
                .upload_part(creds, full, number, upload_id)
                .sign(SIGN_FOR);
            let etag = self.retrying(key, "uploading a part", Kind::Put, || {
                let mut r = match self.agent.put(url.as_str()).send(&buf[..]) {
                    Ok(r) => r,
                    Err(e) => return Ok(Outcome::Transient(e.to_string())),
                };
                let code = r.status().as_u16();
                match code {
                    200..=299 => Ok(Outcome::Done(
                        r.headers()
                            .get("etag")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string(),
                    )),
                    c if is_transient_status(c) => Ok(Outcome::Transient(format!("HTTP {c}"))),
                    c => {
                        let body = r.body_mut().read_to_string().unwrap_or_default();
                        Err(self.status_error(key, "uploading a part", c, &body))
                    }
                }
            })?;
            etags.push(etag);
        }
        let done = CompleteMultipartUpload::new(
            &self.bucket,
            creds,
            full,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = done.sign(SIGN_FOR);
        let body = done.body();
        self.retrying(key, "completing an upload", Kind::Put, || {
            let r = self
                .agent
                .post(url.as_str())
                .header("If-None-Match", "*")
                .send(body.as_bytes());
            let mut r = match r {
                Ok(r) => r,
                Err(e) => return Ok(Outcome::Transient(e.to_string())),
            };
            let code = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            match code {
                // S3 may answer 200 with an error document.
                200..=299 if text.contains("<Error>") => Ok(Outcome::Transient(
                    xml_tag(&text, "Code").unwrap_or_default(),
                )),
                200..=299 => Ok(Outcome::Done(true)),
                412 => Ok(Outcome::Done(false)),
                c if is_transient_status(c) => Ok(Outcome::Transient(format!("HTTP {c}"))),
                c => Err(self.status_error(key, "completing an upload", c, &text)),
            }
        })
    }
}

fn transport(e: ureq::Error) -> Error {
    Error::new(ErrorKind::Io, format!("could not reach the store: {e}"))
}

fn not_found(at: &Path) -> Error {
    Error::io(at, "reading", io::Error::from(io::ErrorKind::NotFound))
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn xml_tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].to_string())
}

/// `&amp;` and its kin, as S3 escapes keys in XML answers.
fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Every `<tag>…</tag>` block of `xml`, in order.
fn xml_blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

fn backoff(retry: Retry, n: u32) -> Duration {
    let ceiling = retry.base.saturating_mul(1u32 << n.min(16)).min(retry.max);
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    let frac = (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64;
    // Equal jitter: at least half the ceiling, so a run of retries spans a predictable time
    // (about 21 s for the default eight tries) while writers that failed together spread out.
    ceiling.mul_f64(0.5 + frac / 2.0)
}

impl Store for S3Store {
    fn abort_abandoned_uploads(&self, prefix: &str, older_than: Duration) -> Result<usize> {
        let full_prefix = self.full_key(prefix);
        let now = jiff::Timestamp::now();
        let mut markers = None;
        let mut aborted = 0;
        loop {
            let (uploads, next) = self.list_uploads_page(&full_prefix, markers.as_ref())?;
            for (full, id, initiated) in uploads {
                // An upload whose start we cannot read is left alone (it may be live).
                let Ok(t) = initiated.parse::<jiff::Timestamp>() else {
                    continue;
                };
                let age = now.as_microsecond() - t.as_microsecond();
                if age < 0 || (age as u128) < older_than.as_micros() {
                    continue;
                }
                let key = full.strip_prefix(&self.prefix).unwrap_or(&full).to_string();
                let url = self
                    .bucket
                    .abort_multipart_upload(self.config.credentials.as_ref(), &full, &id)
                    .sign(SIGN_FOR);
                self.retrying(&key, "aborting an unfinished upload", Kind::Delete, || {
                    let mut r = match self.agent.delete(url.as_str()).call() {
                        Ok(r) => r,
                        Err(e) => return Ok(Outcome::Transient(e.to_string())),
                    };
                    let code = r.status().as_u16();
                    let body = r.body_mut().read_to_string().unwrap_or_default();
                    match code {
                        200..=299 | 404 => Ok(Outcome::Done(())),
                        c if is_transient_status(c) => Ok(Outcome::Transient(format!("HTTP {c}"))),
                        c => {
                            Err(self.status_error(&key, "aborting an unfinished upload", c, &body))
                        }
                    }
                })?;
                aborted += 1;
            }
            match next {
                Some(m) => markers = Some(m),
                None => return Ok(aborted),
            }
        }
    }

    fn location(&self, key: &str) -> PathBuf {
        PathBuf::from(format!(
            "s3://{}/{}",
            self.bucket.name(),
            self.full_key(key)
        ))
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<()> {
        let full = self.full_key(key);
        let url = self
            .bucket
            .put_object(self.config.credentials.as_ref(), &full)
            .sign(SIGN_FOR);
        if self.put_if_absent(key, &url, data)? {
            return Ok(());
        }
        // Compare by size (one HEAD), then content. A store that does not answer is an error
        // to retry, never "other contents": the first PUT may have landed with its answer lost
        // (seen through a proxy that resets connections), and the object is then ours.
        self.taken(key, |s| {
            if s.head_size(key)? != Some(data.len() as u64) {
                return Ok(false);
            }
            Ok(s.get_inner(key, None, data.len() as u64)? == data)
        })
    }

    fn put_new_file(&self, key: &str, src: &Path) -> Result<()> {
        let size = std::fs::metadata(src)
            .map_err(|e| Error::io(src, "reading metadata", e))?
            .len();
        let published = if size > MULTIPART_THRESHOLD {
            self.multipart(key, src, size)?
        } else {
            let data = std::fs::read(src).map_err(|e| Error::io(src, "reading", e))?;
            return self.put_new(key, &data);
        };
        if published {
            return Ok(());
        }
        self.taken(key, |s| {
            // Compare by size (one HEAD), then content, a part at a time.
            if s.head_size(key)? != Some(size) {
                return Ok(false);
            }
            let mut f = std::fs::File::open(src).map_err(|e| Error::io(src, "opening", e))?;
            let mut off = 0;
            while off < size {
                let len = PART_SIZE.min(size - off);
                let theirs = s.get_range(key, off, len)?;
                let mut ours = Vec::new();
                Read::by_ref(&mut f)
                    .take(len)
                    .read_to_end(&mut ours)
                    .map_err(|e| Error::io(src, "reading", e))?;
                if theirs != ours {
                    return Ok(false);
                }
                off += len;
            }
            Ok(s.get_range(key, size, 1)?.is_empty())
        })
    }

    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>> {
        self.get_inner(key, None, max)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.get_inner(key, Some((offset, len)), len)
    }

    fn reader(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let url = self.sign_get(key);
        self.retrying(key, "reading", Kind::Get, || {
            let r = match self.agent.get(url.as_str()).call() {
                Ok(r) => r,
                Err(e) => return Ok(Outcome::Transient(e.to_string())),
            };
            match r.status().as_u16() {
                200 => Ok(Outcome::Done(
                    Box::new(r.into_body().into_reader()) as Box<dyn Read + Send>
                )),
                404 => Err(not_found(&self.location(key))),
                c if is_transient_status(c) => Ok(Outcome::Transient(format!("HTTP {c}"))),
                c => {
                    let mut r = r;
                    let body = r.body_mut().read_to_string().unwrap_or_default();
                    Err(self.status_error(key, "reading", c, &body))
                }
            }
        })
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<Object>> {
        let full_prefix = self.full_key(prefix);
        let full_after = start_after.map(|s| self.full_key(s));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, self.config.credentials.as_ref());
            action.with_prefix(full_prefix.as_str());
            if let Some(a) = &full_after {
                action.with_start_after(a.as_str());
            }
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGN_FOR);
            let page = self.list_request(&url, prefix, "listing", |body| {
                ListObjectsV2::parse_response(body).map_err(|e| {
                    Error::corrupt(self.location(prefix), format!("listing answer: {e}"))
                })
            })?;
            for c in page.contents {
                let Some(key) = c.key.strip_prefix(&self.prefix) else {
                    continue;
                };
                let name = key.rsplit('/').next().unwrap_or(key);
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                out.push(Object {
                    key: key.to_string(),
                    size: c.size.unwrap_or(0),
                });
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key);
        let url = self
            .bucket
            .delete_object(self.config.credentials.as_ref(), &full)
            .sign(SIGN_FOR);
        self.retrying(key, "deleting", Kind::Delete, || {
            let mut r = match self.agent.delete(url.as_str()).call() {
                Ok(r) => r,
                Err(e) => return Ok(Outcome::Transient(e.to_string())),
            };
            match r.status().as_u16() {
                200..=299 | 404 => Ok(Outcome::Done(())),
                c if is_transient_status(c) => Ok(Outcome::Transient(format!("HTTP {c}"))),
                c => {
                    let body = r.body_mut().read_to_string().unwrap_or_default();
                    Err(self.status_error(key, "deleting", c, &body))
                }
            }
        })
    }

    fn requests(&self) -> Requests {
        self.counts.snapshot()
    }

    fn set_patience(&self, attempts: u32) {
        self.patience
            .store(attempts.max(1), std::sync::atomic::Ordering::Relaxed);
    }
}
