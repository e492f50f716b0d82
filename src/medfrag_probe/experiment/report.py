"""`report`: one self-contained HTML page (figures embedded) and a Markdown summary of a study folder.

    from medfrag_probe.experiment.report import report
    paths = report("probes/demo")      # probes/demo/report.html, probes/demo/report.md

Sections: verdicts (probe vs VQA skill with CIs, gap, McNemar, recoverable errors) per task in ladder order, the
difficulty ladder, probe-vs-VQA scatter and stage curves, paired-model deltas, prompt sensitivity and robustness,
layer curves, the ablation of the config's sweep factor, stability across seeds, and provenance (fingerprints,
versions, the config as run).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np

from .._fs import atomic_write
from ..artifacts.answers import SUMMARY, read_summary
from ..artifacts.bridge import BRIDGE, BridgeRecord, read_bridge, read_pairs
from ..artifacts.probes import RESULTS, ProbeResult, read_results
from ..artifacts.study import StudyLayout
from .factors import FACTORS

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:26px;margin:8px 0 4px} h2{font-size:20px;margin:36px 0 10px;border-bottom:2px solid #dde2ea;
padding-bottom:6px} h3{font-size:15px;margin:18px 0 8px;color:#3a4456}
p.lead{color:#4a5568;margin:0 0 14px;max-width:900px} .note{color:#5a6475;font-size:13px;max-width:960px}
table{border-collapse:collapse;font-size:13px;background:#fff;margin:6px 0 14px;box-shadow:0 1px 2px #0001}
.scroll{overflow-x:auto}
th,td{padding:4px 7px;border-bottom:1px solid #e5e8ee;text-align:right;white-space:nowrap;font-size:12px}
th{background:#eef1f6;text-align:center;font-weight:600} td.l,th.l{text-align:left}
.v{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.sound{background:#2a9d3f}.reasoning-limited{background:#e07b00}.vision-limited{background:#c0392b}
.both{background:#7d3c98}.inconclusive{background:#8c8c8c}
figure{margin:8px 0 18px;background:#fff;padding:10px;box-shadow:0 1px 2px #0001}
figure img{max-width:100%;height:auto;display:block;margin:auto} figcaption{font-size:12px;color:#5a6475;
margin-top:6px} .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px}
.grid figure{margin:0} pre{background:#fff;padding:12px;font-size:12px;overflow:auto;box-shadow:0 1px 2px #0001}
nav a{margin-right:14px;font-size:13px;color:#2b5fab;text-decoration:none}
"""


