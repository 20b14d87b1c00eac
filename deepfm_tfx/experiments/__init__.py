"""Online A/B tests between a model's `stable` and `canary` versions.

    config.py          an experiment: what it splits, how it logs, the decision rule (experiment.json)
    split.py           a request key -> its arm, by a salted hash: the same key always gets the same arm
    prediction_log.py  durable, bounded, rotated JSON-lines files (predictions and outcomes)
    router.py          the hook `deepfm-tfx serve` calls: routes un-pinned requests, logs them, takes outcomes
    outcomes.py        outcomes parsed and checked, and joined to predictions by request id
    statistics.py      estimates with confidence intervals (cluster-robust means and ratios, DeLong AUC)
    decision.py        the rule: promote, keep running or roll back
    report.py          per-arm metrics, their difference, the decision; applying it through the label moves
    skew.py            TFDV statistics of what was served vs the training data

Nothing here imports TensorFlow except skew.py (TFDV).
"""
