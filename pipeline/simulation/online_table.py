"""The online phase as a table, one line per week: offline AUC gain beside online CTR lift."""
from __future__ import annotations

from typing import Any, Dict, List

HEADER = (f"{'week':>4}  {'bad':<16} {'stable':<10} {'canary':<10} {'users s/c':>11} {'offline auc gain':>16}  "
          f"{'online CTR lift (always-valid 95%)':<34} {'true lift':>9}  {'decision':<12} {'right':<5} {'serving':<10}")


def format_table(table: List[Dict[str, Any]]) -> str:
    """The online phase, one line per week."""
    def f(v, spec=".4f"):
        return "-" if v is None else format(v, spec)

    lines = [HEADER]
    for r in table:
        e = r.get("experiment")
        gain = f(r.get("auc_gain"), "+.4f")
        if not e:
            lines.append(f"{r['week']:>4}  {r['bad'] or '-':<16} {f(r.get('serving_version'), 'd'):<10} {'-':<10} "
                         f"{'-':>11} {gain:>16}  {'-':<34} {'-':>9}  {'-':<12} {'-':<5} "
                         f"{f(r.get('serving_version'), 'd'):<10}")
            continue
        lift = e["ctr_lift"]
        online = "-" if lift["value"] is None else (f"{lift['value']:+.2%} [{lift['low']:+.2%}, {lift['high']:+.2%}]")
        users = f"{e['users']['stable']}/{e['users']['canary']}"
        right = "-" if r["decision_correct"] is None else ("yes" if r["decision_correct"] else "NO")
        lines.append(f"{r['week']:>4}  {r['bad'] or '-':<16} {e['stable_version']:<10} {e['canary_version']:<10} "
                     f"{users:>11} {gain:>16}  {online:<34} {f(r['true_ctr_lift'], '+.2%'):>9}  {r['decision']:<12} "
                     f"{right:<5} {f(r.get('serving_version'), 'd'):<10}")
    return "\n".join(lines)
