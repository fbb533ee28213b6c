"""The `doc-pipeline` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from itertools import groupby
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from doc_pipeline.settings import Settings

app = typer.Typer(
    help=(
        "Turn books (EPUB, PDF) into markdown, chunks, embeddings and cross-book connections, "
        "orchestrated by Dagster. State lives in $DOC_PIPELINE_HOME (default ./.doc_pipeline); "
        "set DATABASE_URL to use your own Postgres with pgvector instead of the embedded one."
    ),
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(
    help="The app database: migrations and the embedded server.", no_args_is_help=True
)
app.add_typer(db_app, name="db")


def main() -> None:
    """The `doc-pipeline` command: settings that cannot work are one line, not a trace."""
    from doc_pipeline.core.failures import InvalidSettings

    try:
        app(prog_name="doc-pipeline")
    except InvalidSettings as error:
        err.print(f"[red]{escape(str(error))}[/red]", soft_wrap=True)
        raise SystemExit(2) from None

out = Console()
err = Console(stderr=True)

PROGRESS_STAGES = (
    "pending",
    "extracting",
    "chunking",
    "embedding",
    "embedded",
    "connecting",
    "connected",
)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ProviderOption = Annotated[
    str | None,
    typer.Option(
        "--provider",
        help="local or gemini. Default: gemini when GEMINI_API_KEY or GOOGLE_API_KEY is set, "
        "else local (also settable as DOC_PIPELINE_PROVIDER).",
    ),
]


VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Also print Dagster's log lines of each run, failures with their whole traces "
        "(they are always in the run's event log, shown by `doc-pipeline ui`).",
    ),
]
JobsOption = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        min=1,
        help="Documents processed at once, each in its own run on a worker process of its own"
        " (default: the number of cores). AI steps across runs still share the `ai` pool.",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A YAML (or JSON) file of Dagster run config for every run, e.g. "
        "`resources: {provider: {config: {max_words: 900}}}`.",
        exists=True,
        dir_okay=False,
    ),
]


def _choose_provider(provider: str | None) -> str:
    """Set the provider for the definitions this process (and its children) will load."""
    from doc_pipeline.settings import PROVIDER_ENV

    if provider:
        os.environ[PROVIDER_ENV] = provider
    try:
        return Settings.provider()
    except ValueError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error


def _settings() -> Settings:
    return Settings.from_env()


def _app_engine():
    from doc_pipeline.db.app import prepare_app_database

    return prepare_app_database(_settings())


def _resolve_document(engine, prefix: str) -> str:
    from doc_pipeline.db import store

    matches = store.find_documents(engine, prefix)
    if len(matches) != 1:
        problem = "no document" if not matches else f"{len(matches)} documents"
        err.print(f"[red]{problem} with an id starting with {prefix!r}[/red]")
        raise typer.Exit(2)
    return matches[0]


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, default=_json_default, indent=2, ensure_ascii=False) + "\n")


@app.command()
def ingest(
    paths: Annotated[
        list[Path],
        typer.Argument(help="EPUB and PDF files, or folders searched for them.", exists=True),
    ],
    as_json: JsonOption = False,
    provider: ProviderOption = None,
    config: ConfigOption = None,
    verbose: VerboseOption = False,
    jobs: JobsOption = None,
    version_of: Annotated[
        str | None,
        typer.Option(
            "--version-of",
            metavar="DOCUMENT",
            help="The one file is a new version of this document (its id or first characters):"
            " it supersedes the current version once processed, paying only for what changed.",
        ),
    ] = None,
) -> None:
    """Register books and run them through the pipeline; prints a summary per document.

    A file with the same bytes as one already registered is that version (nothing is paid
    again). A file that carries a registered book's identifier (EPUB unique identifier, PDF
    document ID) and shares most of its text is a new version of that document; so is a file
    given with --version-of.

    Runs go through the persistent Dagster instance, so they show in `doc-pipeline ui`. A
    document that fails as expected (a file that is not a book, an outage, a refused answer)
    gets one line saying why; an unexpected error (a bug) also prints its trace. Exits with
    status 1 if any document failed (after processing all the others)."""
    from sqlalchemy.exc import SQLAlchemyError

    from doc_pipeline.core.book_files import SUPPORTED_SUFFIXES, find_book_files
    from doc_pipeline.db import store
    from doc_pipeline.ingest import Ingestion

    _choose_provider(provider)
    files = find_book_files(paths)
    if not files:
        err.print(
            f"[red]no {', '.join(SUPPORTED_SUFFIXES)} files in {', '.join(map(str, paths))}[/red]"
        )
        raise typer.Exit(2)
    settings = _settings()
    if version_of is not None:
        if len(files) != 1:
            err.print(f"[red]--version-of takes one file, not {len(files)}[/red]")
            raise typer.Exit(2)
        from doc_pipeline.db.app import prepare_app_database

        version_of = _resolve_document(prepare_app_database(settings), version_of)
    progress = Progress(
        TextColumn("{task.fields[name]}", style="bold"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal and as_json,
    )
    tasks: dict[str, int] = {}
    engine_box: list = []
    done = threading.Event()

    def registered(outcome) -> None:
        if outcome.document_id and outcome.document_id not in tasks:
            tasks[outcome.document_id] = progress.add_task(
                "pending", total=len(PROGRESS_STAGES) - 1, name=Path(outcome.source_file).name[:40]
            )

    def finished(outcome) -> None:
        _show_stage(progress, tasks, outcome.document_id, outcome.stage)

    def watch() -> None:
        # Stages are written by the assets into the app database; poll them for the bars.
        while not done.wait(0.3):
            if not engine_box:
                continue
            try:
                rows = store.document_summaries(engine_box[0], list(tasks))
            except SQLAlchemyError:
                continue  # the database is down: the runs report it, the bars wait
            for row in rows:
                _show_stage(progress, tasks, row["id"], row["stage"])

    ingestion = Ingestion(
        settings,
        run_config=_read_run_config(config) if config else {},
        verbose=verbose,
        jobs=jobs or _cores(),
        version_of=version_of,
        on_registered=registered,
        on_run_finished=finished,
    )
    watcher = threading.Thread(target=watch, daemon=True)
    with progress:
        from doc_pipeline.db.app import prepare_app_database

        engine_box.append(prepare_app_database(settings))
        watcher.start()
        try:
            outcomes = ingestion.run(files)
        finally:
            done.set()
            watcher.join()
    if as_json:
        _print_json([o.as_dict() for o in outcomes])
    else:
        for verdict in ingestion.reaped:
            err.print(
                f"[yellow]Marked earlier run {verdict.run_id[:8]} failed: {verdict.reason}."
                "[/yellow]"
            )
        _print_outcomes(outcomes)
    if any(o.failed for o in outcomes):
        raise typer.Exit(1)


STAGE_ASSETS = ["source_document", "extracted_markdown", "chunks", "embeddings", "connections"]


@app.command()
def backfill(
    asset: Annotated[
        str, typer.Argument(help=f"The stage to materialize again: {', '.join(STAGE_ASSETS)}.")
    ],
    documents: Annotated[
        list[str] | None,
        typer.Argument(help="Document ids (or their first characters); or use --all."),
    ] = None,
    all_documents: Annotated[
        bool, typer.Option("--all", help="Every registered document.")
    ] = False,
    downstream: Annotated[
        bool, typer.Option("--downstream", help="Also the stages after it.")
    ] = False,
    as_json: JsonOption = False,
    provider: ProviderOption = None,
    config: ConfigOption = None,
    verbose: VerboseOption = False,
    jobs: JobsOption = None,
) -> None:
    """Materialize one stage again for some or all documents, one run per document, e.g. after
    a change of prompt, model or chunker (the UI shows such stages as unsynced).

    The AI ledger answers every request whose input did not change, so a backfill pays only for
    what is new. Exits with status 1 if any document failed."""
    from dagster import AssetKey

    from doc_pipeline.db import store
    from doc_pipeline.ingest import Ingestion

    if asset not in STAGE_ASSETS:
        err.print(f"[red]unknown stage {asset!r}; one of {', '.join(STAGE_ASSETS)}[/red]")
        raise typer.Exit(2)
    if all_documents == bool(documents):
        err.print("[red]give document ids or --all (not both)[/red]")
        raise typer.Exit(2)
    _choose_provider(provider)
    settings = _settings()
    engine = _app_engine()
    if all_documents:
        ids = [row["id"] for row in store.document_summaries(engine)]
    else:
        ids = [_resolve_document(engine, prefix) for prefix in documents or []]
    if not ids:
        out.print("No documents yet. Add some with `doc-pipeline ingest PATH`.")
        return
    stages = STAGE_ASSETS[STAGE_ASSETS.index(asset) :] if downstream else [asset]

    def finished(outcome) -> None:
        if not as_json:
            err.print(f"{outcome.document_id}: {', '.join(stages)} → {outcome.stage}")

    ingestion = Ingestion(
        settings,
        run_config=_read_run_config(config) if config else {},
        verbose=verbose,
        jobs=jobs or _cores(),
        on_run_finished=finished,
    )
    outcomes = ingestion.rerun(ids, [AssetKey(stage) for stage in stages])
    if as_json:
        _print_json([o.as_dict() for o in outcomes])
    else:
        _print_outcomes(outcomes)
    if any(o.failed for o in outcomes):
        raise typer.Exit(1)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _read_run_config(path: Path) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        err.print(f"[red]{path}: not valid YAML: {error}[/red]")
        raise typer.Exit(2) from error
    if not isinstance(loaded, dict):
        err.print(f"[red]{path}: run config must be a mapping[/red]")
        raise typer.Exit(2)
    return loaded


def _show_stage(
    progress: Progress, tasks: dict[str, int], document_id: str | None, stage: str
) -> None:
    if document_id not in tasks:
        return
    if stage == "failed":
        progress.update(tasks[document_id], description="[red]failed[/red]")
        return
    completed = PROGRESS_STAGES.index(stage) if stage in PROGRESS_STAGES else 0
    progress.update(tasks[document_id], description=stage, completed=completed)


def _documents_table(*columns: str, title: str | None = None) -> Table:
    """A table whose ids, stages and numbers never wrap (an id cut short is of no use)."""
    table = Table(title=title)
    for column in columns:
        numeric = column in ("chunks", "connections", "seconds", "AI $", "saved $")
        table.add_column(
            column,
            justify="right" if numeric else "left",
            no_wrap=numeric or column in ("document", "stage"),
            min_width={"document": 16, "title": 12}.get(column),
        )
    return table


def _print_outcomes(outcomes) -> None:
    columns = ["document", "title", "stage", "chunks", "connections", "seconds"]
    show_cost = any(o.ai_cost_usd or o.ai_saved_usd for o in outcomes)
    if show_cost:
        columns += ["AI $", "saved $"]
    table = _documents_table(*columns, title="doc-pipeline ingest")
    for o in outcomes:
        stage = f"[red]{o.stage}[/red]" if o.failed else o.stage
        title = o.title or Path(o.source_file).name
        cells = [
            o.document_id or "-",
            f"{title} (version {o.version})" if o.version > 1 else title,
            stage,
            str(o.chunks),
            str(o.connections),
            f"{o.seconds:.1f}",
        ]
        if show_cost:
            cells += [f"{o.ai_cost_usd:.4f}", f"{o.ai_saved_usd:.4f}"]
        table.add_row(*cells)
    out.print(table)
    for o in outcomes:
        name = Path(o.source_file).name
        if o.failed:
            reason = o.error_message or "no reason recorded"
            reason = reason.removeprefix(f"{name}: ")  # the line names the file already
            out.print(
                f"[red]✗ {escape(name)}[/red] ({o.error_class}): {escape(reason)}", soft_wrap=True
            )
        if o.unexpected_error:
            err.print(
                f"[red]{escape(name)}: unexpected error (a bug, please report it) "
                f"{escape(o.unexpected_error)}[/red]",
                highlight=False,
                soft_wrap=True,
            )
        for warning in o.warnings:
            out.print(f"[yellow]! {escape(name)}[/yellow]: {escape(warning)}", soft_wrap=True)


@app.command()
def status(
    document: Annotated[
        str | None, typer.Argument(help="A document id (or its first characters).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show each document's stage, chunk and connection counts, AI spend, and last error.

    With DOCUMENT: also when each stage completed, the newest heartbeat and how many runs
    worked on it. `--json` adds the source file, author, and registration and update times."""
    from doc_pipeline.db import store

    engine = _app_engine()
    if document:
        details = store.document_details(engine, _resolve_document(engine, document))
        if as_json:
            _print_json(details)
        else:
            _print_details(details)
        return
    rows = store.document_summaries(engine)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        out.print("No documents yet. Add some with `doc-pipeline ingest PATH`.")
        return
    show_cost = any(row["ai_cost_usd"] for row in rows)
    columns = ["document", "title", "version", "stage", "progress", "chunks", "embedded"]
    table = _documents_table(*columns, "connections", *(["AI $"] if show_cost else []))
    for row in rows:
        cells = [
            row["id"],
            row["title"] or row["source_file"],
            _version_cell(row),
            "[red]failed[/red]" if row["stage"] == "failed" else row["stage"],
            _progress(row["stage"]),
            str(row["chunks"]),
            f"{row['vectors']}/{row['chunks']}",
            str(row["connections"]),
        ]
        table.add_row(*cells, *([f"{row['ai_cost_usd']:.4f}"] if show_cost else []))
    out.print(table)
    for row in rows:
        if row["stage"] == "failed":
            out.print(f"[red]✗ {row['id']}[/red] ({row['error_class']}): {row['error_message']}")
        elif row["extraction_warnings"]:
            out.print(
                f"[yellow]! {row['id']}[/yellow]: {len(row['extraction_warnings'])} extraction "
                f"warning(s), see `doc-pipeline status {row['id']}`"
            )


