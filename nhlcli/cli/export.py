"""``nhl export``: a model file as ONNX for edge runtimes, checked against torch."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from nhlcli.cli.common import console, friendly_errors, print_json, shown


def export_command(
    model_file: Path = typer.Argument(..., help="An nhl model file: full, expert, flat or gated."),
    output: Path = typer.Option(..., "--output", "-o", help="The ONNX file to write (.onnx)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset version (18 to the newest torch writes)."),
    check: bool | None = typer.Option(
        None,
        "--check/--no-check",
        help="Compare onnxruntime with torch on random inputs (default: on when onnxruntime is installed).",
    ),
    tolerance: float = typer.Option(
        1e-4, "--tolerance", help="Largest abs logit difference the check accepts (0 or more)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the export report as JSON."),
) -> None:
    """Export to ONNX: dynamic batch, class list and normalisation in the metadata, gate outputs.

    Needs the export extra: pip install 'nhlcli[export]'.
    """
    from nhlcli.export import export_onnx

    report = export_onnx(model_file, output, opset=opset, check=check, tolerance=tolerance)
    if as_json:
        print_json(report)
        return
    console.print(
        f"wrote {shown(output)} ({report['bytes'] / 2**20:.1f} MB, opset {opset}, "
        f"outputs {', '.join(report['outputs'])}) in {report['seconds']:.1f} s"
    )
    parity = report.get("parity")
    if parity:
        rows = ", ".join(f"batch {r['batch']}: {r['max_abs_diff']:.2e}" for r in parity["batches"])
        console.print(
            f"onnxruntime against torch, max abs difference {rows} (tolerance {parity['tolerance']:g})"
        )
    else:
        console.print("not checked (onnxruntime is not installed, or --no-check)")


def onnx_profile_table(report: dict) -> Table:
    """onnxruntime latency beside torch's for the same model, per batch size."""
    from nhlcli.text import counted

    classes = counted(report["classes"], "class")
    table = Table(title=f"{shown(Path(report['file']).name)}: {classes}, opset {report['opset']}")
    table.add_column("")
    table.add_column("onnxruntime", justify="right")
    table.add_column("torch eager", justify="right")
    torch_rows = {r["batch"]: r for r in report.get("torch", [])}
    table.add_row("params (M)", f"{report['params'] / 1e6:.3f}", "")
    gmacs = report.get("gmacs")
    table.add_row("GMACs / image", "-" if gmacs is None else f"{gmacs:.4f}", "")
    for row in report["onnxruntime"]:
        other = torch_rows.get(row["batch"])
        table.add_row(
            f"latency batch {row['batch']} (ms)",
            f"{row['median_ms']:.2f}",
            f"{other['median_ms']:.2f}" if other else "-",
        )
    table.caption = f"median of timed runs, CPU, {report['threads']} threads"
    return table


def register(app: typer.Typer) -> None:
    app.command("export")(friendly_errors(export_command))
