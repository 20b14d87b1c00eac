"""`deepfm-tfx experiment check-rule`: the decision rule checked against a planted truth, without
the server: how often it decides wrongly, how often it finds a better model, how often it
catches a broken split.

The world: the synthetic generator's planted truth gives each candidate its true click
probability p. A request is one user with `candidates` candidates; a model scores them
as the true logit plus Gaussian noise (its spread sets the model's quality), the top
`shown` are shown, and the item at position k is clicked with probability
p / log2(k + 1) (the examination factor). A canary "better by a true CTR lift L" is a
model whose noise is chosen so that its expected CTR of shown items is (1 + L) times
stable's, over the same candidate pool.

Each run sends users one by one, each to the canary with the split's share, and reads
the rule after every `look_every` users (continuous monitoring), until it decides, the
split alarm fires, or the planned sample (`max_outcomes_per_arm` impressions per arm)
is reached. The rule is decision.decide's for the `ctr` metric, vectorised over runs:
the log ratio of clicks per request (with `shown` impressions per request, the same as
the CTR's) with its mSPRT confidence sequence, and the chi-square sample-ratio test.
Each user sends one request here, so requests are independent and the per-request
variance is the clustered one the server's report computes.

numpy and scipy only: 200 runs of each scenario take seconds to a few minutes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from deepfm_tfx.experiments import statistics
from deepfm_tfx.experiments.config import Rule
from deepfm_tfx.experiments.report import examination

PROMOTED, ROLLED_BACK, SRM_ALARM, EXPIRED = "promoted", "rolled back", "srm alarm", "expired"


@dataclasses.dataclass
class World:
    """What check-rule simulates: the traffic and the models."""
    candidates: int = 100
    shown: int = 10
    pool_requests: int = 2000     # candidate lists per model; runs draw requests from them
    stable_noise: float = 1.0     # stable's score = true logit + N(0, stable_noise^2)
    look_every: int = 500         # users between two readings of the report
    canary_share: float = 0.5     # the configured split
    broken_share: float = 0.52    # the canary's real share in the broken-split runs
    lifts: Tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.06)  # the power curve's (0 and the sized lift added)
    seed: int = 42


def wilson(successes: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson's score interval of a binomial proportion."""
    if n == 0:
        return (math.nan, math.nan)
    z = statistics.z_of(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


class Pool:
    """Candidate lists from the planted truth, and what a model of a given noise shows from them."""

    def __init__(self, world: World):
        from deepfm_tfx.synthetic import generator

        rng = np.random.default_rng([world.seed, 1])
        truth = generator.GroundTruth.create(world.seed)
        p = truth.sample(rng, world.pool_requests * world.candidates)["_prob"]
        self.p = p.reshape(world.pool_requests, world.candidates)
        self.logit = np.log(self.p) - np.log1p(-self.p)
        self.shown = world.shown
        self.exam = examination(np.arange(1, world.shown + 1))
        # Each model errs in its own way: independent noise per model, fixed per pool (common random numbers).
        self._noise = {name: rng.standard_normal(self.p.shape) for name in ("stable", "canary")}

    def click_probabilities(self, noise: float, model: str) -> np.ndarray:
        """[requests, shown]: each shown item's click probability, best-scored first."""
        scores = self.logit + noise * self._noise[model]
        top = np.argpartition(-scores, self.shown - 1, axis=1)[:, :self.shown]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(self.p, top, axis=1) * self.exam

    def canary_for_lift(self, stable: np.ndarray, lift: float) -> Tuple[np.ndarray, float, float]:
        """(click probabilities, noise, true lift) of the canary whose CTR is (1 + lift) x stable's."""
        target = stable.mean() * (1 + lift)
        low, high = 0.0, 8.0
        best = self.click_probabilities(low, "canary")
        if best.mean() < target:
            raise ValueError(f"no model reaches a CTR lift of {lift:+.1%} over stable: even the truth gives "
                             f"{best.mean() / stable.mean() - 1:+.1%}; use a lower --stable-noise or a smaller lift")
        for _ in range(40):
            middle = (low + high) / 2
            if self.click_probabilities(middle, "canary").mean() > target:
                low = middle
            else:
                high = middle
        chosen = self.click_probabilities(low, "canary")
        return chosen, low, float(chosen.mean() / stable.mean() - 1)


def simulate(stable: np.ndarray, canary: np.ndarray, rule: Rule, world: World, runs: int, share: float,
             rng: np.random.Generator, block: int = 20) -> Dict[str, Any]:
    """`runs` experiments between two pools of click probabilities; what each ended with."""
    shown = stable.shape[1]
    planned = math.ceil((rule.max_outcomes_per_arm or 100_000) / shown)  # requests per arm
    users = int(math.ceil(planned / min(share, 1 - share) * 1.05 / world.look_every)) * world.look_every
    looks = np.arange(world.look_every, users + 1, world.look_every) - 1
    ends: List[str] = []
    decided_at: List[int] = []
    for start in range(0, runs, block):
        b = min(block, runs - start)
        to_canary = rng.random((b, users)) < share
        request = rng.integers(len(stable), size=(b, users))
        probabilities = np.where(to_canary[..., None], canary[request], stable[request])
        clicks = (rng.random(probabilities.shape) < probabilities).sum(axis=2).astype(np.float64)
        del probabilities
        sums = {}
        for arm, mine in (("stable", ~to_canary), ("canary", to_canary)):
            x = clicks * mine
            sums[arm] = (np.cumsum(mine, axis=1)[:, looks].astype(np.float64), np.cumsum(x, axis=1)[:, looks],
                         np.cumsum(x * x, axis=1)[:, looks])
        outcome = _read_rule(sums, rule, world.canary_share, shown, planned)
        ends += outcome[0]
        decided_at += outcome[1]
    counts = {end: ends.count(end) for end in (PROMOTED, ROLLED_BACK, SRM_ALARM, EXPIRED)}
    return {"runs": runs, "ends": counts, "median_users_at_end": float(np.median(decided_at)) if decided_at else None}


def _read_rule(sums, rule: Rule, canary_share: float, shown: int, planned: int) -> Tuple[List[str], List[int]]:
    """decision.decide's reading for the ctr metric at every look of every run; each run's first event."""
    n_s, s_s, q_s = sums["stable"]
    n_c, s_c, q_c = sums["canary"]
    with np.errstate(divide="ignore", invalid="ignore"):
        m_s, m_c = s_s / n_s, s_c / n_c
        v_s = (q_s - n_s * m_s ** 2) / (n_s - 1) / n_s   # variance of each arm's mean clicks per request
        v_c = (q_c - n_c * m_c ** 2) / (n_c - 1) / n_c
        log_lift = np.log(m_c / m_s)
        variance = v_c / m_c ** 2 + v_s / m_s ** 2  # statistics.log_ratio's delta method
        half = statistics.msprt_half_width(variance, math.log1p(rule.sized_lift), rule.alpha)
    p_srm = statistics.srm_p_value(np.stack([n_s, n_c], axis=-1), [1 - canary_share, canary_share])
    enough = ((np.minimum(n_s, n_c) * shown >= rule.min_outcomes_per_arm)
              & (np.minimum(s_s, s_c) >= rule.min_clicks_per_arm) & np.isfinite(half))
    srm = (n_s + n_c >= 10) & (p_srm < rule.srm_p_value)
    promote = ~srm & enough & (log_lift - half > math.log1p(rule.min_effect))
    roll_back = ~srm & enough & (log_lift + half < 0)
    in_plan = np.minimum(n_s, n_c) <= planned
    ends, at = [], []
    for r in range(n_s.shape[0]):
        events = np.flatnonzero((srm[r] | promote[r] | roll_back[r]) & in_plan[r])
        if len(events):
            i = events[0]
            ends.append(SRM_ALARM if srm[r, i] else PROMOTED if promote[r, i] else ROLLED_BACK)
        else:
            i = min(int(np.flatnonzero(in_plan[r])[-1]) + 1, n_s.shape[1] - 1)
            ends.append(EXPIRED)
        at.append(int(n_s[r, i] + n_c[r, i]))
    return ends, at


def check(rule: Rule, runs: int = 200, world: Optional[World] = None, progress=print) -> Dict[str, Any]:
    """The three rates with their intervals, whether each is inside its bound, and the power curve."""
    world = world or World()
    if rule.max_outcomes_per_arm is None:
        raise ValueError("check-rule needs a planned sample: --max-outcomes")
    pool = Pool(world)
    stable = pool.click_probabilities(world.stable_noise, "stable")
    rng = np.random.default_rng([world.seed, 2])
    base_ctr = float(stable.mean())
    progress(f"world: {world.candidates} candidates, top {world.shown} shown; stable's CTR of shown items "
             f"{base_ctr:.4f} ({stable.sum(axis=1).mean():.3f} clicks per request); planned sample "
             f"{rule.max_outcomes_per_arm:,} impressions per arm; read every {world.look_every} users")

    def rate(result, ends, bound, at_most):
        k = sum(result["ends"][e] for e in ends)
        value = k / result["runs"]
        low, high = wilson(k, result["runs"])
        return {"rate": value, "low": low, "high": high, "runs": result["runs"], "bound": bound,
                "at_most" if at_most else "at_least": bound,
                "inside": value <= bound if at_most else value >= bound, "ends": result["ends"],
                "median_users_at_end": result["median_users_at_end"]}

    aa = simulate(stable, stable, rule, world, runs, world.canary_share, rng)
    false_rate = rate(aa, (PROMOTED, ROLLED_BACK), rule.alpha, True)
    progress(f"A/A: {_line(false_rate)} decided (false decisions)")
    canary, noise, true_lift = pool.canary_for_lift(stable, rule.sized_lift)
    ab = simulate(stable, canary, rule, world, runs, world.canary_share, rng)
    power = dict(rate(ab, (PROMOTED,), 0.8, False), true_lift=true_lift, canary_noise=noise)
    progress(f"A/B at the sized lift {rule.sized_lift:+.1%}: {_line(power)} promoted (power)")
    broken = simulate(stable, stable, rule, world, runs, world.broken_share, rng)
    srm = dict(rate(broken, (SRM_ALARM,), 0.95, False), real_share=world.broken_share)
    progress(f"broken split {world.broken_share:g} vs {world.canary_share:g}: {_line(srm)} raised the SRM alarm")
    curve = []
    for lift in sorted(set(world.lifts) | {0.0, rule.sized_lift}):
        if lift == 0.0:
            result, got = aa, 0.0
        elif lift == rule.sized_lift:
            result, got = ab, true_lift
        else:
            pools = pool.canary_for_lift(stable, lift)
            result, got = simulate(stable, pools[0], rule, world, runs, world.canary_share, rng), pools[2]
        point = rate(result, (PROMOTED,), 0.0, False)
        curve.append({"true_lift": got, "promoted": point["rate"], "low": point["low"], "high": point["high"],
                      "rolled_back": result["ends"][ROLLED_BACK] / runs,
                      "median_users_at_end": result["median_users_at_end"]})
        progress(f"  power curve: true lift {got:+.2%}: promoted {point['rate']:.3f} "
                 f"[{point['low']:.3f}, {point['high']:.3f}]")
    return {"rule": dataclasses.asdict(rule), "world": dataclasses.asdict(world), "stable_ctr": base_ctr,
            "false_decision_rate": false_rate, "power": power, "srm_alarm_rate": srm, "power_curve": curve,
            "inside_bounds": false_rate["inside"] and power["inside"] and srm["inside"]}


def _line(r: Dict[str, Any]) -> str:
    return (f"{r['rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}] of {r['runs']} runs "
            f"({'at most' if 'at_most' in r else 'at least'} {r['bound']:g}: {'ok' if r['inside'] else 'OUTSIDE'})")


def format_text(result: Dict[str, Any]) -> str:
    rows = [("false decisions (A/A)", result["false_decision_rate"]),
            (f"power at {result['rule']['sized_lift']:+.1%} lift", result["power"]),
            (f"SRM alarms ({result['srm_alarm_rate']['real_share']:g} split)", result["srm_alarm_rate"])]
    lines = [f"{'rate':<26}value  95% interval    bound"]
    lines += [f"{label:<26}{_row(r)}" for label, r in rows]
    lines += ["", "power curve: true CTR lift -> share promoted within the planned sample (rolled back)"]
    for point in result["power_curve"]:
        lines.append(f"  {point['true_lift']:+7.2%}  {point['promoted']:.3f} [{point['low']:.3f}, {point['high']:.3f}]"
                     f"  ({point['rolled_back']:.3f})")
    return "\n".join(lines)


def _row(r: Dict[str, Any]) -> str:
    bound = f"{'<=' if 'at_most' in r else '>='} {r['bound']:g}"
    return f"{r['rate']:.3f}  [{r['low']:.3f}, {r['high']:.3f}]  {bound:<9} {'ok' if r['inside'] else 'OUTSIDE'}"