# Stages done when a document is at each stage (of extracted, chunked, embedded, connected).
_STAGES_DONE = {
    "pending": 0,
    "extracting": 0,
    "extracted": 1,
    "chunking": 1,
    "chunked": 2,
    "embedding": 2,
    "embedded": 3,
    "connecting": 3,
    "connected": 4,
}


def _version_cell(row: dict) -> str:
    """The current version of how many, and the newer one being processed if any."""
    current = row["current_version"]
    shown = f"{current or '-'} of {row['versions']}"
    if row["version"] != current and current is not None:
        shown += f" (v{row['version']} {'failed' if row['stage'] == 'failed' else 'processing'})"
    return shown


def _progress(stage: str) -> str:
    done = _STAGES_DONE.get(stage)
    return "-" if done is None else f"{'█' * done}{'░' * (4 - done)} {done}/4"


def _print_details(details: dict) -> None:
    def when(value) -> str:
        return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    stage = details["stage"]
    table.add_row("document", details["id"])
    table.add_row("title", f"{details['title'] or '-'} ({details['author'] or 'unknown author'})")
    table.add_row("source", details["source_file"])
    table.add_row("stage", f"[red]{stage}[/red]" if stage == "failed" else stage)
    for done, at in details["completed_stages"].items():
        table.add_row(f"  {done}", when(at))
    beat = details["last_heartbeat"]
    if beat:
        state = f"ended {when(beat['ended_at'])}" if beat["ended_at"] else "running"
        table.add_row(
            "last heartbeat",
            f"{when(beat['beat_at'])} ({beat['step_key']}, run {beat['run_id'][:8]}, "
            f"pid {beat['pid']} on {beat['host']}, {state})",
        )
    table.add_row("attempts", f"{details['attempts']} run(s) worked on it")
    for version in details["version_history"]:
        number = version["version"]
        if number == details["current_version"]:
            state = f"current since {when(version['current_since'])}"
        elif version["superseded_at"]:
            state = f"superseded {when(version['superseded_at'])}"
        elif number == details["version"]:
            state = "newest, not current yet" if details["stage"] != "failed" else "failed"
        else:
            state = "never current (a newer version arrived first)"
        changes = version["changes"] or {}
        changed = (
            f"; kept {changes['kept']}, added {changes['added']}, removed {changes['removed']}"
            " chunks"
            if changes.get("superseded") is not None
            else ""
        )
        table.add_row(
            f"version {number}",
            f"{version['source_file']} ({version['byte_size']} bytes), arrived "
            f"{when(version['registered_at'])}, {state}{changed}",
        )
    table.add_row("chunks", str(details["chunks"]))
    table.add_row("connections", str(details["connections"]))
    table.add_row("AI", f"${details['ai_cost_usd']:.4f} paid, ${details['ai_saved_usd']:.4f} saved")
    if details["error_class"]:
        table.add_row(
            "last error", f"[red]{details['error_class']}[/red]: {details['error_message']}"
        )
    if details["markup_errors"]:
        table.add_row("markup errors", f"{details['markup_errors']} recovered from")
    for number, warning in enumerate(details["extraction_warnings"]):
        table.add_row("warnings" if number == 0 else "", f"[yellow]{escape(warning)}[/yellow]")
    out.print(table)


