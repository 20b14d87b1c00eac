"""HTML pages from report data: one run's report, and the repository's page.

One self-contained file each: the CSS is inline and every plot an inline SVG
(pipeline/report/charts.py), so a page opens offline from disk or from a
copy mailed around; nothing is fetched. No TensorFlow here: `models report`
renders the repository page from the stored JSON alone.
"""
from __future__ import annotations

import datetime
import html
from typing import Any, Dict, List

from deepfm_tfx.contracts import EXAMPLE_VALIDATOR_GATE, LATENCY_GATE, TRAINER_KEY
from deepfm_tfx.pipeline.report import charts

STYLE = """
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:1120px;margin:0 auto;padding:20px 28px 60px;background:#fff}
h1{font-size:22px;margin:6px 0 2px} h2{font-size:17px;margin:28px 0 8px;padding-top:10px;border-top:1px solid #d0d7de}
h3{font-size:14px;margin:14px 0 6px} .sub{color:#57606a;margin:0 0 10px}
table{border-collapse:collapse;margin:6px 0 10px} th,td{padding:3px 10px;border-bottom:1px solid #eaeef2;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f6f8fa;font-weight:600}
.badge{display:inline-block;padding:3px 10px;border-radius:12px;color:#fff;font-weight:600}
.pushed{background:#2da44e} .blocked{background:#cf222e} .neutral{background:#6e7781}
.plots{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start} figure{margin:0}
.plots>section{flex:1 1 460px}
figure svg{max-width:100%;height:auto} figcaption{color:#57606a;font-size:12px;max-width:520px}
.bad{color:#cf222e;font-weight:600} .good{color:#1a7f37;font-weight:600} .muted{color:#6e7781}
ul.why li{margin:3px 0} code{background:#f6f8fa;padding:1px 4px;border-radius:4px;font-size:12px}
nav a{margin-right:12px;color:#0969da;text-decoration:none}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _n(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "–"
    if spec == "d" and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, float):
        return format(value, spec)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return _e(value)


def _table(headers: List[str], rows: List[List[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(name: str, svg: str, caption: str) -> str:
    return f'<figure class="plot" data-plot="{_e(name)}">{svg}<figcaption>{_e(caption)}</figcaption></figure>'


def _side_by_side(*parts: str) -> str:
    return '<div class="plots">' + "".join(f"<div>{p}</div>" for p in parts if p) + "</div>"


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>{body}</section>'


def _page(title: str, subtitle: str, nav: List[tuple], sections: List[str]) -> str:
    links = "".join(f'<a href="#{i}">{_e(t)}</a>' for i, t in nav)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><main><h1>{_e(title)}</h1><p class=\"sub\">{subtitle}</p>"
            f"<nav>{links}</nav>{''.join(sections)}</main></body></html>")


# --- one run --------------------------------------------------------------------------------------

def _decision(report: Dict[str, Any]) -> str:
    decision = report["decision"]
    kind = "pushed" if decision["pushed"] else "blocked" if decision["blocked_by"] else "neutral"
    why = "".join(f"<li>{_e(line)}</li>" for line in decision["why"]) or "<li>no gate had anything to say</li>"
    s = report["summary"]
    facts = [["trainer", _e(s.get(TRAINER_KEY))], ["span (week)", _n(s.get("span"))],
             ["training window (spans)", _e(", ".join(map(str, s.get("window_spans") or [])) or "–")],
             ["warm start", _e(s.get("warm_start_note") or "–")],
             ["pipeline run", f"<code>{_e(s.get('pipeline_run_id'))}</code>"]]
    if report.get("tensorboard_run"):
        facts.append(["TensorBoard run", f"<code>{_e(report['tensorboard_run'])}</code>"])
    return (f'<p><span class="badge {kind}">{_e(decision["outcome"])}</span></p>'
            f'<ul class="why">{why}</ul>' + _table(["", ""], facts))


def _metrics(report: Dict[str, Any]) -> str:
    metrics = report.get("metrics") or {}
    new, base = metrics.get("candidate") or {}, metrics.get("baseline") or {}
    s = report["summary"]
    rows = [[name, _n(new.get(key), spec), _n(base.get(key), spec), _n(s.get(bayes)) if bayes else "–"]
            for name, key, bayes, spec in (
                ("AUC", "auc", "bayes_auc", ".4f"), ("logloss", "logloss", "bayes_logloss", ".4f"),
                ("calibration (mean prediction / click rate)", "calibration", None, ".4f"),
                ("mean prediction", "mean_prediction", None, ".4f"), ("click rate", "mean_label", None, ".4f"),
                ("rows", "example_count", None, "d"))]
    body = _table(["TFMA, eval split of the newest span", "new model", "baseline", "best possible (Bayes)"], rows)
    gate = report.get("gate") or {}
    paired = gate.get("paired")
    if paired:
        blocked = not gate.get("change_gate_passed", True)
        verdict = '<span class="bad">blocked</span>' if blocked else '<span class="good">passed</span>'
        body += (f"<h3>AUC difference, paired on the same rows (DeLong)</h3><p>AUC(new) − AUC(baseline) = "
                 f"<b>{paired['diff']:+.4f}</b>, 95% CI [{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}] on "
                 f"{paired['rows']:,} rows ({paired['positives']:,} clicks); standard error {paired['se']:.4f}, "
                 f"p = {paired['p_value']:.3g}. Change gate: {verdict}. The rule: blocked only when the whole "
                 f"interval lies below −max_auc_drop ({gate['max_auc_drop']:g}).</p>")
        body += _figure("paired-auc", charts.paired_interval(
            paired["diff"], paired["ci_low"], paired["ci_high"], gate["max_auc_drop"], blocked),
            "The point is the difference, the bar its 95% interval; the dashed line is -max_auc_drop.")
    elif gate:
        body += f"<p>{_e(gate.get('change_gate_message'))}</p>"
    return body


def _roc_and_calibration(report: Dict[str, Any]) -> Dict[str, str]:
    out = {}
    if report.get("roc"):
        curves = {("new model" if k == "new" else "baseline"): dict(v, role=k) for k, v in report["roc"].items()}
        out["roc"] = _figure("roc", charts.roc(curves), f"Both models on the same {report['rows']:,} eval rows "
                             "(exact AUC; TFMA's figure above is bucketed).")
    if report.get("calibration"):
        series = {("new model" if k == "new" else "baseline"): {"bins": v, "role": k}
                  for k, v in report["calibration"].items()}
        out["calibration"] = _figure(
            "calibration", charts.calibration(series),
            "Equal-count bins of the predicted probability; bars: 95% interval of the observed click rate.")
    return out


def _slices(report: Dict[str, Any]) -> str:
    if not report.get("slices"):
        return ('<p class="muted">No slices: list categorical columns under <code>slices:</code> in the '
                'feature spec to get TFMA metrics per value.</p>')
    body = ""
    for column in report["slices"]:
        rows = [[_e(v["value"]), _n(v.get("example_count"), "d"), _n(v.get("auc")), _n(v.get("baseline_auc")),
                 _n(v.get("logloss")), _n(v.get("calibration")), _n(v.get("mean_label"))]
                for v in column["values"]]
        more = column["total_values"] - len(column["values"])
        table = (_table(["value", "rows", "AUC", "baseline AUC", "logloss", "calibration", "click rate"], rows) +
                 (f'<p class="muted">{more} smaller slice(s) not shown.</p>' if more > 0 else ""))
        shown = [v for v in column["values"] if v.get("auc") is not None]
        chart = _figure(f"slice-{charts.safe_id(column['column'])}", charts.horizontal_bars(
            [str(v["value"]) for v in shown], [v["auc"] for v in shown], "AUC of the new model"),
            f"AUC by value of {column['column']}") if shown else ""
        body += f"<h3>{_e(column['column'])}</h3>" + _side_by_side(table, chart)
    return body


def _cold(report: Dict[str, Any]) -> str:
    cold = report.get("cold")
    if not cold:
        return '<p class="muted">Not evaluated in this run.</p>'
    rows = [[name, _n(part["rows"]), _n(part["clicks"]), _n(part.get("auc")), _n(part.get("baseline_auc")),
             _n(part.get("calibration")), _n(part.get("mean_label"))]
            for name, part in (("cold: an id the window never saw", cold["cold"]),
                               ("warm: every id seen in training", cold["warm"]))]
    spans = ", ".join(map(str, cold.get("window_spans") or [])) or "–"
    chart = _figure("cold-fields", charts.horizontal_bars(
        [f["field"] for f in cold["by_field"]], [f["share"] for f in cold["by_field"]],
        "share of eval rows with an unseen id", percent=True),
        "Which columns bring the unseen ids.") if cold.get("by_field") else ""
    return (f"<p>A row is cold when at least one of its categorical ids never appeared in the training "
            f"window's train split (spans {_e(spans)}).</p>" +
            _side_by_side(_table(["eval rows", "rows", "clicks", "AUC", "baseline AUC", "calibration",
                                  "click rate"], rows), chart))


def _training(report: Dict[str, Any]) -> str:
    curves = report.get("training_curves") or {}
    if not curves:
        return '<p class="muted">No training curves (the run stopped before training).</p>'
    figures = "".join(_figure(f"training-{charts.safe_id(metric)}", charts.curves(series, metric),
                              f"{metric}: running value over this run's training steps, and validation")
                      for metric, series in sorted(curves.items(), key=lambda kv: kv[0] != "loss"))
    where = report.get("model_run_dir")
    return f'<div class="plots">{figures}</div>' + (
        f'<p class="muted">Event files: <code>{_e(where)}</code> (<code>deepfm-tfx tensorboard</code>).</p>'
        if where else "")


def _gates(report: Dict[str, Any]) -> str:
    body = f"<h3>{EXAMPLE_VALIDATOR_GATE} (schema anomalies)</h3>"
    found = report.get("anomalies")
    if found is None:
        body += '<p class="muted">Did not run.</p>'
    elif found:
        body += '<ul class="bad">' + "".join(f"<li>{_e(line)}</li>" for line in found) + "</ul>"
    else:
        body += '<p class="good">No anomalies.</p>'
    body += "<h3>DriftGate (vs the previous good span)</h3>"
    drift = report.get("drift") or {}
    if not drift.get("compared"):
        body += '<p class="muted">Nothing to compare with: first span, or the same span again.</p>'
    else:
        rows, labels, ratios, moved = [], [], [], 0
        for f in drift["features"]:
            cells = [_e(f["feature"])]
            for kind in ("drift", "skew"):
                m = f.get(kind)
                cells.append(f'{_n(m["value"])} / {_n(m["threshold"])} ({_e(MEASURES.get(m["measure"], m["measure"]))})'
                             if m else "–")
            past = [k for k in ("drift", "skew") if f.get(k, {}).get("moved")]
            moved += bool(past)
            cells.append(f'<span class="bad">moved ({", ".join(past)})</span>' if past else "within")
            rows.append(cells)
            d = f.get("drift") or f.get("skew")
            if d and d["threshold"]:
                labels.append(f["feature"])
                ratios.append(d["value"] / d["threshold"])
        verdict = (f'<span class="bad">{moved} feature(s) moved past their threshold</span>' if moved
                   else '<span class="good">every feature within its thresholds</span>')
        body += f"<p>{verdict} ({len(drift['features'])} features compared with the previous span).</p>"
        top = min(len(labels), 15)
        if top:
            body += _figure("drift", charts.horizontal_bars(labels[:top], ratios[:top], "drift distance / threshold",
                                                            threshold=[1.0] * top),
                            "The features that moved most vs the previous span; past 1.0 the gate stops the week.")
        body += _table(["feature", "drift vs previous span / threshold", "skew / threshold", ""], rows[:20])
        if len(rows) > 20:
            body += f'<p class="muted">{len(rows) - 20} more feature(s), all moving less.</p>'
    body += "<h3>Evaluator and change gate</h3>"
    gate = report.get("gate") or {}
    metrics = ((report.get("metrics") or {}).get("candidate") or {})
    if metrics.get("auc") is not None:
        ok = metrics["auc"] >= report["min_auc"]
        body += (f'<p>AUC floor: {metrics["auc"]:.4f} vs min_auc {report["min_auc"]:g}: '
                 f'<span class="{"good" if ok else "bad"}">{"passed" if ok else "failed"}</span>.</p>')
    if gate:
        ok = gate.get("change_gate_passed")
        body += (f'<p>Change vs baseline: <span class="{"good" if ok else "bad"}">{"passed" if ok else "blocked"}'
                 f'</span>. {_e(gate.get("change_gate_message"))}</p>')
    check = report["summary"].get("serving_check")
    if check:
        refused = report["summary"].get("blocked_by") == LATENCY_GATE
        budgets = ", ".join(f"{name} {check[key]:g} {unit}" for name, key, unit in (
            ("latency budget", "latency_budget_ms", "ms"), ("memory budget", "memory_budget_mb", "MB")) if check.get(key))
        body += (f'<p>Serving check before the push ({check["requests"]} requests of {check["rows_per_request"]} '
                 f'candidates, in a serving process of its own): p50 {check["p50_ms"]:.2f} ms, p99 '
                 f'{check["p99_ms"]:.2f} ms, {check["cpu_ms_per_request"]:.2f} ms CPU per request, loading added '
                 f'{_n(check.get("loaded_mb"), ".0f")} MB; {_e(budgets)}: <span class="{"bad" if refused else "good"}">'
                 f'{"refused" if refused else "passed"}</span>.</p>')
    if not gate and metrics.get("auc") is None:
        body += '<p class="muted">Did not run.</p>'
    return body


def _data(report: Dict[str, Any]) -> str:
    data = report.get("data") or {}
    s = report["summary"]
    if not data:
        return '<p class="muted">No statistics (the run stopped before StatisticsGen).</p>'
    rows = [["newest span", _n(s.get("span"))]] + [[f"{k} rows", _n(v)] for k, v in data.get("rows", {}).items()]
    rows += [["click rate (train)", _n(data.get("click_rate"))],
             ["training window (spans)", _e(", ".join(map(str, s.get("window_spans") or [])) or "–")]]
    missing = [m for m in data.get("missing", []) if m["rate"] > 0]
    chart = _figure("missing", charts.horizontal_bars([m["feature"] for m in missing], [m["rate"] for m in missing],
                                                      "missing", percent=True),
                    "Missing rate per column, newest span's train split.") if missing else \
        "<p>No column has missing values.</p>"
    return _side_by_side(_table(["", ""], rows), chart)


MEASURES = {"l_infty": "L-infinity", "jensen_shannon_divergence": "Jensen-Shannon",
            "normalized_abs_difference": "normalized abs. difference"}

RUN_SECTIONS = (("decision", "Decision"), ("metrics", "Metrics"), ("roc", "ROC"), ("calibration", "Calibration"),
                ("slices", "Slices"), ("cold-ids", "Cold ids"), ("training", "Training curves"),
                ("gates", "Gates"), ("data", "Data"))


def run_page(report: Dict[str, Any]) -> str:
    """The HTML page of one run's report data (run_data.collect)."""
    s = report["summary"]
    plots = _roc_and_calibration(report)
    missing = '<p class="muted">Not evaluated in this run.</p>'
    bodies = {
        "decision": _decision(report), "metrics": _metrics(report),
        "roc": plots.get("roc", missing), "calibration": plots.get("calibration", missing),
        "slices": _slices(report) if report.get("metrics") else missing, "cold-ids": _cold(report),
        "training": _training(report), "gates": _gates(report), "data": _data(report),
    }
    title = f"{report.get('model_name', 'model')}: span {s.get('span')}, {s.get(TRAINER_KEY)} trainer"
    subtitle = (f"deepfm-tfx run report, generated {_e(report.get('generated_at') or _now())} · "
                f"{_e(report['decision']['outcome'])}")
    sections = [_section(i, t, bodies[i]) for i, t in RUN_SECTIONS]
    pair = [i for i, (key, _) in enumerate(RUN_SECTIONS) if key in ("roc", "calibration")]
    sections[pair[0]:pair[1] + 1] = ['<div class="plots">' + "".join(sections[pair[0]:pair[1] + 1]) + "</div>"]
    return _page(title, subtitle, list(RUN_SECTIONS), sections)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# --- the repository -------------------------------------------------------------------------------

