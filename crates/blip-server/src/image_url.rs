//! Fetching `image_url`s for the OpenAI-compatible routes, without becoming an open proxy.
//!
//! The rules (the README's "Image URLs" states them for operators):
//! - only `http`/`https`, and only hosts named by `--allow-image-url-host` (none by default:
//!   data: URIs only);
//! - a host's addresses are checked when the connection is made (so DNS rebinding cannot slip
//!   past): loopback, private, link-local, CGNAT, unique-local, multicast and unspecified
//!   addresses are refused unless `--allow-private-image-urls`; an IP-literal host the same;
//! - redirects are followed (at most 3) only to the same host, and re-checked;
//! - the whole fetch has `--image-url-timeout`, the body `--payload-limit` bytes; the image then
//!   meets the same pixel limit as an uploaded one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::ServeArgs;
use crate::error::ApiError;
use crate::input::RawImage;

/// Most redirects followed (same host only).
const MAX_REDIRECTS: usize = 3;

pub struct UrlFetcher {
    hosts: Vec<String>,
    allow_private: bool,
    max_bytes: usize,
    client: Option<reqwest::Client>,
}

/// Addresses a fetch must not reach unless the operator allows private targets.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                // 100.64.0.0/10 (carrier-grade NAT)
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// Resolves names, keeping only addresses the policy allows.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || !is_private(a.ip()))
                .collect();
            if kept.is_empty() {
                return Err(format!(
                    "{host} resolves only to private or loopback addresses \
                     (--allow-private-image-urls lets it)"
                )
                .into());
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

fn host_allowed(hosts: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    hosts.iter().any(|h| {
        let h = h.trim().to_ascii_lowercase();
        match h.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == h,
        }
    })
}

impl UrlFetcher {
    pub fn new(args: &ServeArgs) -> Result<UrlFetcher, String> {
        let hosts: Vec<String> = args
            .allow_image_url_hosts
            .iter()
            .filter(|h| !h.trim().is_empty())
            .cloned()
            .collect();
        let client = if hosts.is_empty() {
            None
        } else {
            let policy = reqwest::redirect::Policy::custom(|attempt| {
                let first_host = attempt
                    .previous()
                    .first()
                    .and_then(|u| u.host_str())
                    .map(str::to_string);
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
                } else if attempt.url().host_str().map(str::to_string) != first_host {
                    let to = attempt.url().host_str().unwrap_or("").to_string();
                    attempt.error(format!("a redirect to another host ({to}) is not followed"))
                } else {
                    attempt.follow()
                }
            });
            Some(
                reqwest::Client::builder()
                    .redirect(policy)
                    .timeout(Duration::from_secs_f64(args.image_url_timeout.max(0.001)))
                    .dns_resolver(Arc::new(GuardedResolver {
                        allow_private: args.allow_private_image_urls,
                    }))
                    .no_proxy()
                    .build()
                    .map_err(|e| format!("the image URL client: {e}"))?,
            )
        };
        Ok(UrlFetcher {
            hosts,
            allow_private: args.allow_private_image_urls,
            max_bytes: args.payload_limit,
            client,
        })
    }

    /// The image at `url` (named `field` in errors), or why it is not fetched.
    pub async fn fetch(&self, field: &str, url: &str) -> Result<RawImage, ApiError> {
        let refuse = |why: String| ApiError::validation(format!("{field}: {why}"));
        let Some(client) = &self.client else {
            return Err(refuse(
                "image URLs are not fetched by this server: send the image as a data: URI \
                 (the operator can allow hosts with --allow-image-url-host)"
                    .into(),
            ));
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| refuse(format!("not a URL: {e}")))?;
        let host = parsed.host_str().unwrap_or("").to_string();
        if !host_allowed(&self.hosts, &host) {
            return Err(refuse(format!(
                "host {host:?} is not in --allow-image-url-host"
            )));
        }
        // An IP literal is not resolved, so the resolver's check does not see it.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>()
            && is_private(ip)
            && !self.allow_private
        {
            return Err(refuse(format!(
                "{ip} is a private or loopback address (--allow-private-image-urls lets it)"
            )));
        }
        let mut resp = client.get(parsed).send().await.map_err(|e| {
            // The cause (the resolver's refusal, a redirect refused) is deep in the chain.
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                let text = c.to_string();
                if !why.contains(&text) {
                    why = format!("{why}: {text}");
                }
                cause = c.source();
            }
            if e.is_timeout() {
                refuse("fetching timed out (--image-url-timeout)".into())
            } else {
                refuse(format!("fetching failed: {why}"))
            }
        })?;
        if !resp.status().is_success() {
            return Err(refuse(format!("the URL answered HTTP {}", resp.status())));
        }
        if let Some(n) = resp.content_length()
            && n > self.max_bytes as u64
        {
            return Err(ApiError::too_large(format!(
                "{field}: the image is {n} bytes; at most {} (--payload-limit)",
                self.max_bytes
            )));
        }
        let mut bytes = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    refuse("fetching timed out (--image-url-timeout)".into())
                } else {
                    refuse(format!("reading the image: {e}"))
                }
            })?;
            let Some(chunk) = chunk else { break };
            if bytes.len() + chunk.len() > self.max_bytes {
                return Err(ApiError::too_large(format!(
                    "{field}: the image is over {} bytes (--payload-limit)",
                    self.max_bytes
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(RawImage {
            name: field.to_string(),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_and_host_patterns() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
        let hosts = vec!["photos.example.com".to_string(), "*.cdn.example.org".into()];
        assert!(host_allowed(&hosts, "Photos.Example.com"));
        assert!(host_allowed(&hosts, "a.cdn.example.org"));
        assert!(!host_allowed(&hosts, "cdn.example.org"));
        assert!(!host_allowed(&hosts, "evilphotos.example.com"));
    }
}
