"""``RUN_DIR/report.html``: one self-contained page a person can read or attach to an issue.

Pictures are PNGs rendered with matplotlib's Agg canvas (no display, no pyplot global state) and
embedded as base64 data URIs, or inline SVG (:mod:`trainer.timeline`), so the page has no side
files and opens anywhere. Every piece of text from the run — labels, column names, paths — is
HTML-escaped. The split's warning stands above everything else: the page is what people look
at and share, so the reason its numbers may be optimistic must not live only in a terminal.
It is read by people who did not run the training: settings and parameters are tables, not
JSON, and each number says in a sentence what it measures.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainer import timeline

MAX_ANNOTATED_CLASSES = 30  # beyond this, the counts in the confusion matrix cells become unreadable

MEANINGS: dict[str, str] = {
    "accuracy": "The share of held-out rows whose predicted label is the true one.",
    "balanced accuracy": "The mean of the per-class recalls: accuracy as if every class were equally "
    "common, so a large class cannot hide a poor small one.",
    "macro F1": "The mean over the classes of F1 (the harmonic mean of precision and recall), every "
    "class counting the same.",
    "ROC-AUC": "How well the probabilities rank each class's rows above the others' (one class "
    "against the rest, averaged), whatever the threshold: 0.5 is chance, 1 is perfect.",
    "MCC": "Matthews' correlation between true and predicted labels: 0 is chance, 1 is perfect, and it "
    "stays low when only the large classes are right.",
    "CV macro F1": "Macro F1 on each cross-validation fold of the training part, as mean ± standard "
    "deviation: the spread shows how much the score depends on which rows are held out.",
    "CV balanced accuracy": "Balanced accuracy on each cross-validation fold, as mean ± standard deviation.",
    "CV source": "How the cross-validation folds were made.",
    "cross-validation": "Why there are no cross-validated scores.",
    "train rows": "Rows the final model was fitted on.",
    "test rows": "Held-out rows every metric above is computed on.",
    "train videos": "Videos with rows in the training part.",
    "test videos": "Videos with rows in the held-out part.",
    "shared videos": "Videos with rows on both sides: their scores speak for the same people and scenes.",
    "rows without target": "Rows dropped before training because their target label is empty.",
    "fit seconds": "Time to fit the final model on the training part.",
    "cv seconds": "Time spent on cross-validation.",
    "search seconds": "Time spent on the hyperparameter search.",
}
"""One plain sentence per row of the metrics table, by the row's name."""

