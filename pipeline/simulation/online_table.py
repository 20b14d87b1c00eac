"""The online phase as a table, one line per week."""
from __future__ import annotations

from typing import Any, Dict, List


def format_table(table: List[Dict[str, Any]]) -> str:
    """The online phase, one line per week."""
    def f(v, spec=".4f"):
        return "-" if v is None else format(v, spec)

    lines = [f"{'week':>4}  {'bad':<16} {'stable':<10} {'canary':<10} {'requests s/c':>13} {'online ll s/c (95% CI)':<40} "
             f"{'true ll s/c':>15}  {'decision':<12} {'right':<5} {'serving':<10}"]
    for r in table:
        e = r.get("experiment")
        if not e:
            lines.append(f"{r['week']:>4}  {r['bad'] or '-':<16} {f(r.get('serving_version'), 'd'):<10} "
                         f"{'-':<10} {'-':>13} {'-':<40} {'-':>15}  {'-':<12} {'-':<5} {f(r.get('serving_version'), 'd'):<10}")
            continue
        ll = e["online_logloss"]
        online = (f"{ll['stable']['value']:.4f} [{ll['stable']['low']:.4f},{ll['stable']['high']:.4f}] "
                  f"{ll['canary']['value']:.4f} [{ll['canary']['low']:.4f},{ll['canary']['high']:.4f}]")
        true = f"{r['true_logloss']['stable']:.4f} {r['true_logloss']['canary']:.4f}"
        requests = f"{e['requests']['stable']}/{e['requests']['canary']}"
        right = "-" if r["decision_correct"] is None else ("yes" if r["decision_correct"] else "NO")
        lines.append(f"{r['week']:>4}  {r['bad'] or '-':<16} {e['stable_version']:<10} {e['canary_version']:<10} "
                     f"{requests:>13} {online:<40} {true:>15}  {r['decision']:<12} {right:<5} "
                     f"{f(r.get('serving_version'), 'd'):<10}")
    return "\n".join(lines)
