"""Fine-tuning splits read from local files: TSV, CSV or JSON lines, each optionally gzipped.

`config.data.files.{split}` names a file or a glob (its matches are read in sorted order, as
one split) for a split of the dataset: `train`, `validation`, `test`, MNLI's
`validation_matched`... A split with a file is read from it, the others from TFDS. The format
comes from the name: `.tsv` (GLUE's format: tab-separated, no quoting, a header line), `.csv`
(comma-separated with a header, RFC 4180 quoting), `.jsonl` or `.json` (one JSON object a line),
then optionally `.gz`.

The dataset's spec says which columns are the text(s) and the label, so GLUE's `train.tsv` and
`dev.tsv` are read as `dataset=sst2` and aclImdb's JSON lines as `dataset=imdb` unchanged.
Labels may be class ids (`0`, `1`) or the spec's label names (`negative`, `positive`);
regression labels are numbers in the spec's range.

Everything is checked when a split is read, before a run writes anything; a problem is a
`ConfigError` naming the config field, the file and, where it lies in one, the line: a missing
file or a glob matching nothing, a file that is not UTF-8 text or not gzip, a missing column
(the file's columns are listed), a header-less or empty file, a TSV or CSV row with the wrong
number of fields, a line that is not a JSON object, a label that is not a known label or lies
outside the regression range. Reads are cached per file (path, size, mtime), so checking a
split and then training on it read it once.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Sequence
from typing import Any

from linformer.config import ConfigError

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
# Every split name a dataset spec uses (TFDS's names): the keys of config.data.files.
SPLITS = (
  "train",
  "validation",
  "test",
  "validation_matched",
  "validation_mismatched",
  "test_matched",
  "test_mismatched",
)
_HEADER_EXAMPLE = {"tsv": "sentence<TAB>label", "csv": "sentence,label"}


@dataclasses.dataclass(frozen=True)
class Table:
  """The rows of one or more files of one format, each with the file and line it came from."""

  pattern: str
  format: str
  columns: tuple[str, ...]  # the header (TSV, CSV) or the first object's keys (JSON lines)
  rows: tuple[dict[str, Any], ...]
  where: tuple[tuple[str, int], ...]  # (file, line) of each row

  def __len__(self) -> int:
    return len(self.rows)


def file_format(path: str, field: str) -> str:
  """'tsv', 'csv' or 'jsonl' from the file name (a `.gz` suffix is allowed)."""
  name = path[:-3] if path.endswith(".gz") else path
  ext = os.path.splitext(name)[1].lower()
  if ext not in FORMATS:
    raise ConfigError(
      f"{field}={path!r}: unknown file format {ext or '(no extension)'!r}. Fix: name it .tsv, "
      ".csv, .jsonl or .json (JSON lines), optionally with .gz."
    )
  return FORMATS[ext]


def expand(pattern: str, field: str) -> list[str]:
  """The files of `pattern` (a path or a glob), sorted; none is an error."""
  if not isinstance(pattern, str) or not pattern.strip():
    raise ConfigError(f"{field}={pattern!r}: give a file or glob, e.g. data/train.tsv.")
  if glob.has_magic(pattern):
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
    if not paths:
      raise ConfigError(f"{field}={pattern!r}: the glob matches no file. Fix: check the path.")
    return paths
  path = os.path.expanduser(pattern)
  if os.path.isdir(path):
    raise ConfigError(
      f"{field}={pattern!r} is a directory. Fix: name a file, or a glob such as {pattern}/*.tsv."
    )
  if not os.path.isfile(path):
    raise ConfigError(f"{field}={pattern!r}: no such file. Fix: check the path.")
  return [path]


_CACHE: dict[tuple, Table] = {}


def read_table(pattern: str, field: str) -> Table:
  """Every row of the files of `pattern`; all must have one format and the same columns."""
  paths = expand(pattern, field)
  formats = {file_format(p, field) for p in paths}
  if len(formats) > 1:
    raise ConfigError(
      f"{field}={pattern!r} matches files of several formats ({', '.join(sorted(formats))}). "
      "Fix: a narrower glob."
    )
  parts = [_read_file(p, field) for p in paths]
  columns = parts[0].columns
  for part in parts[1:]:
    if part.format != "jsonl" and part.columns != columns:
      raise ConfigError(
        f"{field}: {part.pattern} has the columns {list(part.columns)}, {parts[0].pattern} has "
        f"{list(columns)}. Fix: give the files of one split the same header."
      )
  return Table(
    pattern,
    parts[0].format,
    columns,
    tuple(row for p in parts for row in p.rows),
    tuple(w for p in parts for w in p.where),
  )


def _read_file(path: str, field: str) -> Table:
  stat = os.stat(path)
  key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
  if key not in _CACHE:
    _CACHE[key] = _parse(path, _text(path, field), file_format(path, field), field)
  return _CACHE[key]


def _text(path: str, field: str) -> str:
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        data = f.read()
    else:
      with open(path, "rb") as f:
        data = f.read()
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise ConfigError(
      f"{field}: {path} is not a complete gzip file ({e}). Fix: recompress it, or drop the "
      ".gz suffix if it is plain text."
    ) from None
  except OSError as e:
    raise ConfigError(f"{field}: cannot read {path} ({e.strerror}).") from None
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ConfigError(
      f"{field}: {path} line {line} is not UTF-8 text (byte 0x{data[e.start]:02x}). Fix: "
      "convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8."
    ) from None


def _parse(path: str, text: str, fmt: str, field: str) -> Table:
  if not text.strip():
    raise ConfigError(f"{field}: {path} is empty. Fix: give a file with a header and examples.")
  if fmt == "jsonl":
    return _parse_jsonl(path, text, field)
  if fmt == "tsv":
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
  else:
    reader = csv.reader(io.StringIO(text, newline=""))
  header = None
  rows, where = [], []
  start = 1  # the line the row being read starts on (a quoted text may span lines)
  try:
    for row in reader:
      first, start = start, reader.line_num + 1
      if not row or (len(row) == 1 and not row[0].strip()):
        continue  # blank lines
      if header is None:
        header = tuple(c.strip() for c in row)
        _check_header(path, field, fmt, header, row)
        continue
      if len(row) != len(header):
        if fmt == "csv" and reader.line_num > first:
          at_end = reader.line_num >= text.rstrip("\n").count("\n") + 1
          raise _open_quote(path, field, first, reader.line_num, at_end)
        raise ConfigError(
          f"{field}: {path} line {reader.line_num} has {len(row)} fields, the header has "
          f"{len(header)} ({', '.join(header)}). Fix: "
          + (
            "a tab inside a text must be removed or replaced."
            if fmt == "tsv"
            else "quote texts that contain commas."
          )
        )
      rows.append(dict(zip(header, row)))
      where.append((path, first))
  except csv.Error as e:
    if fmt == "csv" and "end of data" in str(e):  # a quote still open at the end of the file
      raise _open_quote(path, field, start, reader.line_num, at_end=True) from None
    raise ConfigError(f"{field}: {path} line {reader.line_num}: {e}.") from None
  if not rows:
    raise ConfigError(
      f"{field}: {path} has a header line only, no examples. Fix: give a file with examples."
    )
  return Table(path, fmt, header, tuple(rows), tuple(where))


def _check_header(path: str, field: str, fmt: str, header: tuple[str, ...], row) -> None:
  repeated = sorted({c for c in header if c and header.count(c) > 1})
  if repeated:
    raise ConfigError(
      f"{field}: {path} names the column {repeated[0]!r} {header.count(repeated[0])} times in "
      f"its header line ({', '.join(header)}). Fix: name each column once."
    )
  if not all(header):
    raise _no_header(path, field, fmt, row)
  if fmt == "csv" and len(header) == 1 and "\t" in header[0]:
    raise ConfigError(
      f"{field}: {path} is tab-separated (its header is {_short(row)}, one column with tabs), "
      "but named .csv, which is read comma-separated. Fix: rename it .tsv (or .tsv.gz)."
    )


def _open_quote(path: str, field: str, first: int, last: int, at_end: bool = False) -> ConfigError:
  closes = "is not closed by the end of the file" if at_end else f"closes only on line {last}"
  return ConfigError(
    f"{field}: {path} line {first}: a quote opens in this row and {closes}. Fix: close the "
    'quote, and write a quote inside a quoted text twice ("").'
  )


def _no_header(path: str, field: str, fmt: str, row) -> ConfigError:
  return ConfigError(
    f"{field}: {path} has no header line (its first line, {_short(row)}, has empty or repeated "
    f"column names). Fix: add a first line naming the columns, e.g. {_HEADER_EXAMPLE[fmt]}."
  )


def _short(row) -> str:
  text = "\t".join(row) if isinstance(row, list) else str(row)
  return repr(text if len(text) <= 60 else text[:57] + "...")


def _parse_jsonl(path: str, text: str, field: str) -> Table:
  rows, where = [], []
  for number, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 is text
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ConfigError(
        f"{field}: {path} line {number} is not JSON ({e.msg}). Fix: one JSON object a line "
        "(JSON lines)."
      ) from None
    if not isinstance(record, dict):
      raise ConfigError(
        f"{field}: {path} line {number} is a JSON {type(record).__name__}, not an object. Fix: "
        'one object a line, e.g. {"text": "...", "label": 1}.'
      )
    rows.append(record)
    where.append((path, number))
  return Table(path, "jsonl", tuple(rows[0]), tuple(rows), tuple(where))


# Columns and labels.


def check_columns(table: Table, roles: dict[str, str], field: str) -> None:
  """The table has every column of `roles` (column -> what it is for, for the message); in JSON
  lines every object has them."""
  needed = list(roles)
  if table.format == "jsonl":
    for row, (path, line) in zip(table.rows, table.where):
      missing = [c for c in needed if c not in row]
      if missing:
        raise ConfigError(
          f"{field}: {path} line {line} has no field {missing[0]!r} ({roles[missing[0]]}); its "
          f"fields are {', '.join(row) or 'none'}."
        )
    return
  missing = [c for c in needed if c not in table.columns]
  if not missing:
    return
  if _looks_like_data(table.columns):
    raise ConfigError(
      f"{field}: {table.pattern} has no header line: its first line "
      f"{_short(list(table.columns))} looks like an example. Fix: add a first line naming the "
      f"columns ({', '.join(needed)})."
    )
  raise ConfigError(
    f"{field}: {table.pattern} has no column {missing[0]!r} ({roles[missing[0]]}); its columns "
    f"are {', '.join(table.columns)}."
  )


def _looks_like_data(columns: Sequence[str]) -> bool:
  """A header whose cells are numbers or sentences is the first example of a header-less file."""

  def data_like(cell: str) -> bool:
    try:
      float(cell)
      return True
    except ValueError:
      return len(cell) > 40 or len(cell.split()) > 4

  return any(data_like(c) for c in columns)


def raw_label(value) -> str:
  """A label as its text: JSON 1 and TSV '1' are the same label."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value).strip()


