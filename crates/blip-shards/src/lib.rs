//! Parquet shards of per-image results: the files `blip_onnx.ray` writes on a cluster and
//! `blip-onnx caption --format parquet` writes on one machine, and what `blip-onnx index
//! --from-parquet` reads back.
//!
//! One row per image. Columns (the Python pipeline writes the same names and types):
//! `id` (string), `path` (string), `caption` (string, null on error), `caption_tokens`
//! (list<int64>, null on error), `embedding` (fixed_size_list<float32>, null on error) and
//! `error` (string, null when the image was answered). A shard holds the caption columns, the
//! embedding column, or both.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

pub const ID: &str = "id";
pub const PATH: &str = "path";
pub const CAPTION: &str = "caption";
pub const CAPTION_TOKENS: &str = "caption_tokens";
pub const EMBEDDING: &str = "embedding";
pub const ERROR: &str = "error";
/// Written by `index export`: the entry's metadata as JSON text (null when it has none).
pub const METADATA: &str = "metadata";
/// Written by `index export`: which of the entry's vectors the row holds (0 for single-vector
/// entries); an entry with several vectors has one row per vector, in order, under one id.
pub const VECTOR: &str = "vector";

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: column {column:?} {problem}")]
    Column {
        path: PathBuf,
        column: &'static str,
        problem: String,
    },
}

pub type Result<T> = std::result::Result<T, ShardError>;

/// One captioned image (or its error).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionRow {
    pub id: String,
    pub path: String,
    /// Text and token ids, or the error that image got.
    pub result: std::result::Result<(String, Vec<i64>), String>,
}

/// One embedded image (or its error), as read from a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRow {
    pub id: String,
    pub path: String,
    /// The `metadata` column of an exported index (JSON text), when the shard has one.
    pub metadata: Option<String>,
    pub result: std::result::Result<Vec<f32>, String>,
}

/// Writes a caption shard atomically: a temporary file next to `path`, renamed into place.
pub fn write_captions(path: &Path, rows: &[CaptionRow]) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(ID, DataType::Utf8, false),
        Field::new(PATH, DataType::Utf8, false),
        Field::new(CAPTION, DataType::Utf8, true),
        Field::new(
            CAPTION_TOKENS,
            DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
            true,
        ),
        Field::new(ERROR, DataType::Utf8, true),
    ]));
    let ids = StringArray::from_iter_values(rows.iter().map(|r| r.id.as_str()));
    let paths = StringArray::from_iter_values(rows.iter().map(|r| r.path.as_str()));
    let captions: StringArray = rows
        .iter()
        .map(|r| r.result.as_ref().ok().map(|(t, _)| t.as_str()))
        .collect();
    let mut tokens = ListBuilder::new(Int64Builder::new());
    for r in rows {
        match &r.result {
            Ok((_, ids)) => {
                tokens.values().append_slice(ids);
                tokens.append(true);
            }
            Err(_) => tokens.append(false),
        }
    }
    let errors: StringArray = rows
        .iter()
        .map(|r| r.result.as_ref().err().map(String::as_str))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(paths),
        Arc::new(captions),
        Arc::new(tokens.finish()),
        Arc::new(errors),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| ShardError::Parquet {
        path: path.into(),
        message: e.to_string(),
    })?;
    write_atomically(path, schema, &batch)
}

/// One row of an exported index: an entry's vector, with the entry's id, path and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    pub id: String,
    pub path: String,
    pub metadata: Option<String>,
    pub vector: i32,
    pub embedding: Vec<f32>,
}

/// An embedding shard written in row groups as rows come (an index of millions of entries is
/// never held whole), to a temporary file renamed into place by [`EmbeddingWriter::finish`]; a
/// writer dropped unfinished removes it. `index --from-parquet` reads it back (`id`, `path`,
/// `embedding`); vector databases take the `metadata` and `vector` columns too.
pub struct EmbeddingWriter {
    path: PathBuf,
    tmp: PathBuf,
    dim: usize,
    schema: Arc<Schema>,
    writer: Option<ArrowWriter<File>>,
}

