//! Where a destination is: a local folder, or an object store named by URL. Any other
//! `scheme://` is refused, so that `s3:/…`-like typos and unsupported stores are never taken for
//! a local folder named after the scheme.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A destination (or a set inside one) as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A folder on a local or mounted file system.
    Local(PathBuf),
    /// An S3-compatible bucket and a key prefix inside it (no leading or trailing `/`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, `""` for the bucket's root.
        prefix: String,
    },
}

impl Location {
    /// Read a destination as given on the command line or in a config: `s3://bucket/prefix`,
    /// `file:///path`, or a path.
    ///
    /// # Errors
    /// `Usage` for a URL with another scheme, or an `s3://` URL without a bucket.
    pub fn parse(given: &Path) -> Result<Self> {
        let Some(text) = given.to_str() else {
            return Ok(Self::Local(given.to_path_buf()));
        };
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(Self::Local(given.to_path_buf()));
        };
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Ok(Self::Local(given.to_path_buf()));
        }
        match scheme.to_ascii_lowercase().as_str() {
            "file" => Ok(Self::Local(PathBuf::from(rest))),
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(Error::usage(format!("{text:?} names no bucket"))
                        .hint("write s3://BUCKET or s3://BUCKET/PREFIX"));
                }
                Ok(Self::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                })
            }
            other => Err(Error::usage(format!(
                "{text:?}: walbundle does not know the scheme {other}://"
            ))
            .hint("use a folder path, file:///path, or s3://BUCKET/PREFIX (S3-compatible stores: AWS, MinIO, SeaweedFS, R2, B2, Ceph)")),
        }
    }

    /// This location with `name` appended (a set inside a destination).
    pub fn join(&self, name: &str) -> Self {
        match self {
            Self::Local(p) => Self::Local(p.join(name)),
            Self::S3 { bucket, prefix } => Self::S3 {
                bucket: bucket.clone(),
                prefix: if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                },
            },
        }
    }

    /// As the user would write it.
    pub fn display(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Self::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        let p = |s: &str| Location::parse(Path::new(s));
        assert_eq!(p("/var/b").unwrap(), Location::Local("/var/b".into()));
        assert_eq!(p("rel/dir").unwrap(), Location::Local("rel/dir".into()));
        assert_eq!(p("file:///x/y").unwrap(), Location::Local("/x/y".into()));
        assert_eq!(
            p("s3://bk/a/b/").unwrap(),
            Location::S3 {
                bucket: "bk".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(p("S3://bk").unwrap().join("app").display(), "s3://bk/app");
        let e = p("gs://bucket/x").unwrap_err().to_string();
        assert!(e.contains("gs://"), "{e}");
        assert!(p("s3:///x").is_err());
        // Not URLs: a folder whose name merely contains a colon.
        assert_eq!(p("a:b/c").unwrap(), Location::Local("a:b/c".into()));
    }
}