def discover_labels(values) -> tuple[str, ...]:
  """The distinct labels of a train file, sorted (numerically when all are integers)."""
  names = {raw_label(v) for v in values}
  try:
    return tuple(sorted(names, key=int))
  except ValueError:
    return tuple(sorted(names))


class LabelMap:
  """Class ids from a file's labels: a label name, or a class id in [0, num_labels)."""

  def __init__(self, names: Sequence[str], num_labels: int, label_range=None):
    self.names = tuple(names)
    self.num_labels = num_labels
    self.label_range = label_range
    self._ids = {name: i for i, name in enumerate(self.names)}

  @property
  def is_regression(self) -> bool:
    return self.num_labels == 1

  def __call__(self, value, where: str):
    if self.is_regression:
      return self._score(value, where)
    text = raw_label(value)
    if text in self._ids:
      return self._ids[text]
    try:
      label = int(text)
    except ValueError:
      label = None
    if label is not None and 0 <= label < self.num_labels:
      return label
    known = ", ".join(repr(n) for n in self.names) if self.names else ""
    raise ConfigError(
      f"{where}: label {text!r} is not a known label. Known: class ids 0 to "
      f"{self.num_labels - 1}{' or ' + known if known else ''}."
    )

  def _score(self, value, where: str) -> float:
    try:
      score = float(value)
    except (TypeError, ValueError):
      score = math.nan
    low, high = self.label_range or (-math.inf, math.inf)
    if not (math.isfinite(score) and low <= score <= high):
      raise ConfigError(
        f"{where}: regression label {raw_label(value)!r} is not a number in [{low}, {high}]."
      )
    return score


