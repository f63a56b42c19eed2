//! Checking what was downloaded against the manifest, and naming what a package needs.

use blip_package::Manifest;
use sha2::{Digest, Sha256};

/// A graph whose bytes do not hash to the manifest's sha256.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "graph {role} ({url}) is corrupt: its sha256 is {actual}, the manifest says {expected} \
     (the server holds another file than the package lists)"
)]
pub struct ChecksumMismatch {
    pub role: String,
    pub url: String,
    pub expected: String,
    pub actual: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks `bytes` of graph `role` (fetched from `url`) against the manifest's sha256.
pub fn check_graph(
    role: &str,
    url: &str,
    expected: &str,
    bytes: &[u8],
) -> Result<(), ChecksumMismatch> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ChecksumMismatch {
            role: role.to_string(),
            url: url.to_string(),
            expected: expected.to_string(),
            actual,
        })
    }
}

/// One graph to fetch: its file, external data file, checksum and size, relative to the package URL.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphFile {
    pub role: String,
    pub file: String,
    pub data_file: Option<String>,
    pub sha256: String,
    pub bytes: u64,
}

/// The graphs a package lists, in manifest order.
pub fn graph_files(manifest: &Manifest) -> Vec<GraphFile> {
    manifest
        .graphs
        .iter()
        .map(|(role, g)| GraphFile {
            role: role.clone(),
            file: g.file.clone(),
            data_file: g.data_file.clone(),
            sha256: g.sha256.clone(),
            bytes: g.bytes,
        })
        .collect()
}

/// The Cache Storage key of a file: its URL plus the graph's checksum, so a package republished
/// under the same URL with other graphs is fetched again instead of served stale.
pub fn cache_key(url: &str, sha256: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}blip-sha256={sha256}")
}

/// Joins a package base URL and a file name in it.
pub fn join(base: &str, file: &str) -> String {
    format!("{}/{file}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_bytes() {
        // sha256("abc"), FIPS 180-2's example.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), abc);
        assert!(check_graph("decoder", "p/decoder.onnx", abc, b"abc").is_ok());
        let e = check_graph("decoder", "p/decoder.onnx", abc, b"abd").unwrap_err();
        assert_eq!(e.expected, abc);
        assert_ne!(e.actual, abc);
        let msg = e.to_string();
        assert!(
            msg.contains("graph decoder")
                && msg.contains("p/decoder.onnx")
                && msg.contains("corrupt"),
            "{msg}"
        );
    }

    #[test]
    fn keys_and_urls() {
        assert_eq!(
            join("/packages/cap/", "blip.json"),
            "/packages/cap/blip.json"
        );
        assert_eq!(cache_key("/p/a.onnx", "ab"), "/p/a.onnx?blip-sha256=ab");
        assert_eq!(
            cache_key("/p/a.onnx?v=1", "ab"),
            "/p/a.onnx?v=1&blip-sha256=ab"
        );
    }
}