class CostsBy(StrEnum):
    """How `costs` splits each document's spend."""

    stage = "stage"
    run = "run"


COSTS_HELP = (
    "Show what the AI cost per document and stage, and what the AI ledger saved.\n\n"
    "For each document (all, or those given by id or its first characters) and each stage "
    "that calls the AI (chunks, embeddings, connections): requests paid, ledger hits (answered "
    "from the ledger instead of paid again), failed calls, tokens of the paid requests "
    "(prompt, output, thinking), USD paid and USD the hits saved, with a total row.\n\n"
    "--by run splits each document's spend by the Dagster run that made the calls (oldest "
    "first). --json prints an object with `rows` (one per table row, with full run ids, models "
    "and first and last call times) and `total`."
)
_COSTS_SUMS = (
    "paid_requests",
    "ledger_hits",
    "failed_calls",
    "prompt_tokens",
    "output_tokens",
    "thinking_tokens",
    "cost_usd",
    "saved_usd",
)
_COSTS_HEADERS = (
    "paid",
    "hits",
    "failed",
    "prompt\ntokens",
    "output\ntokens",
    "thinking\ntokens",
    "paid\nUSD",
    "saved\nUSD",
)


@app.command(help=COSTS_HELP)
def costs(
    documents: Annotated[
        list[str] | None,
        typer.Argument(
            help="Document ids (or their first characters). Default: all.", show_default=False
        ),
    ] = None,
    by: Annotated[
        CostsBy,
        typer.Option(
            "--by", help="stage: a row per document and stage; run: per document, run and stage."
        ),
    ] = CostsBy.stage,
    as_json: JsonOption = False,
) -> None:
    """AI spend and ledger savings per document and stage (or run), from `ai_calls`."""
    from doc_pipeline.db import store

    engine = _app_engine()
    ids = list(dict.fromkeys(_resolve_document(engine, d) for d in documents or ())) or None
    rows = store.cost_breakdown(engine, ids, by_run=by is CostsBy.run)
    total = {
        name: sum((row[name] for row in rows), Decimal(0) if name.endswith("_usd") else 0)
        for name in _COSTS_SUMS
    }
    if as_json:
        _print_json({"by": by.value, "rows": rows, "total": total})
        return
    if not rows:
        if by is CostsBy.run and (ids or store.document_summaries(engine)):
            out.print("No AI calls in the ledger yet.")
        else:
            out.print("No documents yet. Add some with `doc-pipeline ingest PATH`.")
        return
    _print_costs(rows, total, by_run=by is CostsBy.run)
    if not (total["paid_requests"] or total["ledger_hits"] or total["failed_calls"]):
        out.print("No AI calls in the ledger yet (the `local` provider makes none).")


