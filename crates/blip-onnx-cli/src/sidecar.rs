//! Caption sidecars: a file next to each image that other tools read the caption from.
//!
//! - `photo.txt`: the caption on one line, as kohya_ss's `make_captions.py` writes and its trainers
//!   (and EveryDream) read it,
//! - `photo.json`: the caption, the package and the resolved decoding options,
//! - `photo.xmp`: an XMP packet with the caption as `dc:description` (x-default), the sidecar name
//!   exiftool's `%d%f.xmp` and Lightroom use.
//!
//! Each is written to a temporary file in the image's folder and renamed over the sidecar, so a
//! reader (or a resumed run) never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use blip_runtime::{CaptionOptions, Strategy};
use clap::ValueEnum;
use serde_json::json;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Kind {
    /// `photo.txt`: the caption, one line.
    Txt,
    /// `photo.json`: caption, model and decoding options.
    Json,
    /// `photo.xmp`: XMP sidecar, caption as dc:description.
    Xmp,
}

impl Kind {
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Txt => "txt",
            Kind::Json => "json",
            Kind::Xmp => "xmp",
        }
    }

    /// The sidecar of `image`: its extension replaced (`photo.jpg` → `photo.txt`).
    pub fn path_for(self, image: &Path) -> PathBuf {
        image.with_extension(self.extension())
    }

    /// The sidecar's contents.
    pub fn render(self, caption: &str, model: &str, options: &CaptionOptions) -> String {
        // One line whatever the tokenizer gave back: readers take the first line as the caption.
        let caption = caption.replace(['\r', '\n'], " ");
        match self {
            Kind::Txt => format!("{caption}\n"),
            Kind::Json => {
                let doc =
                    json!({"caption": caption, "model": model, "options": options_json(options)});
                format!("{doc:#}\n")
            }
            Kind::Xmp => xmp(&caption),
        }
    }
}

