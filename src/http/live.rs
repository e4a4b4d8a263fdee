//! The web configuration in force, read again when its file or a file it names changes.
//!
//! exporter-toolkit reads the file on every request and the certificate on every handshake, so a
//! renewed certificate or a changed password takes effect without a restart. The same holds here
//! at the cost of a few `stat` calls per connection and request: the file and the certificate,
//! key and client CA files are read again only when one of them changed (device, inode, size or
//! modification time), so keep-alive scrapes parse nothing. A file that no longer checks out
//! leaves the last good configuration serving; it is logged and counted once per change, not per
//! request.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_rustls::rustls::ServerConfig;

use super::web_config::{RateLimit, WebConfig, WebConfigError};
use crate::internal_events::WebConfigReloadError;

/// What identifies one version of a file on disk; `None` when it cannot be read.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    ))
}

/// One checked web configuration, with its TLS configuration built and its rate limiter.
#[derive(Default)]
pub struct Active {
    /// The file's settings.
    pub config: WebConfig,
    /// The TLS configuration, when the file sets TLS up.
    pub tls: Option<Arc<ServerConfig>>,
    /// The rate limiter, when the file sets one.
    pub limiter: Option<Arc<RateLimiter>>,
}

impl Active {
    /// Reads `path` and every file it names.
    fn load(path: &Path) -> Result<Active, WebConfigError> {
        let config = WebConfig::read(path)?;
        let tls = match &config.tls {
            Some(settings) => {
                Some(
                    super::tls::server_config(settings).map_err(|message| WebConfigError {
                        path: path.display().to_string(),
                        message,
                    })?,
                )
            }
            None => None,
        };
        let limiter = config
            .rate_limit
            .map(|limit| Arc::new(RateLimiter::new(limit)));
        Ok(Active {
            config,
            tls,
            limiter,
        })
    }
}

/// The web configuration file as served: the last good version, checked for changes on use.
pub struct LiveConfig {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// The stamps of the file and of the files it names, when last read.
    stamps: Vec<(PathBuf, Stamp)>,
    active: Arc<Active>,
}

impl LiveConfig {
    /// Reads and checks `path` and the files it names, as at start-up: any problem is an error.
    pub fn open(path: &Path) -> Result<LiveConfig, WebConfigError> {
        // Stamped before reading: a change while reading is seen at the next use.
        let before = stamp(path);
        let active = Active::load(path)?;
        let stamps = stamps_of(path, before, &active.config);
        Ok(LiveConfig {
            path: path.to_owned(),
            state: Mutex::new(State {
                stamps,
                active: Arc::new(active),
            }),
        })
    }

    /// The configuration in force, read again first if a file changed. A change that does not
    /// check out is counted and logged once, and the last good configuration stays.
    pub fn current(&self) -> Arc<Active> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let changed = state.stamps.iter().any(|(path, old)| stamp(path) != *old);
        if !changed {
            return state.active.clone();
        }
        let before = stamp(&self.path);
        match Active::load(&self.path) {
            Ok(active) if active.tls.is_some() != state.active.tls.is_some() => {
                // Listeners were set up for one or the other; the file does not switch them.
                state.stamps = stamps_of(&self.path, before, &active.config);
                WebConfigReloadError {
                    error: &format!(
                        "{}: turning TLS on or off takes a restart",
                        self.path.display()
                    ),
                }
                .emit();
            }
            Ok(mut active) => {
                state.stamps = stamps_of(&self.path, before, &active.config);
                // An unchanged rate limit keeps its bucket.
                if let (Some(old), Some(_)) = (&state.active.limiter, &active.limiter) {
                    if old.limit == active.config.rate_limit.unwrap_or(old.limit) {
                        active.limiter = Some(old.clone());
                    }
                }
                state.active = Arc::new(active);
                tracing::info!(
                    file = %self.path.display(),
                    "Read the web configuration again."
                );
            }
            Err(error) => {
                // The files as they are now are the broken version: not read again until they
                // change once more. Files the broken version may name are not known, so the last
                // good version's are kept.
                let mut stamps: Vec<(PathBuf, Stamp)> = state
                    .stamps
                    .iter()
                    .map(|(path, _)| (path.clone(), stamp(path)))
                    .collect();
                stamps[0].1 = before;
                state.stamps = stamps;
                WebConfigReloadError {
                    error: &error.to_string(),
                }
                .emit();
            }
        }
        state.active.clone()
    }
}