impl EmbeddingWriter {
    pub fn create(path: &Path, dim: usize) -> Result<EmbeddingWriter> {
        let schema = Arc::new(Schema::new(vec![
            Field::new(ID, DataType::Utf8, false),
            Field::new(PATH, DataType::Utf8, false),
            Field::new(METADATA, DataType::Utf8, true),
            Field::new(VECTOR, DataType::Int32, false),
            Field::new(
                EMBEDDING,
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", DataType::Float32, true)),
                    dim as i32,
                ),
                true,
            ),
        ]));
        let tmp = partial_path(path);
        let file = File::create(&tmp).map_err(|e| ShardError::Io {
            action: "writing",
            path: tmp.clone(),
            source: e,
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ShardError::Parquet {
                path: path.into(),
                message: e.to_string(),
            }
        })?;
        Ok(EmbeddingWriter {
            path: path.into(),
            tmp,
            dim,
            schema,
            writer: Some(writer),
        })
    }

    fn bad(&self) -> impl Fn(String) -> ShardError + '_ {
        |message| ShardError::Parquet {
            path: self.path.clone(),
            message,
        }
    }

    /// Appends rows (each embedding `dim` values long).
    pub fn write(&mut self, rows: &[ExportRow]) -> Result<()> {
        if let Some(r) = rows.iter().find(|r| r.embedding.len() != self.dim) {
            return Err(ShardError::Column {
                path: self.path.clone(),
                column: EMBEDDING,
                problem: format!(
                    "row {:?} has {} values, not {}",
                    r.id,
                    r.embedding.len(),
                    self.dim
                ),
            });
        }
        let flat: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.embedding.iter().copied())
            .collect();
        let field = Arc::new(Field::new("item", DataType::Float32, true));
        let embeddings = FixedSizeListArray::try_new(
            field,
            self.dim as i32,
            Arc::new(Float32Array::from(flat)),
            None,
        )
        .map_err(|e| self.bad()(e.to_string()))?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.path.as_str()),
            )),
            Arc::new(
                rows.iter()
                    .map(|r| r.metadata.as_deref())
                    .collect::<StringArray>(),
            ),
            Arc::new(arrow_array::Int32Array::from_iter_values(
                rows.iter().map(|r| r.vector),
            )),
            Arc::new(embeddings),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| self.bad()(e.to_string()))?;
        let Some(writer) = self.writer.as_mut() else {
            return Err(self.bad()("the shard is already finished".into()));
        };
        writer.write(&batch).map_err(|e| ShardError::Parquet {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// Closes the file, syncs it and renames it into place.
    pub fn finish(mut self) -> Result<()> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        let file = writer.into_inner().map_err(|e| self.bad()(e.to_string()))?;
        let io = |source| ShardError::Io {
            action: "writing",
            path: self.path.clone(),
            source,
        };
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.path).map_err(io)
    }
}