class _Doc:
    """Builds the HTML page and the Markdown summary side by side."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.html: list[str] = []
        self.md: list[str] = []

    def heading(self, text: str, level: int = 2, anchor: str = "") -> None:
        self.html.append(f"<h{level} id='{anchor}'>{html.escape(text)}</h{level}>")
        self.md.append(f"\n{'#' * level} {md_escape(text)}\n")

    def text(self, text: str, css: str = "note") -> None:
        self.html.append(f"<p class='{css}'>{html.escape(text)}</p>")
        self.md.append(md_escape(text) + "\n")

    def table(self, header: list[str], rows: list[list], *, left: int = 1) -> None:
        cells = "".join(f"<th class='{'l' if i < left else ''}'>{html.escape(h)}</th>" for i, h in enumerate(header))
        body = []
        for row in rows:
            tds = []
            for i, value in enumerate(row):
                shown = _cell(value)
                if header[i] == "verdict" and value:
                    shown = f"<span class='v {html.escape(str(value))}'>{html.escape(str(value))}</span>"
                else:
                    shown = html.escape(shown)
                tds.append(f"<td class='{'l' if i < left else ''}'>{shown}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        self.html.append(f"<div class='scroll'><table><tr>{cells}</tr>{''.join(body)}</table></div>")
        self.md.append("| " + " | ".join(md_escape(h) for h in header) + " |\n|" + "---|" * len(header))
        self.md.extend("| " + " | ".join(md_escape(_cell(v)) if isinstance(v, str) else _cell(v) for v in row) + " |"
                       for row in rows)
        self.md.append("")

    def figure(self, path: Path | None, caption: str) -> None:
        if path is None or not path.is_file():
            return
        data = base64.b64encode(path.read_bytes()).decode()
        self.html.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md.append(f"![{md_escape(caption)}](<{path.relative_to(self.folder).as_posix()}>)\n")

    def raw(self, snippet: str) -> None:
        self.html.append(snippet)


_MD_SPECIAL = set("\\`*_[]|~")


def md_escape(text: str) -> str:
    """Text as Markdown shows it literally: punctuation that Markdown reads is backslash-escaped, HTML is written
    as entities (no tag or script survives), and a line break cannot end a table row."""
    text = html.escape(str(text), quote=False).replace("\r", " ").replace("\n", " ")
    text = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)
    return "\\" + text if text[:1] in ("#", "+", "-", "=") else text  # not a heading or a list item


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{value[0]:.2f}, {value[1]:.2f}]"
    return str(value)


def _with_ci(value, ci) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{value:+.3f}"


def _bridge_records(folder: Path) -> list[BridgeRecord]:
    return read_bridge(folder) if (folder / BRIDGE).is_file() else []


def _probe_results(folder: Path) -> list[ProbeResult]:
    return read_results(folder) if (folder / RESULTS).is_file() else []


def report(folder: str | Path) -> dict[str, Path]:
    """Write `report.html` and `report.md` into a study folder (made by `run`); return their paths."""
    folder = Path(folder)
    study = _Study(StudyLayout(folder))
    doc = _Doc(folder)
    figures = study.layout.figures
    figures.mkdir(exist_ok=True)
    _header(doc, study)
    _verdicts(doc, study)
    _pairs(doc, study)
    _robustness(doc, study)
    _layers(doc, study)
    _ablation(doc, study, figures)
    _seeds(doc, study)
    _provenance(doc, study)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(study.name)} — "
            f"medfrag-probe report</title><style>{CSS}</style></head><body><main>{''.join(doc.html)}</main></body>"
            "</html>")
    atomic_write(study.layout.report_html, page)
    atomic_write(study.layout.report_md, "\n".join(doc.md) + "\n")
    return {"html": study.layout.report_html, "markdown": study.layout.report_md}


class _Study:
    """Everything a report reads from a study folder."""

    def __init__(self, layout: StudyLayout):
        self.layout = layout
        self.folder = folder = layout.root
        self.run = layout.read_run()
        self.name = self.run.get("name", folder.name)
        self.config_text = layout.config.read_text() if layout.config.is_file() else ""
        import yaml

        self.config = yaml.safe_load(self.config_text) or {}
        self.units = self.run.get("units", [])
        self.label = {u["model"]: u["label"] for u in self.units}
        self.seeds = layout.seeds()
        self.seed = self.seeds[0] if self.seeds else 0
        self.bridge_dir = layout.bridge(self.seed)
        self.bridge = _bridge_records(self.bridge_dir)
        self.pairs = read_pairs(self.bridge_dir)
        self.probes = {u["key"]: _probe_results(layout.probe(self.seed, u["key"])) for u in self.units}
        self.vqa = {u["key"]: read_summary(layout.vqa(u["key"])) for u in self.units
                    if (layout.vqa(u["key"]) / SUMMARY).is_file()}
        self.data_order = list(dict.fromkeys(u["data"] for u in self.units))
        self.model_order = list(dict.fromkeys(u["model"] for u in self.units))
        self.task_label = {u["data"]: u["task_label"] + (f" @{u['variant']}" if u["variant"] else "")
                           for u in self.units}

    def unit(self, model: str, data: str) -> dict | None:
        return next((u for u in self.units if u["model"] == model and u["data"] == data), None)


def _header(doc: _Doc, study: _Study) -> None:
    doc.raw(f"<h1>{html.escape(study.name)}</h1>")
    doc.md.append(f"# {md_escape(study.name)}\n")
    if study.config.get("description"):
        doc.text(str(study.config["description"]).strip(), "lead")
    doc.text(f"{len(study.model_order)} models x {len(study.data_order)} tasks; finished "
             f"{study.run.get('finished', '')}; medfrag-probe {study.run.get('versions', {}).get('medfrag_probe')}. "
             "Skill is chance-normalised balanced accuracy: 0 = chance, 1 = perfect; probe skill measures what the "
             "vision representation holds, VQA skill what the model answers.")
    doc.raw("<nav><a href='#verdicts'>Verdicts</a><a href='#pairs'>Pairs</a><a href='#robustness'>Robustness</a>"
            "<a href='#layers'>Layer curves</a><a href='#ablation'>Ablation</a><a href='#seeds'>Seeds</a>"
            "<a href='#provenance'>Provenance</a></nav>")


def _verdicts(doc: _Doc, study: _Study) -> None:
    doc.heading("Vision or reasoning? Verdicts per task and model", anchor="verdicts")
    if not study.bridge:
        doc.text("No bridge results (no VQA stage in this study, or no vision-language model): probe results only.")
        return
    rule = study.bridge[0].get("rule", {})
    doc.text(f"Verdict rule (a side is decided only when its 95% CI lies wholly on one side of its threshold): "
             f"seen when the lower bound of the probe (or VQA) skill is at least {rule.get('seen_skill')}, not seen "
             f"when the probe skill's upper bound is below it; lost when the gap (probe - VQA) has its lower bound "
             f"above {rule.get('min_gap')}, kept when its upper bound is below it. reasoning-limited = seen and lost; "
             "sound = seen and kept; both = not seen and lost; vision-limited = not seen, loss not shown; otherwise "
             "inconclusive (the bridge record says which side is undecided and about how many samples would decide "
             "it). CIs: patient-level paired bootstrap.")
    rows = []
    by = {(r["model"], r["data"]): r for r in study.bridge}
    for data in study.data_order:
        for model in study.model_order:
            r = by.get((model, data))
            if r:
                rows.append([study.task_label.get(data, data), study.label.get(model, model), r["point"],
                             _with_ci(r["probe_skill"], r["probe_skill_ci"]), _with_ci(r["vqa_skill"],
                                                                                      r["vqa_skill_ci"]),
                             _with_ci(r["gap"], r["gap_ci"]), r["verdict"], f"{r['mcnemar_p']:.2g}",
                             f"{r['recoverable_errors']} / {r['n']}", _to_decide(r)])
    doc.table(["task", "model", "probe point", "probe skill [95% CI]", "VQA skill [95% CI]", "gap [95% CI]",
               "verdict", "McNemar p", "recoverable / n", "n to decide"], rows, left=3)
    _causal(doc, study)
    doc.figure(study.bridge_dir / "figures" / "ladder.png",
               "Difficulty ladder: tasks in configured order; probe skill (filled) and VQA skill (open) per model.")
    doc.figure(study.bridge_dir / "figures" / "probe_vs_vqa.png",
               "Probe skill against VQA skill; below the diagonal the answer loses what the encoder holds.")
    doc.figure(study.bridge_dir / "figures" / "stage_curves.png",
               "Stage curves: skill along vision blocks, projector, language model, description and answer (95% CI "
               "bands; dotted line: the point the language model reads).")


def _causal(doc: _Doc, study: _Study) -> None:
    """The causal check behind each verdict (`intervene`), where the study ran it."""
    checked = [r for r in study.bridge if r.get("causal_effect") is not None]
    if not checked:
        return
    doc.text("Does the answer use what the probe finds? The probed signal is erased from the image tokens (LEACE on "
             "the projector's mean token, fitted on the other folds) and the answers' expected skill (from their "
             "option probabilities) is measured again, against erasing a random subspace of the same rank; and the "
             "share of the answer probability that moves to another class when the language model is given the "
             "tokens of an image of that class.")
    rows = []
    by = {(r["model"], r["data"]): r for r in checked}
    for data in study.data_order:
        for model in study.model_order:
            r = by.get((model, data))
            if r:
                follow = r.get("patch_follow_rate")
                uses = {True: "yes", False: "no", None: "undecided"}[r.get("uses_probed_signal")]
                rows.append([study.task_label.get(data, data), study.label.get(model, model), r["verdict"],
                             _with_ci(-r["causal_effect"], r["causal_ci"] and [-r["causal_ci"][1],
                                                                                -r["causal_ci"][0]]),
                             _with_ci(-r["random_effect"], r.get("random_ci") and [-r["random_ci"][1],
                                                                                    -r["random_ci"][0]]),
                             "n/a" if follow is None else f"{follow:.0%}", uses])
    doc.table(["task", "model", "verdict", "expected skill change, probed signal erased [95% CI]",
               "random subspace erased", "answer following another image", "uses the probed signal"], rows, left=3)


def _to_decide(record: dict) -> str:
    """For an inconclusive verdict: about how many samples would decide each undecided side."""
    needed = record.get("n_needed") or {}
    return ", ".join(f"{side}: ~{n}" if n else f"{side}: at threshold" for side, n in needed.items())


def _pairs(doc: _Doc, study: _Study) -> None:
    doc.heading("Generalist vs medical: paired deltas", anchor="pairs")
    if not study.pairs:
        doc.text("No model pairs in this study.")
        return
    rows = [[study.task_label.get(p["data"], p["data"]), study.label.get(p["generalist"], p["generalist"]),
             study.label.get(p["medical"], p["medical"]), _with_ci(p["probe_delta"], p["probe_delta_ci"]),
             _with_ci(p["vqa_delta"], p["vqa_delta_ci"]), "yes" if p["identical_vision_tower"] else "no", p["n"]]
            for p in study.pairs]
    doc.table(["task", "generalist", "medical", "probe delta [95% CI]", "VQA delta [95% CI]", "identical tower",
               "n"], rows, left=3)
    doc.text("Delta = medical minus generalist skill on the same samples, with paired bootstrap CIs. An identical "
             "tower means the two models' vision weights are the same: any probe difference then comes from the "
             "projector point or from chance.")


def _robustness(doc: _Doc, study: _Study) -> None:
    doc.heading("Prompt sensitivity and robustness", anchor="robustness")
    if not study.vqa:
        doc.text("No VQA results.")
        return
    rows = []
    for data in study.data_order:
        for model in study.model_order:
            unit = study.unit(model, data)
            s = study.vqa.get(unit["key"]) if unit else None
            if not s:
                continue
            image = s["conditions"]["image"]
            q = s.get("quadrants", {})
            rows.append([study.task_label.get(data, data), study.label.get(model, model), image["accuracy"],
                         image["answered_accuracy"], image["refusal_rate"], (s["spread"].get("all") or {}).get("std"),
                         (s["spread"].get("all") or {}).get("range"),
                         s["paraphrase"].get("paraphrase_flip_rate", s["paraphrase"].get("flip_rate")),
                         s["paraphrase"]["negation_flip_rate"], s["text_only"].get("agreement"),
                         s["swap"].get("sensitivity"), q.get("Ideal"), q.get("Fragile"), q.get("Dangerous"),
                         q.get("Worst"), q.get("Abstains-blind")])
    doc.table(["task", "model", "accuracy", "answered acc.", "refusals", "prompt std", "prompt range", "flip rate",
               "negation flips", "text-only agree", "swap sens.", "Ideal", "Fragile", "Dangerous", "Worst",
               "abstains blind"], rows,
              left=2)
    doc.text("Accuracy over all items (unanswered count wrong) and over answered items; spread of accuracy across "
             "prompts; paraphrase flip rate over pairs of wordings (PSF-Med; negations apart); agreement of answers "
             "with and without the image; share of answers that change when the image is swapped for one of another "
             "class; quadrants of samples by consistency x image reliance. Definitions: "
             "medfrag_probe/answering/measures.py.")


def _layers(doc: _Doc, study: _Study) -> None:
    doc.heading("Layer curves", anchor="layers")
    figures = []
    for unit in study.units:
        folder = study.layout.probe(study.seed, unit["key"])
        figures += [(p, f"{unit['label']} on {study.task_label.get(unit['data'], unit['data'])}")
                    for p in sorted(folder.glob("layers__*.png"))]
    if not figures:
        doc.text("No probe results.")
        return
    doc.raw("<div class='grid'>")
    for path, caption in figures:
        doc.figure(path, f"Probe balanced accuracy per point: {caption}")
    doc.raw("</div>")


def _ablation(doc: _Doc, study: _Study, figures: Path) -> None:
    sweep = study.config.get("sweep") or {}
    factor = sweep.get("factor")
    doc.heading(f"Ablation: {factor}" if factor else "Ablation", anchor="ablation")
    if not factor:
        doc.text("The config sweeps no factor.")
        return
    if factor not in FACTORS:
        doc.text(f"Unknown sweep factor {factor!r} in the config; valid: {', '.join(FACTORS)}.")
        return
    path = FACTORS[factor].plot(study, figures / f"ablation_{factor}.png")
    if path is None:
        doc.text(f"Nothing to plot for {factor}.")
        return
    doc.figure(path, f"Skill against {factor.replace('_', ' ')} (95% CIs where available).")


def _seeds(doc: _Doc, study: _Study) -> None:
    doc.heading("Stability across seeds", anchor="seeds")
    if len(study.seeds) < 2:
        doc.text(f"One seed ({study.seed}); list more under `seeds:` to see how folds and resamples move the results.")
        return
    rows = []
    per_seed = {s: {(r.model, r.data): r for r in _bridge_records(study.layout.bridge(s))} for s in study.seeds}
    for data in study.data_order:
        for model in study.model_order:
            found = [per_seed[s].get((model, data)) for s in study.seeds]
            found = [r for r in found if r]
            if found:
                probe = [r["probe_skill"] for r in found]
                verdicts = sorted({r["verdict"] for r in found})
                rows.append([study.task_label.get(data, data), study.label.get(model, model), float(np.mean(probe)),
                             float(np.std(probe)), ", ".join(verdicts), "yes" if len(verdicts) == 1 else "no"])
    doc.table(["task", "model", "probe skill (mean)", "sd across seeds", "verdicts", "stable"], rows, left=2)


def _provenance(doc: _Doc, study: _Study) -> None:
    doc.heading("Provenance", anchor="provenance")
    rows = []
    for unit in study.units:
        s = study.vqa.get(unit["key"], {})
        results = study.probes.get(unit["key"], [])
        first = results[0] if results else {}
        rows.append([unit["label"], unit["model"], study.task_label.get(unit["data"], unit["data"]), unit["data"],
                     first.get("model_fingerprint") or s.get("model_fingerprint", ""),
                     first.get("vision_fingerprint") or s.get("vision_fingerprint", ""),
                     first.get("data_fingerprint") or s.get("data_fingerprint", ""),
                     first.get("reads_point") or s.get("reads_point", "")])
    doc.table(["model", "spec", "task", "data", "model fingerprint", "vision fingerprint", "data fingerprint",
               "reads point"], rows, left=8)
    versions = study.run.get("versions", {})
    doc.text("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f". Seeds: {study.seeds}. "
             f"Last run: {study.run.get('finished')} ({study.run.get('seconds')} s).")
    doc.heading("The config as run", level=3)
    doc.raw(f"<pre>{html.escape(study.config_text)}</pre>")
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", study.config_text)), default=0))
    doc.md.append(f"{fence}yaml\n{study.config_text}\n{fence}")