fn stamps_of(path: &Path, before: Stamp, config: &WebConfig) -> Vec<(PathBuf, Stamp)> {
    let mut stamps = vec![(path.to_owned(), before)];
    stamps.extend(config.files().into_iter().map(|file| {
        let stamp = stamp(&file);
        (file, stamp)
    }));
    stamps
}

/// `rate_limit`: a token bucket holding up to `burst` requests, refilled one per `interval`,
/// full at the start (as Go's `rate.Limiter`).
pub struct RateLimiter {
    limit: RateLimit,
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            bucket: Mutex::new((f64::from(limit.burst), Instant::now())),
        }
    }

    /// Whether one more request may go through now.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *bucket;
        let refill = now.saturating_duration_since(last).as_secs_f64()
            / self
                .limit
                .interval
                .max(Duration::from_nanos(1))
                .as_secs_f64();
        let tokens = (tokens + refill).min(f64::from(self.limit.burst));
        let allowed = tokens >= 1.0;
        *bucket = (if allowed { tokens - 1.0 } else { tokens }, now);
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "crashwatch-live-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const HASH: &str = "$2y$04$zViP7VBRZFCwCsvFMZyBoePzNoauCeUl6n0yRtTdR/8ADbeRGqTfq";

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_last_good() {
        let dir = Dir::new("reload");
        let path = dir.0.join("web.yml");
        std::fs::write(&path, format!("basic_auth_users:\n  alice: {HASH}\n")).unwrap();
        let live = LiveConfig::open(&path).expect("valid");
        let first = live.current();
        assert!(first.config.users.contains_key("alice"));
        assert!(
            Arc::ptr_eq(&first, &live.current()),
            "unchanged: not read again"
        );

        std::fs::write(
            &path,
            format!("basic_auth_users:\n  bob: {HASH}\n# longer\n"),
        )
        .unwrap();
        let second = live.current();
        assert!(second.config.users.contains_key("bob"));
        assert!(!second.config.users.contains_key("alice"));

        std::fs::write(&path, "basic_auth_users: [\n").unwrap();
        let kept = live.current();
        assert!(
            Arc::ptr_eq(&second, &kept),
            "a broken file keeps the last good"
        );
        assert!(Arc::ptr_eq(&kept, &live.current()), "and is not read again");

        std::fs::write(&path, "").unwrap();
        assert!(live.current().config.users.is_empty(), "fixed: read again");
    }

    #[test]
    fn a_broken_file_at_start_is_an_error_naming_it() {
        let dir = Dir::new("start");
        let path = dir.0.join("web.yml");
        std::fs::write(
            &path,
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: k\n",
        )
        .unwrap();
        let error = LiveConfig::open(&path).err().expect("refused").to_string();
        assert!(error.starts_with(&path.display().to_string()), "{error}");
        assert!(error.contains("cert_file"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn the_rate_limiter_is_a_token_bucket() {
        let limiter = RateLimiter::new(RateLimit {
            interval: Duration::from_secs(1),
            burst: 2,
        });
        let start = Instant::now();
        assert!(limiter.allow_at(start));
        assert!(limiter.allow_at(start));
        assert!(!limiter.allow_at(start), "the burst is spent");
        assert!(!limiter.allow_at(start + Duration::from_millis(500)));
        assert!(limiter.allow_at(start + Duration::from_millis(1000)));
        assert!(!limiter.allow_at(start + Duration::from_millis(1001)));
        let none = RateLimiter::new(RateLimit {
            interval: Duration::from_secs(1),
            burst: 0,
        });
        assert!(
            !none.allow_at(start + Duration::from_secs(10)),
            "burst 0 allows nothing"
        );
    }
}