def repository_page(page: Dict[str, Any]) -> str:
    """The repository's page (pipeline/report/repository.py's data)."""
    versions, runs = page["versions"], page["runs"]
    serving = page.get("serving_version")
    sections = []
    head = (f"<p>Serving: <b>{_e(serving if serving is not None else 'nothing')}</b>"
            + (f" (held by a rollback since {_e(page['hold']['since'])})" if page.get("hold") else "")
            + f"; {len(versions)} version(s); {len(runs)} recorded run(s).</p>")
    for line in page.get("events", []):
        head += f"<p class=\"{'bad' if 'rolled back' in line or 'rollback' in line else 'muted'}\">{_e(line)}</p>"
    sections.append(_section("serving", "Serving", head))

    marks = {str(serving): "#2da44e"} if serving is not None else {}
    if versions:
        x = [str(v["version"]) for v in versions]
        plots = ""
        for metric, label in (("auc", "AUC"), ("logloss", "logloss"), ("calibration", "calibration")):
            series = {"new model": [(xi, (v.get("metrics") or {}).get(metric)) for xi, v in zip(x, versions)],
                      "baseline at push": [(xi, (v.get("baseline_metrics") or {}).get(metric))
                                           for xi, v in zip(x, versions)]}
            plots += _figure(f"versions-{metric}", charts.trend(series, label, marks),
                             f"{label} of each version on its own week's eval rows (green tick: serving)")
        sections.append(_section("versions-over-time", "Versions over time", f'<div class="plots">{plots}</div>'))
        rows = []
        for v in reversed(versions):
            m = v.get("metrics") or {}
            report = f'<a href="{_e(v["report"])}">report</a>' if v.get("report") else "–"
            rows.append([_e(v["version"]), _e(", ".join(v.get("labels") or [])) or "–", _e(v.get("state")),
                         _e(v.get("created_at")), _e(v.get(TRAINER_KEY)),
                         _e(",".join(map(str, v.get("spans") or []))), _n(m.get("auc")), _n(m.get("logloss")),
                         _n(m.get("calibration")), report])
        sections.append(_section("versions", "Versions", _table(
            ["version", "labels", "state", "pushed", "trainer", "spans", "AUC", "logloss", "calibration", "report"],
            rows)))
    if runs:
        rows = []
        for r in reversed(runs):
            ci = (f"{r['auc_diff']:+.4f} [{r['auc_diff_ci_low']:+.4f}, {r['auc_diff_ci_high']:+.4f}]"
                  if r.get("auc_diff") is not None else "–")
            outcome_class = "good" if r["outcome"].startswith("pushed") else "bad" if r.get("blocked_by") else ""
            report = f'<a href="{_e(r["report"])}">report</a>' if r.get("report") else "–"
            rows.append([_e(r.get("finished_at")), _n(r.get("span")), _e(r.get(TRAINER_KEY)), _n(r.get("auc")),
                         _n(r.get("baseline_auc")), ci,
                         f'<span class="{outcome_class}">{_e(r["outcome"])}</span>', _e(r.get("reason") or ""),
                         report])
        weeks = {}
        for r in runs:
            weeks[str(r.get("span"))] = r
        trend = {"new model": [(f"span {k}", w.get("auc")) for k, w in weeks.items()],
                 "baseline": [(f"span {k}", w.get("baseline_auc")) for k, w in weeks.items()],
                 "Bayes (best possible)": [(f"span {k}", w.get("bayes_auc")) for k, w in weeks.items()]}
        body = _figure("weeks-auc", charts.trend(trend, "AUC"), "Each week's newest run: the new model, last "
                       "week's model and the best possible on that week's eval rows.")
        body += _table(["finished", "span", "trainer", "AUC", "baseline", "AUC diff, 95% CI", "outcome", "why",
                        "report"], rows)
        sections.append(_section("weeks", "Weeks: pushed, blocked, rolled back", body))
    nav = [("serving", "Serving"), ("versions-over-time", "Over time"), ("versions", "Versions"), ("weeks", "Weeks")]
    return _page(f"Model repository: {page['model_name']}",
                 f"{_e(page['repository'])} · generated {_e(_now())}", nav, sections)
