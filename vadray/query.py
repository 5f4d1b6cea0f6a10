"""SQL over a scoring OUTPUT with DuckDB: views `frames`, `events` and `errors` (empty where none).

Each table is the Arrow dataset every other command reads (`tables.open_dataset`: the
documented schema, partitions below the table's folder only, s3:// through s3fs with the same
credentials as every job), which DuckDB scans with filter and projection pushdown. Not
DuckDB's read_parquet: its hive reader takes every `key=value` folder of the whole path as a
partition, so an OUTPUT under `/data/camera=lobby/` would read the wrong camera. Not DuckDB's
httpfs: its views read s3:// URLs while the query runs, so the query could not be locked to
the OUTPUT's tables, and on offline machines it is a download.

Example: vadray query out "SELECT video_id, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC"
"""
from __future__ import annotations

import argparse
import logging

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vadray import storage
from vadray.tables import DOCUMENTED, open_dataset
from vadray.exits import UsageError

log = logging.getLogger(__name__)
TABLES = ("frames", "events", "errors")


def _tokens(text: str) -> list[tuple[object, str]]:
    """(DuckDB token type, text) of every token of `text`, comments included."""
    tokens = duckdb.tokenize(text)
    ends = [start for start, _ in tokens[1:]] + [len(text)]
    return [(kind, text[start:end].strip()) for (start, kind), end in zip(tokens, ends)]


def read_only(statement) -> bool:
    """A statement that only reads: SELECT (WITH, FROM-first, DESCRIBE, SHOW, SUMMARIZE), PIVOT,
    or an EXPLAIN without ANALYZE (which runs what it explains, in any spelling DuckDB takes:
    `EXPLAIN (ANALYZE) …`, comments between). COPY … TO, ATTACH, CREATE and the rest write."""
    words = [(kind, word) for kind, word in _tokens(statement.query) if kind != duckdb.token_type.comment]
    keywords = {word.upper() for kind, word in words if kind == duckdb.token_type.keyword}
    first = words[0][1].upper() if words else ""
    kind = statement.type
    return (kind == duckdb.StatementType.SELECT
            or (kind == duckdb.StatementType.EXPLAIN and not keywords & {"ANALYZE", "ANALYSE"})
            or (kind == duckdb.StatementType.MULTI and first in ("PIVOT", "UNPIVOT")))


def connect(output: str, storage_options: dict | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the OUTPUT's tables as views (frames, events and errors always exist)."""
    output = storage.text(output)
    storage.require_reachable(storage_options, OUTPUT=output)
    # A query never downloads or loads extensions on its own (read_parquet('https://…') did).
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    fs, root = storage.url_to_fs(output, storage_options)
    if not fs.exists(root):
        raise UsageError(f"OUTPUT {output!r} does not exist or is not reachable")
    if not any(fs.isdir(f"{root}/{name}") for name in TABLES):
        held = ", ".join(sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))[:5]) or "nothing"
        raise UsageError(f"{output!r} holds no frames/, events/ or errors/ (it holds {held}): query reads the "
                         "OUTPUT of `vadray score` (or the errors of an ingest OUTPUT)")
    try:
        _views(con, output, fs, root, storage_options)
        # The SQL reads the OUTPUT's tables (Arrow datasets, read by Arrow) and nothing else: no
        # local file (read_text, read_csv, glob of any path), no URL; and it cannot SET this back.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except duckdb.Error as exc:   # a table DuckDB cannot read: say which, not a traceback
        con.close()
        raise UsageError(f"cannot open the tables of {output!r}: {exc}") from None
    return con


def _views(con, output: str, fs, root: str, storage_options: dict | None) -> None:
    for name in TABLES:
        files = fs.glob(f"{root}/{name}/**/*.parquet") if fs.isdir(f"{root}/{name}") else []
        if files:
            con.register(name, open_dataset(output, name, storage_options))
        else:  # an empty table still answers "SELECT count(*) FROM errors"
            con.register(name, DOCUMENTED[name].empty_table())


def query(output: str, sql: str, storage_options: dict | None = None) -> pd.DataFrame:
    """Run one SQL statement over the OUTPUT's tables; bad SQL raises UsageError."""
    return query_table(output, sql, storage_options).to_pandas()


def query_table(output: str, sql: str, storage_options: dict | None = None) -> pa.Table:
    """`query` as Arrow: the result keeps its SQL types even with no rows (pandas makes an
    empty string column a null one), and a sum of integers that fits is an int64, not the
    128-bit integer DuckDB computes (a float in pandas, a decimal in Arrow)."""
    con = connect(output, storage_options)
    try:
        statements = con.extract_statements(sql)
        # A query reads the tables, never a COPY or ATTACH that would write files with the
        # caller's credentials.
        if len(statements) != 1 or not read_only(statements[0]):
            kinds = ", ".join(st.type.name for st in statements) or "nothing"
            raise UsageError(f"query runs one SELECT statement (got {kinds}); write results with --out")
        result = con.sql(sql).arrow()
        return _int64_where_whole(result.read_all() if isinstance(result, pa.RecordBatchReader) else result)
    except duckdb.Error as exc:
        raise UsageError(f"SQL failed: {exc}") from None
    finally:
        con.close()


def _int64_where_whole(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_decimal(field.type) and field.type.scale == 0:
            try:
                table = table.set_column(i, field.name, table.column(i).cast(pa.int64()))
            except pa.ArrowInvalid:   # beyond int64: stays exact
                pass
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="scoring OUTPUT (folder or s3:// prefix holding frames/ and events/)")
    parser.add_argument("sql", help="one SQL statement over the views frames, events and errors")
    parser.add_argument("--out", default=None,
                        help="write the result to this .csv or .parquet file (local or s3://) instead of printing")
    parser.add_argument("--max-rows", type=int, default=50,
                        help="rows to print when --out is not given (default 50; 0 prints them all; "
                             "a longer result shows its first and last rows)")
    storage.add_storage_options(parser, "OUTPUT")


def run(args: argparse.Namespace) -> int:
    options = storage.parse_storage_options(args.storage_options)
    if args.out and not args.out.endswith((".csv", ".parquet")):
        raise UsageError("--out must end in .csv or .parquet")
    if args.max_rows < 0:
        raise UsageError("--max-rows must be 0 (all) or more")
    storage.require_file_to_write(options, **{"--out": args.out})
    table = query_table(args.output, args.sql, options)
    result = table.to_pandas()
    if not args.out:
        if len(result) == 0:
            print("  ".join(map(str, result.columns)))
        else:
            with pd.option_context("display.width", 200, "display.max_columns", 50):
                print(result.to_string(index=False, max_rows=args.max_rows or None))
        print(f"({len(result)} rows)")
        return 0
    with storage.open_for_writing(args.out, options) as f:
        if args.out.endswith(".csv"):
            result.to_csv(f, index=False)
        else:
            pq.write_table(table, f)
    print(f"wrote {len(result)} rows to {args.out}")
    return 0