/// The resolved options as a caption request (the request layer's field names), so that the
/// sidecar's `options` give the same options back through `CaptionRequest::resolve`.
pub fn options_json(o: &CaptionOptions) -> serde_json::Value {
    let mut v = json!({
        "prompt": o.prompt,
        "max_length": o.max_length,
        "min_length": o.min_length,
        "repetition_penalty": o.repetition_penalty,
    });
    let extra = match &o.strategy {
        Strategy::Greedy => json!({"beams": 1, "sample": false}),
        Strategy::Beam {
            num_beams,
            length_penalty,
            ..
        } => json!({"beams": num_beams, "sample": false, "length_penalty": length_penalty}),
        Strategy::Sample {
            temperature,
            top_k,
            top_p,
            seed,
        } => {
            json!({"sample": true, "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed})
        }
    };
    if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

/// Text as XML character data or attribute value: the five markup characters escaped, and the
/// characters XML 1.0 cannot hold at all (C0 controls but tab and line ends) as spaces.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An XMP packet (the wrapper exiftool writes for sidecars) holding the caption as
/// `dc:description`, a language alternative with the default language only.
fn xmp(caption: &str) -> String {
    format!(
        "<?xpacket begin='\u{feff}' id='W5M0MpCehiHzreSzNTczkc9d'?>\n\
         <x:xmpmeta xmlns:x='adobe:ns:meta/' x:xmptk='blip-onnx {version}'>\n\
         <rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>\n\
         \x20<rdf:Description rdf:about=''\n\
         \x20\x20xmlns:dc='http://purl.org/dc/elements/1.1/'>\n\
         \x20\x20<dc:description>\n\
         \x20\x20\x20<rdf:Alt>\n\
         \x20\x20\x20\x20<rdf:li xml:lang='x-default'>{text}</rdf:li>\n\
         \x20\x20\x20</rdf:Alt>\n\
         \x20\x20</dc:description>\n\
         \x20</rdf:Description>\n\
         </rdf:RDF>\n\
         </x:xmpmeta>\n\
         <?xpacket end='w'?>\n",
        version = env!("CARGO_PKG_VERSION"),
        text = xml_escape(caption),
    )
}

/// Writes `contents` to `path` through a temporary file in the same folder, renamed into place
/// (atomic on one file system): the old sidecar or the whole new one, never a part.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// What to do with a sidecar that is already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse the run before any work, naming the file.
    Refuse,
    /// Leave it, and do not caption its image (resuming a run).
    Skip,
    /// Replace it.
    Overwrite,
}

/// `caption --write`: which sidecar, and what to do with existing ones.
#[derive(Clone, Copy, Debug)]
pub struct WriteSpec {
    pub kind: Kind,
    pub existing: Existing,
}

/// The images still to caption (each with its sidecar) and how many were skipped, or an error
/// naming an existing sidecar (under [`Existing::Refuse`]) or two images that would share one
/// (`photo.jpg` and `photo.png`). Checked before any model is loaded, so a refusal costs nothing.
/// Items that are folders (an image-less folder given on the command line) keep no sidecar and
/// fail later as they do without `--write`.
#[allow(clippy::type_complexity)]
pub fn plan(
    items: Vec<(String, PathBuf)>,
    spec: WriteSpec,
) -> anyhow::Result<(Vec<(String, PathBuf, Option<PathBuf>)>, usize)> {
    let mut owner: std::collections::HashMap<PathBuf, PathBuf> = Default::default();
    let mut existing = Vec::new();
    let mut keep = Vec::with_capacity(items.len());
    let mut skipped = 0;
    for (id, image) in items {
        if image.is_dir() {
            keep.push((id, image, None));
            continue;
        }
        let sidecar = spec.kind.path_for(&image);
        if let Some(first) = owner.insert(sidecar.clone(), image.clone()) {
            anyhow::bail!(
                "{} and {} would both write {}; caption them in separate runs",
                first.display(),
                image.display(),
                sidecar.display()
            );
        }
        if sidecar.symlink_metadata().is_ok() {
            match spec.existing {
                Existing::Refuse => existing.push(sidecar.clone()),
                Existing::Skip => {
                    skipped += 1;
                    continue;
                }
                Existing::Overwrite => {}
            }
        }
        keep.push((id, image, Some(sidecar)));
    }
    if let Some(first) = existing.first() {
        let others = match existing.len() {
            1 => String::new(),
            n => format!(" (and {} other sidecars)", n - 1),
        };
        anyhow::bail!(
            "{} already exists{others}; pass --overwrite to replace or --skip-existing to keep existing sidecars",
            first.display()
        );
    }
    Ok((keep, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_drops_controls() {
        assert_eq!(
            xml_escape(r#"a <b> & "c" 'd'"#),
            "a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos;"
        );
        assert_eq!(xml_escape("x\u{1}y"), "x y");
    }

    #[test]
    fn sidecar_names_replace_the_extension() {
        assert_eq!(
            Kind::Txt.path_for(Path::new("d/photo.jpg")),
            Path::new("d/photo.txt")
        );
        assert_eq!(
            Kind::Xmp.path_for(Path::new("photo.v2.png")),
            Path::new("photo.v2.xmp")
        );
    }

    #[test]
    fn json_options_resolve_to_the_same_options() {
        let o = CaptionOptions::default();
        let back: blip_runtime::request::CaptionRequest =
            serde_json::from_value(options_json(&o)).unwrap();
        let r = back
            .resolve(blip_runtime::request::ModelLimits { positions: 40 })
            .unwrap();
        assert_eq!(r.strategy, o.strategy);
        assert_eq!((r.max_length, r.min_length), (o.max_length, o.min_length));
        assert_eq!(r.prompt, o.prompt);
    }

    /// Markup and non-ASCII in a caption come back from exiftool as written (where exiftool is
    /// installed; under CI it must be).
    #[test]
    fn exiftool_reads_an_escaped_caption_back() {
        let ok = std::process::Command::new("exiftool")
            .arg("-ver")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "exiftool is not installed and CI is set: scripts/setup-exiftool.sh installs it"
            );
            eprintln!("skipped: exiftool is not installed (scripts/setup-exiftool.sh)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("photo.xmp");
        // `&lt;` as text: an unescaped `&` would come back as `<`.
        let caption = r#"a <b> & &lt; "c" 'd' — ü]]>"#;
        let text = Kind::Xmp.render(caption, "m", &CaptionOptions::default());
        write_atomic(&path, text.as_bytes()).unwrap();
        let out = std::process::Command::new("exiftool")
            .args(["-s3", "-Description"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{caption}\n"));
    }
}