PER_CLASS_NOTE = (
    "precision: of the rows predicted as the class, the share that are; recall: of the class's rows, "
    "the share found; F1: the harmonic mean of the two; support: the class's held-out rows"
)

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
img { max-width: 100%; }
.note { color: #666; }
.warning { background: #fff4ce; border: 2px solid #c98a00; padding: 0.6em 0.9em; font-size: 1.1em; }
.legend { line-height: 2; }
.swatch { display: inline-block; width: 1em; height: 1em; margin: 0 0.3em 0 0.8em; vertical-align: -0.15em; }
figure { margin: 0.5em 0 1em; }
figcaption { color: #666; }
"""


def render(run: dict[str, Any], metrics: dict[str, Any], timelines: Sequence[timeline.Timeline] = ()) -> str:
    """The whole page for a run (``run.json``), its evaluation (``metrics.json``) and, for rows
    from videos, the held-out videos along their frames."""
    title = f"{run['model']} on {run['target']}"
    warning = metrics["split_warning"]
    sections = [
        f"<h1>{escape(title)}</h1>",
        f"<p class=note>created {escape(run['created_at'])}</p>",
        f"<p class=warning role=alert><strong>Warning:</strong> {escape(warning)}</p>" if warning else "",
        "<h2>Run settings</h2>",
        _table(["setting", "value"], _settings(run)),
        "<h2>Model parameters</h2>",
        _parameters(run["params"]),
        "<h2>Held-out metrics</h2>",
        _table(["metric", "value", "what it measures"], _metric_rows(metrics)),
        "<h2>Confusion matrix</h2>",
        "<p class=note>rows: true label; columns: predicted label; colour: share of the true label</p>",
        _image(_confusion_figure(metrics["confusion_matrix"]), "confusion matrix"),
        "<h2>Per-class precision, recall and F1</h2>",
        _image(_per_class_figure(metrics["per_class"]), "per-class precision, recall and F1"),
        f"<p class=note>{escape(PER_CLASS_NOTE)}</p>",
        _table(["class", "precision", "recall", "F1", "support"], _per_class_rows(metrics["per_class"])),
        "<h2>Feature importance</h2>",
        *_importance_section(metrics["importance"]),
    ]
    if timelines:
        sections += ["<h2>Held-out videos over time</h2>", *timeline.section(timelines, run["labels"])]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- tables


def _settings(run: dict[str, Any]) -> list[tuple[str, str]]:
    split = run["split"]
    search = run["search"]
    return [
        ("target", run["target"]),
        ("model", run["model"]),
        ("classes", f"{len(run['labels'])}: {', '.join(run['labels'])}"),
        ("features", str(len(run["columns"]))),
        ("dataset", run["dataset"]["path"]),
        ("dataset rows", str(run["dataset"]["rows"])),
        ("fingerprint", run["dataset"]["fingerprint"]),
        ("split", f"{split['kind']} ({split['reason']}), test size {split['test_size']}"),
        ("gap", f"{split['gap_rows']} rows left out between the parts"),
        ("cross-validation", split["cv_method"]),
        ("balance", run["balance"] or "none"),
        ("search", f"{search['kind']}, {search['iterations']} candidates" if search else "none"),
        ("seed", str(run["seed"])),
        *_preparation(run["preparation"]),
        ("feature spec", "recorded" if run["feature_spec"] else "none (export will refuse this run)"),
        ("window", _window(run["window"])),
        ("versions", ", ".join(f"{k} {v}" for k, v in run["versions"].items())),
    ]


def _preparation(preparation: dict[str, Any]) -> list[tuple[str, str]]:
    renamed = ", ".join(f"{old} → {new}" for old, new in preparation["value_map"].items())
    return [
        ("target values renamed", renamed or "none"),
        ("columns left out", preparation["drop"] or "none"),
        ("rows without a target label", f"{preparation['rows_without_target']} (dropped)"),
    ]


def _window(window: dict[str, Any] | None) -> str:
    if window is None:
        return "none: a row per frame or per clip"
    rate = "" if window["fps"] is None else f" at {window['fps']:.4g} frames/s"
    shape = ["flattened"] if window["flatten"] else []
    if window["pool"]:
        shape.append(f"pooled ({', '.join(window['pool'])})")
    return f"{window['size']} frames every {window['stride']}{rate}, {' and '.join(shape)}"


def _parameters(params: dict[str, Any]) -> str:
    """The classifier's hyperparameters, one row each, as Python would write the values."""
    if not params:
        return "<p class=note>none recorded</p>"
    return _table(["parameter", "value"], [(name, repr(value)) for name, value in params.items()])


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Each metric's name, value and the sentence of :data:`MEANINGS` that explains it."""
    roc = "n/a" if metrics["roc_auc"] is None else f"{metrics['roc_auc']:.4f}"
    rows = [
        ("accuracy", f"{metrics['accuracy']:.4f}"),
        ("balanced accuracy", f"{metrics['balanced_accuracy']:.4f}"),
        ("macro F1", f"{metrics['macro_f1']:.4f}"),
        ("ROC-AUC", roc + (f" ({metrics['roc_auc_note']})" if metrics["roc_auc_note"] else "")),
        ("MCC", f"{metrics['mcc']:.4f}"),
    ]
    cv = metrics["cv"]
    if cv is None:
        rows.append(("cross-validation", "not run"))
    else:
        for name, shown in (("macro_f1", "CV macro F1"), ("balanced_accuracy", "CV balanced accuracy")):
            rows.append((shown, f"{cv[name]['mean']:.4f} ± {cv[name]['std']:.4f}"))
        rows.append(("CV source", f"{cv['folds']} folds of the training part; {cv['source']}"))
    sizes = metrics["sizes"]
    rows += [
        (name.replace("_", " "), "n/a" if value is None else str(value)) for name, value in sizes.items()
    ]
    rows += [(f"{name} seconds", f"{value:.2f}") for name, value in metrics["seconds"].items()]
    return [(name, value, MEANINGS.get(name, "")) for name, value in rows]


def _per_class_rows(per_class: dict[str, dict[str, float]]) -> list[tuple[str, ...]]:
    return [
        (label, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", str(s["support"]))
        for label, s in per_class.items()
    ]


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(value)}</td>" for value in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _importance_section(importance: dict[str, Any]) -> list[str]:
    if not importance["top"]:
        return [f"<p class=note>{escape(importance['note'] or 'no importance available')}</p>"]
    names = [name for name, _ in importance["top"]]
    values = [value for _, value in importance["top"]]
    return [
        f"<p class=note>top {len(names)} features; method: {escape(importance['method'])}</p>",
        _image(_importance_figure(names, values), "feature importance"),
        _table(["feature", "importance"], [(n, f"{v:.4g}") for n, v in importance["top"]]),
    ]


# --------------------------------------------------------------------------- pictures


def _image(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<p><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _confusion_figure(confusion: dict[str, Any]) -> Figure:
    labels, counts = confusion["labels"], np.asarray(confusion["matrix"], dtype=float)
    n = len(labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    side = max(4.0, 0.45 * n + 2.5)
    figure = Figure(figsize=(side + 1, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of true label")
    axes.set_xticks(range(n), labels, rotation=90)
    axes.set_yticks(range(n), labels)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    if n <= MAX_ANNOTATED_CLASSES:
        for (row, col), value in np.ndenumerate(counts):
            if value:
                colour = "white" if share[row, col] > 0.5 else "black"
                axes.text(col, row, f"{int(value)}", ha="center", va="center", fontsize=8, color=colour)
    return figure


def _per_class_figure(per_class: dict[str, dict[str, float]]) -> Figure:
    labels = list(per_class)
    positions = np.arange(len(labels))
    figure = Figure(figsize=(8, max(2.5, 0.5 * len(labels) + 1)), layout="constrained")
    axes = figure.add_subplot()
    for offset, score in zip((-0.27, 0.0, 0.27), ("precision", "recall", "f1"), strict=True):
        axes.barh(positions + offset, [per_class[c][score] for c in labels], height=0.27, label=score)
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("score on the held-out rows")
    figure.legend(loc="outside upper center", ncols=3, fontsize=8)
    return figure


def _importance_figure(names: list[str], values: list[float]) -> Figure:
    figure = Figure(figsize=(8, max(2.5, 0.3 * len(names) + 1)), layout="constrained")
    axes = figure.add_subplot()
    axes.barh(np.arange(len(names)), values, color="#4c72b0")
    axes.set_yticks(np.arange(len(names)), names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("importance")
    return figure