def _print_costs(rows: list[dict], total: dict, *, by_run: bool) -> None:
    """A row per document and stage (or run and stage); each document's title under its id."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("document", min_width=16)  # its cells never wrap: long titles are cut
    table.add_column("stage", no_wrap=True)
    if by_run:
        table.add_column("run", no_wrap=True)
    for header in _COSTS_HEADERS:
        table.add_column(header, justify="right", overflow="fold")

    def figures(values: dict) -> list[str]:
        counts = [f"{values[name]:,}" for name in _COSTS_SUMS[:6]]
        return [*counts, f"{values['cost_usd']:.6f}", f"{values['saved_usd']:.6f}"]

    for document_id, grouped in groupby(rows, key=lambda row: row["document_id"]):
        group = list(grouped)
        title = group[0]["title"] or group[0]["source_file"] or "(not registered)"
        labels = [Text(document_id or "(no document)"), Text(title, style="dim")]
        if len(group) == 1:
            labels = [Text("\n").join(labels)]
        for i, row in enumerate(group):
            label = labels[i] if i < len(labels) else Text()
            label.no_wrap, label.overflow = True, "ellipsis"
            run = [(row["run_id"] or "-")[:8]] if by_run else []
            table.add_row(label, row["stage"] or "-", *run, *figures(row))
        table.rows[-1].end_section = True
    table.add_row("total", *[""] * (2 if by_run else 1), *figures(total), style="bold")
    out.print(table)


@app.command()
def export(
    document: Annotated[str, typer.Argument(help="A document id (or its first characters).")],
    version: Annotated[
        int | None,
        typer.Option(
            "--version",
            help="Write the source file of this version of the document (see `status DOCUMENT`)"
            " to standard output instead, byte for byte; superseded versions are kept.",
        ),
    ] = None,
) -> None:
    """Print a document's chunks (those of its current version) as JSON lines: id, index,
    content, heading path, metadata, and connections in both directions (to chunks of other
    documents, strongest first)."""
    from doc_pipeline.db import store

    engine = _app_engine()
    document_id = _resolve_document(engine, document)
    if version is not None:
        versions = {v["version"]: v for v in store.versions_of(engine, document_id)}
        if version not in versions:
            err.print(
                f"[red]document {document_id} has no version {version} "
                f"(it has {', '.join(map(str, versions))})[/red]"
            )
            raise typer.Exit(2)
        _write_stored_source(versions[version])
        return
    connections = store.connections_of_document(engine, document_id)
    for chunk in store.load_chunks(engine, document_id):
        record = {
            "id": chunk["id"],
            "index": chunk["chunk_index"],
            "content": chunk["content"],
            "heading_path": chunk["heading_path"],
            "metadata": chunk["metadata"],
            "connections": connections.get(chunk["id"], []),
        }
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_stored_source(version: dict) -> None:
    """A version's source file from the blob store to standard output, streamed; a store that
    cannot be read is one line on standard error."""
    from doc_pipeline import blob_store
    from doc_pipeline.core.book_files import stored_source_key
    from doc_pipeline.core.ids import document_id_for

    key = stored_source_key(document_id_for(version["content_sha256"]), version["source_file"])
    url = blob_store.join(_settings().blob_url, key)
    try:
        blob_store.copy_to(url, sys.stdout.buffer)
    except blob_store.BlobStoreError as error:
        problem = str(error)
    except FileNotFoundError:
        problem = f"stored copy {url} is missing"
    else:
        sys.stdout.buffer.flush()
        return
    err.print(f"[red]{escape(version['source_file'])}: {escape(problem)}[/red]", soft_wrap=True)
    raise typer.Exit(1)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the Dagster webserver.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    provider: ProviderOption = None,
) -> None:
    """Start `dagster dev` (webserver and daemon) on this project's instance and database."""
    from doc_pipeline.instance import dagster_environment, open_instance

    _choose_provider(provider)
    settings = _settings()
    env = {**os.environ, **dagster_environment(settings)}
    _app_engine()
    open_instance(settings).dispose()  # creates the instance's storage and the `ai` pool
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-m",
        "doc_pipeline.definitions",
        "--host",
        host,
        "--port",
        str(port),
    ]
    err.print(f"Dagster UI on http://{host}:{port} (instance in {settings.dagster_home})")
    raise typer.Exit(subprocess.call(command, env=env))


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from doc_pipeline.db import migrate
    from doc_pipeline.db.server import database_urls

    migrate.upgrade(database_urls(_settings()).app, revision)
    out.print(
        f"app database at revision {migrate.current_revision(database_urls(_settings()).app)}"
    )


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target, e.g. -1 or base.")]) -> None:
    """Revert migrations down to REVISION."""
    from doc_pipeline.db import migrate
    from doc_pipeline.db.server import database_urls

    url = database_urls(_settings()).app
    migrate.downgrade(url, revision)
    out.print(f"app database at revision {migrate.current_revision(url) or 'base (empty)'}")


@db_app.command("current")
def db_current() -> None:
    """Print the app database's migration revision and the newest one."""
    from doc_pipeline.db import migrate
    from doc_pipeline.db.server import database_urls

    current = migrate.current_revision(database_urls(_settings()).app)
    out.print(f"current: {current or 'base (empty)'}  head: {migrate.head_revision()}")


@db_app.command("url")
def db_url(
    dagster: Annotated[
        bool, typer.Option("--dagster", help="The Dagster instance's database.")
    ] = False,
) -> None:
    """Print the SQLAlchemy URL of the app database (starts the embedded server if needed)."""
    from doc_pipeline.db.server import database_urls

    urls = database_urls(_settings())
    out.print(urls.dagster if dagster else urls.app, soft_wrap=True, highlight=False)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded Postgres server of this home (no-op with DATABASE_URL)."""
    from doc_pipeline.db.server import stop_embedded

    settings = _settings()
    stopped = stop_embedded(settings.pgdata)
    out.print("embedded Postgres stopped" if stopped else "embedded Postgres was not running")
