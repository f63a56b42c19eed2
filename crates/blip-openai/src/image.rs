//! Where an `image_url` (or an image input) points: inline data, or a URL to fetch.

use blip_tasks::request::RequestError;

/// An image named by a request.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// `data:image/...;base64,...` — decoded by the door, as its base64 images.
    Data(String),
    /// `http://` or `https://`: fetched only from hosts the operator allows
    /// (`serve --allow-image-url-host`).
    Url(String),
}

impl ImageSource {
    /// Reads `url` of the request field `field`; any other scheme is refused by name.
    pub fn parse(field: &str, url: &str) -> Result<ImageSource, RequestError> {
        let url = url.trim();
        let scheme = url
            .split_once(':')
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        match scheme.as_str() {
            "data" => Ok(ImageSource::Data(url.to_string())),
            "http" | "https" => Ok(ImageSource::Url(url.to_string())),
            "" => Err(RequestError::new(
                field,
                "an image is a data: URI (data:image/png;base64,...) or an http(s) URL",
            )),
            other => Err(RequestError::new(
                field,
                format!("URL scheme {other:?} is not taken: send a data: URI or an http(s) URL"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert!(matches!(
            ImageSource::parse("x", "data:image/png;base64,AAAA"),
            Ok(ImageSource::Data(_))
        ));
        assert!(matches!(
            ImageSource::parse("x", "HTTPS://example.com/a.png"),
            Ok(ImageSource::Url(_))
        ));
        let e = ImageSource::parse("messages[0].content[1].image_url", "file:///etc/passwd")
            .unwrap_err();
        assert_eq!(e.field, "messages[0].content[1].image_url");
        assert!(e.problem.contains("\"file\""), "{}", e.problem);
        assert!(ImageSource::parse("x", "no-scheme").is_err());
    }
}