impl Drop for EmbeddingWriter {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The hidden temporary a shard is written to before it is renamed to `path`.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

fn write_atomically(path: &Path, schema: Arc<Schema>, batch: &RecordBatch) -> Result<()> {
    let tmp = partial_path(path);
    let io = |action, source| ShardError::Io {
        action,
        path: path.into(),
        source,
    };
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| io("writing", e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let bad = |e: parquet::errors::ParquetError| ShardError::Parquet {
            path: path.into(),
            message: e.to_string(),
        };
        let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(bad)?;
        writer.write(batch).map_err(bad)?;
        let file = writer.into_inner().map_err(bad)?;
        file.sync_all().map_err(|e| io("writing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("writing", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rows in a Parquet file, from its footer (nothing else is read).
pub fn row_count(path: &Path) -> Result<usize> {
    let file = File::open(path).map_err(|source| ShardError::Io {
        action: "reading",
        path: path.into(),
        source,
    })?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| ShardError::Parquet {
            path: path.into(),
            message: format!("not a readable Parquet file: {e}"),
        })?;
    Ok(builder.metadata().file_metadata().num_rows().max(0) as usize)
}

/// The Parquet files a `--from-parquet` argument names: a file, or every `*.parquet` in a folder
/// (sorted; hidden temporaries of an unfinished write are left out).
pub fn shard_files(arg: &Path) -> Result<Vec<PathBuf>> {
    if !arg.is_dir() {
        return Ok(vec![arg.to_path_buf()]);
    }
    let listing = std::fs::read_dir(arg).map_err(|source| ShardError::Io {
        action: "reading",
        path: arg.into(),
        source,
    })?;
    let mut files: Vec<PathBuf> = listing
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "parquet")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The embedding rows of one shard, in file order.
pub fn read_embeddings(path: &Path) -> Result<Vec<EmbeddingRow>> {
    let mut rows = Vec::new();
    for batch in batches(path)? {
        let batch = batch?;
        let ids = strings(path, &batch, ID, true)?;
        let paths = strings(path, &batch, PATH, true)?;
        let errors = strings(path, &batch, ERROR, false)?;
        let metadata = strings(path, &batch, METADATA, false)?;
        let embeddings =
            column(path, &batch, EMBEDDING, true)?.ok_or_else(|| missing(path, EMBEDDING))?;
        let embeddings = embeddings
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .ok_or_else(|| ShardError::Column {
                path: path.into(),
                column: EMBEDDING,
                problem: format!(
                    "is {}, not a fixed-size list of float32",
                    embeddings.data_type()
                ),
            })?;
        let values = embeddings
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| ShardError::Column {
                path: path.into(),
                column: EMBEDDING,
                problem: format!("holds {}, not float32", embeddings.value_type()),
            })?;
        let (ids, paths) = (ids.unwrap_or_default(), paths.unwrap_or_default());
        let dim = embeddings.value_length() as usize;
        for i in 0..batch.num_rows() {
            let (id, image) = id_and_path(path, &ids, &paths, i)?;
            let error = errors.as_ref().and_then(|e| e[i].clone());
            let result = match error {
                Some(e) => Err(e),
                None if embeddings.is_null(i) => Err("no embedding".to_string()),
                None => {
                    let start = embeddings.value_offset(i) as usize;
                    let row = values.values().get(start..start + dim).ok_or_else(|| {
                        ShardError::Column {
                            path: path.into(),
                            column: EMBEDDING,
                            problem: format!("row {i} is shorter than {dim} values"),
                        }
                    })?;
                    Ok(row.to_vec())
                }
            };
            rows.push(EmbeddingRow {
                id,
                path: image,
                metadata: metadata.as_ref().and_then(|m| m[i].clone()),
                result,
            });
        }
    }
    Ok(rows)
}

/// The caption rows of one shard, in file order.
pub fn read_captions(path: &Path) -> Result<Vec<CaptionRow>> {
    let mut rows = Vec::new();
    for batch in batches(path)? {
        let batch = batch?;
        let ids = strings(path, &batch, ID, true)?.unwrap_or_default();
        let paths = strings(path, &batch, PATH, true)?.unwrap_or_default();
        let errors = strings(path, &batch, ERROR, false)?;
        let captions = strings(path, &batch, CAPTION, true)?.unwrap_or_default();
        let tokens = column(path, &batch, CAPTION_TOKENS, true)?
            .ok_or_else(|| missing(path, CAPTION_TOKENS))?;
        let tokens = tokens
            .as_any()
            .downcast_ref::<arrow_array::ListArray>()
            .ok_or_else(|| ShardError::Column {
                path: path.into(),
                column: CAPTION_TOKENS,
                problem: format!("is {}, not a list of int64", tokens.data_type()),
            })?;
        for i in 0..batch.num_rows() {
            let (id, image) = id_and_path(path, &ids, &paths, i)?;
            let error = errors.as_ref().and_then(|e| e[i].clone());
            let result = match (error, captions[i].clone()) {
                (Some(e), _) => Err(e),
                (None, None) => Err("no caption".to_string()),
                (None, Some(text)) if tokens.is_null(i) => {
                    return Err(ShardError::Column {
                        path: path.into(),
                        column: CAPTION_TOKENS,
                        problem: format!("is null in row {i}, which has a caption ({text:?})"),
                    });
                }
                (None, Some(text)) => {
                    let row = tokens.value(i);
                    let ids = row
                        .as_any()
                        .downcast_ref::<arrow_array::Int64Array>()
                        .ok_or_else(|| ShardError::Column {
                            path: path.into(),
                            column: CAPTION_TOKENS,
                            problem: format!("holds {}, not int64", row.data_type()),
                        })?;
                    Ok((text, ids.values().to_vec()))
                }
            };
            rows.push(CaptionRow {
                id,
                path: image,
                result,
            });
        }
    }
    Ok(rows)
}

/// The record batches of a shard, with errors that name it.
fn batches(path: &Path) -> Result<impl Iterator<Item = Result<RecordBatch>> + '_> {
    let file = File::open(path).map_err(|source| ShardError::Io {
        action: "reading",
        path: path.into(),
        source,
    })?;
    let bad = |e: parquet::errors::ParquetError| ShardError::Parquet {
        path: path.into(),
        message: format!("not a readable Parquet file: {e}"),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(bad)?
        .build()
        .map_err(bad)?;
    Ok(reader.map(move |b| {
        b.map_err(|e| ShardError::Parquet {
            path: path.into(),
            message: e.to_string(),
        })
    }))
}

type Strings = Vec<Option<String>>;

fn id_and_path(path: &Path, ids: &Strings, paths: &Strings, i: usize) -> Result<(String, String)> {
    match (ids[i].clone(), paths[i].clone()) {
        (Some(id), Some(image)) => Ok((id, image)),
        (id, _) => Err(ShardError::Column {
            path: path.into(),
            column: if id.is_none() { ID } else { PATH },
            problem: format!("is null in row {i}"),
        }),
    }
}

fn missing(path: &Path, column: &'static str) -> ShardError {
    ShardError::Column {
        path: path.into(),
        column,
        problem: "is missing".into(),
    }
}

fn column(
    path: &Path,
    batch: &RecordBatch,
    name: &'static str,
    required: bool,
) -> Result<Option<ArrayRef>> {
    match batch.column_by_name(name) {
        Some(c) => Ok(Some(c.clone())),
        None if required => Err(missing(path, name)),
        None => Ok(None),
    }
}

/// A string column as owned values (string or large string, as pyarrow may write either).
fn strings(
    path: &Path,
    batch: &RecordBatch,
    name: &'static str,
    required: bool,
) -> Result<Option<Vec<Option<String>>>> {
    let Some(c) = column(path, batch, name, required)? else {
        return Ok(None);
    };
    let cast = |problem: String| ShardError::Column {
        path: path.into(),
        column: name,
        problem,
    };
    let values = if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
        s.iter().map(|v| v.map(str::to_string)).collect()
    } else if let Some(s) = c.as_any().downcast_ref::<arrow_array::LargeStringArray>() {
        s.iter().map(|v| v.map(str::to_string)).collect()
    } else {
        return Err(cast(format!("is {}, not a string", c.data_type())));
    };
    Ok(Some(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// id, embedding (None: null), error.
    type Row<'a> = (&'a str, Option<Vec<f32>>, Option<&'a str>);

    fn embedding_shard(path: &Path, dim: i32, rows: &[Row]) {
        let field = Arc::new(Field::new("item", DataType::Float32, true));
        let mut flat = Vec::new();
        for (_, v, _) in rows {
            flat.extend(v.clone().unwrap_or_else(|| vec![0.0; dim as usize]));
        }
        let nulls: Vec<bool> = rows.iter().map(|(_, v, _)| v.is_some()).collect();
        let embeddings = FixedSizeListArray::try_new(
            field.clone(),
            dim,
            Arc::new(Float32Array::from(flat)),
            Some(nulls.into()),
        )
        .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new(ID, DataType::Utf8, false),
            Field::new(PATH, DataType::Utf8, false),
            Field::new(EMBEDDING, embeddings.data_type().clone(), true),
            Field::new(ERROR, DataType::Utf8, true),
        ]));
        let ids = StringArray::from_iter_values(rows.iter().map(|r| r.0));
        let paths = StringArray::from_iter_values(rows.iter().map(|r| format!("/img/{}", r.0)));
        let errors: StringArray = rows.iter().map(|r| r.2).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(ids),
                Arc::new(paths),
                Arc::new(embeddings),
                Arc::new(errors),
            ],
        )
        .unwrap();
        write_atomically(path, schema, &batch).unwrap();
    }

    #[test]
    fn embeddings_and_error_rows_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-00000-of-00001.parquet");
        embedding_shard(
            &path,
            3,
            &[
                ("a", Some(vec![1.0, -0.5, 0.25]), None),
                ("b", None, Some("b.png: not an image")),
                ("c", Some(vec![0.0, 1.0, 1e-7]), None),
            ],
        );
        let rows = read_embeddings(&path).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].result, Ok(vec![1.0, -0.5, 0.25]));
        assert_eq!(rows[1].result, Err("b.png: not an image".to_string()));
        assert_eq!(rows[2].id, "c");
        assert_eq!(rows[2].path, "/img/c");
        assert_eq!(rows[2].result, Ok(vec![0.0, 1.0, 1e-7]));
        assert_eq!(shard_files(dir.path()).unwrap(), vec![path]);
    }

    #[test]
    fn captions_round_trip_and_a_caption_shard_has_no_embeddings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captions.parquet");
        let rows = vec![
            CaptionRow {
                id: "a.png".into(),
                path: "/x/a.png".into(),
                result: Ok(("a red square".into(), vec![30522, 1037, 2417, 2675, 102])),
            },
            CaptionRow {
                id: "b.png".into(),
                path: "/x/b.png".into(),
                result: Err("/x/b.png: truncated".into()),
            },
        ];
        write_captions(&path, &rows).unwrap();
        assert_eq!(read_captions(&path).unwrap(), rows);
        let file = File::open(&path).unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let caption = batch.column_by_name(CAPTION).unwrap();
        let caption = caption.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(caption.value(0), "a red square");
        assert!(caption.is_null(1));
        let tokens = batch.column_by_name(CAPTION_TOKENS).unwrap();
        let tokens = tokens
            .as_any()
            .downcast_ref::<arrow_array::ListArray>()
            .unwrap();
        let first = tokens.value(0);
        let first = first
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap();
        assert_eq!(first.values().to_vec(), vec![30522, 1037, 2417, 2675, 102]);
        assert!(tokens.is_null(1));
        let err = read_embeddings(&path).unwrap_err().to_string();
        assert!(
            err.contains("captions.parquet") && err.contains("\"embedding\" is missing"),
            "{err}"
        );
        // No temporary is left next to the shard.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn exported_rows_read_back_as_embeddings_and_an_unfinished_export_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.parquet");
        let row = |id: &str, vector: i32, x: f32| ExportRow {
            id: id.into(),
            path: format!("/photos/{id}.jpg"),
            metadata: (vector == 0).then(|| format!("{{\"album\":\"{id}\"}}")),
            vector,
            embedding: vec![x, -x, 0.5],
        };
        let mut w = EmbeddingWriter::create(&path, 3).unwrap();
        w.write(&[row("a", 0, 1.0), row("b", 0, 2.0)]).unwrap();
        w.write(&[row("b", 1, 3.0)]).unwrap();
        let bad = w.write(&[ExportRow {
            embedding: vec![1.0],
            ..row("c", 0, 0.0)
        }]);
        assert!(bad.unwrap_err().to_string().contains("has 1 values, not 3"));
        assert!(!path.exists(), "nothing in place before finish");
        w.finish().unwrap();
        let back = read_embeddings(&path).unwrap();
        let got: Vec<(&str, Vec<f32>)> = back
            .iter()
            .map(|r| (r.id.as_str(), r.result.clone().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", vec![1.0, -1.0, 0.5]),
                ("b", vec![2.0, -2.0, 0.5]),
                ("b", vec![3.0, -3.0, 0.5])
            ]
        );
        assert_eq!(back[1].path, "/photos/b.jpg");
        assert_eq!(back[1].metadata.as_deref(), Some("{\"album\":\"b\"}"));
        assert_eq!(back[2].metadata, None);
        assert_eq!(row_count(&path).unwrap(), 3);
        let unfinished = dir.path().join("unfinished.parquet");
        let mut w = EmbeddingWriter::create(&unfinished, 3).unwrap();
        w.write(&[row("a", 0, 1.0)]).unwrap();
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the finished file"
        );
    }

    #[test]
    fn a_file_that_is_not_parquet_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.parquet");
        std::fs::write(&path, b"PAR1 not really").unwrap();
        let err = read_embeddings(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.parquet") && err.contains("not a readable Parquet file"),
            "{err}"
        );
    }
}
