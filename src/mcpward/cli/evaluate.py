"""`mcpward eval`: measure the poisoning scanner on the labelled corpora (thin glue over
mcpward.integrity.evaluation). Exit status: 0 measured, 2 no data found or a corpus file is broken."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from mcpward.integrity import evaluation

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def eval_command(
    data: Annotated[Path | None, typer.Option(
        "--data", help="Corpus directory (default: $MCPWARD_EVAL_DATA, else ../shared/eval).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Recall and false-positive rate of the tool-poisoning scanner (docs/detection.md)."""
    root = data or evaluation.default_data_dir()
    if not (root / evaluation.POISONING).is_dir() and not (root / evaluation.BENIGN).is_dir():
        err.print(f"mcpward eval: no corpora under {root} (expected {evaluation.POISONING}/ and "
                  f"{evaluation.BENIGN}/); pass --data DIR or set MCPWARD_EVAL_DATA")
        raise typer.Exit(2)
    try:
        result = evaluation.evaluate(root)
    except evaluation.CorpusError as exc:
        err.print(f"mcpward eval: {exc}", markup=False)
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    out.print(f"corpora: {root}")
    out.print(evaluation.render(result), markup=False)