class FileSource(Sequence):
  """Random-access examples of a file split, as a TFDS data source gives them: a dict of the
  text fields (str) and the label field (a class id or a float; 0 where the file has no
  label column and `require_labels` is False)."""

  def __init__(
    self,
    table: Table,
    text_fields: Sequence[str],
    label_field: str,
    labels: LabelMap,
    field: str,
    *,
    require_labels: bool = True,
  ):
    self.table = table
    self.has_labels = require_labels or _has_column(table, label_field)
    roles = {name: "a text field" for name in text_fields}
    if self.has_labels:
      roles[label_field] = "the label field"
    check_columns(table, roles, field)
    records = []
    for row, (path, line) in zip(table.rows, table.where):
      record = {}
      for name in text_fields:
        value = row[name]
        if not isinstance(value, str):
          raise ConfigError(
            f"{field}: {path} line {line}: the text field {name!r} is a "
            f"{type(value).__name__}, not a string."
          )
        record[name] = value
      where = f"{field}: {path} line {line}"
      record[label_field] = labels(row[label_field], where) if self.has_labels else 0
      records.append(record)
    self._records = records

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int):
    return self._records[index]


def _has_column(table: Table, name: str) -> bool:
  if table.format == "jsonl":
    return all(name in row for row in table.rows)
  return name in table.columns
