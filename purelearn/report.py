"""The HTML report of the chapter's experiments.

:func:`write_report` gathers every experiment's figure (drawn with seed
bands), its per-seed table, the textbook's conclusion, the experiment's
explanation where it has one, and the verdict over the seeds into one
self-contained page (inline CSS, no scripts, no external resources).
"""

from __future__ import annotations

import datetime
import html
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from purelearn import _checks
from purelearn.experiments import EXPERIMENTS, Experiment, Verdict

__all__ = ["write_report", "safe_verdict", "figure_path"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; line-height: 1.5; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { margin: 0 0 4px; font-size: 1.9em; }
h2 { margin-top: 2.2em; padding-top: .6em; border-top: 2px solid #e3e6eb; font-size: 1.35em; }
.meta { color: #5b6475; font-size: .92em; margin: .2em 0 .8em; }
a { color: #1f5fbf; text-decoration: none; } a:hover { text-decoration: underline; }
img { max-width: 100%; height: auto; border: 1px solid #e3e6eb; display: block;
      margin: 12px auto; }
table { border-collapse: collapse; margin: 10px 0 14px; font-size: .88em; }
th, td { border: 1px solid #d8dce3; padding: 3px 9px; text-align: right; }
th { background: #eef1f5; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
tr.summary td { font-weight: 600; background: #eef1f5; }
.scroll { overflow-x: auto; }
.textbook { background: #f3f5f8; border-left: 4px solid #9aa5b8; padding: 8px 14px; }
.explain { background: #f1f6fd; border-left: 4px solid #5b8fd6; padding: 8px 14px; }
.verdict { padding: 8px 14px; border-left: 4px solid; }
.agree, tr:nth-child(n) td.agree { background: #eaf6ec; border-color: #2e9a48; }
.disagree, tr:nth-child(n) td.disagree { background: #fdecec; border-color: #c93c3c; }
.unknown, tr:nth-child(n) td.unknown { background: #f4f1e6; border-color: #b89a3a; }
td.agree, td.disagree, td.unknown { text-align: left; border-color: #d8dce3; }
table.toc td, table.toc th { text-align: left; }
.badge { font-weight: 600; }
.quick { color: #a05a00; font-weight: 600; }
"""


def figure_path(out_dir: str | os.PathLike[str], name: str) -> pathlib.Path:
    """Where experiment ``name``'s figure lives in ``out_dir``."""
    out_dir = _checks.file_path("out_dir", out_dir)
    if not isinstance(name, str) or not name or os.sep in name or name in (".", ".."):
        raise ValueError(f"name must be an experiment's name, got {name!r}")
    return pathlib.Path(out_dir) / f"{name}.png"


def safe_verdict(record: Experiment, result: Mapping[str, Any]) -> Verdict:
    """The record's verdict, or an unjudged one naming the error when the result cannot
    be judged (a hand-edited or truncated JSON)."""
    try:
        return record.verdict(result)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as err:
        n = len(result.get("seeds", [])) if isinstance(result, Mapping) else 0
        return Verdict(None, f"the data could not be judged ({type(err).__name__}: {err})", 0, 0, n)


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = html.escape
    out = ['<div class="scroll"><table>']
    out.append("<tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in head) + "</tr>")
    for row in rows:
        cls = ' class="summary"' if row and str(row[0]).startswith("mean") else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


_WORDS = {
    True: ("agree", "Agrees with the textbook"),
    False: ("disagree", "Does not agree with the textbook"),
    None: ("unknown", "Cannot be judged against the textbook"),
}


def _verdict_html(v: Verdict) -> str:
    cls, text = _WORDS[v.agrees]
    return (
        f'<p class="verdict {cls}"><span class="badge">{text} '
        f"({v.agreeing} of {v.seeds} seed{'s' if v.seeds != 1 else ''}):</span> "
        f"{html.escape(v.reason)}</p>"
    )


def _contents_table(summary: Sequence[tuple[str, str, Verdict, str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("#", "experiment", "verdict", "seeds", "runtime"))
    rows = ['<table class="toc">', f"<tr>{head}</tr>"]
    for i, (anchor, heading, v, runtime) in enumerate(summary, 1):
        cls, word = {
            True: ("agree", "agrees"),
            False: ("disagree", "does not agree"),
            None: ("unknown", "not judged"),
        }[v.agrees]
        rows.append(
            f'<tr><td>{i}</td><td><a href="#{anchor}">{html.escape(heading)}</a></td>'
            f'<td class="{cls}">{word}</td><td>{v.agreeing} of {v.seeds} agree</td>'
            f"<td>{html.escape(runtime)}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _anchor(name: str) -> str:
    return "exp-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _seconds(result: Mapping[str, Any]) -> float | None:
    try:
        return float(result["seconds"])
    except (KeyError, TypeError, ValueError):
        return None


def write_report(
    results: Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    render_missing: bool = True,
    title: str = "purelearn: the experiments of chapter 6",
    experiments: Mapping[str, Experiment] | None = None,
) -> pathlib.Path:
    """Write ``out_dir/report.html`` for the experiments in ``results``; return its path.

    ``results`` maps experiment names to their results; experiments absent from
    it are skipped, and those present appear in the registry's (the textbook's)
    order. Each section shows ``<name>.png`` by a relative link (drawn first when
    ``render_missing`` and the file does not exist), the per-seed table, the
    textbook's conclusion, the experiment's explanation and the verdict over the
    seeds. Names not in ``experiments`` (default: the registry) are listed with
    their runtime only.
    """
    from purelearn import plotting

    registry = EXPERIMENTS if experiments is None else experiments
    render_missing = _checks.boolean("render_missing", render_missing)
    if not isinstance(results, Mapping) or not all(
        isinstance(r, Mapping) for r in results.values()
    ):
        raise ValueError(f"results must map experiment names to result dicts, got {results!r}")
    out = pathlib.Path(_checks.file_path("out_dir", out_dir))
    out.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    names = [n for n in registry if n in results] + [n for n in results if n not in registry]
    sections, summary = [], []
    for name in names:
        result = results[name]
        record = registry.get(name)
        anchor = _anchor(name)
        heading = record.title if record else name
        png = figure_path(out, name)
        if record and render_missing and not png.exists():
            try:
                plotting.save(record.figure(result), png)
            except (KeyError, IndexError, TypeError, ValueError) as err:
                warnings.warn(f"no figure for {name}: {err}", stacklevel=2)
        if record:
            v = safe_verdict(record, result)
        else:
            v = Verdict(None, "no experiment of this name", 0, 0, len(result.get("seeds", [])))
        secs = _seconds(result)
        runtime = f"{secs:.1f} s" if secs is not None else "unknown"
        seeds = result.get("seeds") or []
        meta = [f"<code>purelearn {esc(name)}</code>", f"runtime {esc(runtime)}"]
        if seeds:
            meta.append(
                f"seeds {seeds[0]}" + (f" to {seeds[-1]} ({len(seeds)})" if len(seeds) > 1 else "")
            )
        if result.get("data"):
            meta.append(f"data: {esc(str(result['data']))}")
        if result.get("quick"):
            meta.append('<span class="quick">quick run (reduced size)</span>')
        parts = [
            f'<section id="{anchor}">',
            f"<h2>{esc(heading)}</h2>",
            f'<p class="meta">{" · ".join(meta)}</p>',
        ]
        if record:
            parts.append(
                f'<img src="{esc(png.name, quote=True)}" alt="{esc(heading, quote=True)}">'
            )
            parts.append(
                f'<p class="textbook"><strong>The textbook:</strong> {esc(record.conclusion)}</p>'
            )
            if record.explanation:
                parts.append(f'<p class="explain">{esc(record.explanation)}</p>')
            try:
                head, rows = record.table(result)
                parts.append(_html_table(head, rows))
            except (KeyError, IndexError, TypeError, ValueError) as err:
                parts.append(f"<p>No table: {esc(f'{type(err).__name__}: {err}')}</p>")
        parts.append(_verdict_html(v))
        parts.append("</section>")
        sections.append("\n".join(parts))
        summary.append((anchor, heading, v, runtime))

    total = sum(s for s in (_seconds(results[n]) for n in names) if s is not None)
    agreed = sum(row[2].agrees is True for row in summary)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>{esc(title)}</h1>
<p class="meta">The chapter "techniques for learning" of <em>Deep Learning from Scratch</em>
(Koki Saito), reproduced with purelearn. Generated {esc(stamp)};
{len(names)} experiment(s), {agreed} agreeing with the textbook; total runtime {total:.1f} s.
Every curve is the mean over the seeds with a band from the lowest to the highest seed;
an experiment agrees when at least two thirds of its seeds do, and its table lists
every seed's numbers.</p>
<nav><h3>Contents</h3>
{_contents_table(summary)}
</nav>
{chr(10).join(sections)}
</main>
</body>
</html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
