"""The trainer section: examples/s of the Keras and Estimator trainers and of
DeepCTR 0.9.4's DeepFM, all on the keras default run's Transform output, and
the eval AUC each reaches on the same held-out split.

Every contender uses the same embedding size, DNN, batch, optimizer and
learning-rate schedule. Contenders run in interleaved windows of equal
examples, and the table shows the median window. Variants of the Keras
trainer change one thing each (steps per execution, XLA, batch, input,
hash buckets) and are measured as they are: none is a model change.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence

from bench import deepctr_contender
from bench.common import machine, median, parse_list, ratio, table
from bench.loops import EstimatorLoop, KerasLoop, keras_predict, probability_predict
from bench.runs import transform_output
from bench.transformed_data import IdModulo, array_dataset, data_accessor, load_numpy, trainer_inputs

NEEDS = ("keras",)
# The Keras trainer's examples/s over the faster DeepCTR contender's, at an AUC
# no more than AUC_SLACK lower.
SPEEDUP_VS_DEEPCTR = 2.0
AUC_SLACK = 1e-3


def add_arguments(p) -> None:
    p.add_argument("--no-variants", action="store_true", help="trainer: only the two trainers and DeepCTR")
    p.add_argument("--contenders", help="trainer: comma-separated subset (keras-trainer and DeepCTR always run)")


def _optimizer(config, steps: int):
    """The trainers' optimizer and learning-rate schedule, for every contender."""
    import tensorflow as tf

    from deepfm_tfx.trainer_modules import training_setup
    return tf.keras.optimizers.Adam(training_setup.learning_rate(config, steps))


def _keras_model(inputs, steps: int, jit_compile: bool = False):
    """keras_trainer.build_model, with XLA as the one optional change."""
    from deepfm_tfx.trainer_modules import keras_trainer
    model = keras_trainer.build_model(inputs, steps)
    model.jit_compile = jit_compile  # Keras' public setter; the train function is built later
    return model


def trainer_plan(quick: bool, total_steps: int) -> Dict[str, Any]:
    # Windows of equal examples; batch-4096 contenders take a quarter of the steps.
    if quick:
        total_steps, warmup, windows = 200, 40, 4
    else:
        warmup, windows = 100, 7
    window = (total_steps - warmup) // windows
    window -= window % 20
    return {"total_steps": warmup + windows * window, "warmup_steps": warmup, "window_steps": window,
            "windows": windows, "big_batch_spe": 5, "long_spe": 40 if quick else 100,
            "examples": (warmup + windows * window) * 1024}


def variants(plan: Dict[str, Any], config, num_ids: int, hashed: bool) -> List[tuple]:
    """(name, note, keras_loop options) of each Keras trainer variant."""
    big = dict(spe=plan["big_batch_spe"], batch=4 * config.batch_size, lr=2 * config.learning_rate)
    out = [
        ("keras spe=1", "steps_per_execution 1", dict(spe=1)),
        (f"keras spe={plan['long_spe']}", f"steps_per_execution {plan['long_spe']}", dict(spe=plan["long_spe"])),
        ("keras jit_compile", "XLA on the train step (recompiles for each count of distinct rows)", dict(jit=True)),
        ("keras batch 4096", "batch 4096, lr x2 (sqrt scaling), 1/4 the steps", big),
        ("keras numpy input", "same model fed from memory as DeepCTR is", dict(dataset="numpy")),
        ("keras input not cached", "TFRecords parsed at every pass (input_cache off)", dict(dataset="uncached")),
        ("keras uncached + batch 4096", "input_cache off, batch 4096, lr x2", dict(big, dataset="uncached")),
    ]
    small = 1 << 15
    if hashed and num_ids > small:
        out += [("keras 2^15 buckets + numpy", f"hash_buckets {small} instead of {num_ids}, fed from memory",
                 dict(dataset="numpy", buckets=small)),
                ("keras 2^15 + numpy + 4096", "hash_buckets 2^15, from memory, batch 4096, lr x2",
                 dict(big, dataset="numpy", buckets=small)),
                ("keras 2^15 + 4096", "hash_buckets 2^15, shipped input, batch 4096, lr x2",
                 dict(big, buckets=small))]
    return out


def build_contenders(paths: Dict[str, str], train_np, plan: Dict[str, Any], workdir: str, with_variants: bool,
                     only: Optional[Sequence[str]] = None):
    """Each contender sees the same examples count: plan["examples"]."""
    from deepfm_tfx.trainer_modules import training_setup
    base = trainer_inputs(paths["graph"], paths["num_ids"])
    c = base.config
    accessor = data_accessor()

    def keras_loop(name, note, spe=c.steps_per_execution, batch=c.batch_size, lr=c.learning_rate,
                   jit=False, dataset="tfrecord", buckets=None):
        inputs = trainer_inputs(paths["graph"], paths["num_ids"], batch_size=batch, learning_rate=lr,
                                steps_per_execution=spe, input_cache="off" if dataset == "uncached" else "auto")
        encode = IdModulo(inputs.layout, buckets) if buckets else None
        if buckets:
            inputs.layout = dataclasses.replace(inputs.layout, num_ids=buckets)
        if dataset in ("tfrecord", "uncached"):  # as the Keras trainer reads its training split
            ds = training_setup.make_dataset(paths["train"], accessor, inputs, batch, train=True)
            if encode:
                ds = ds.map(lambda x, y: (encode(x), y)).prefetch(2)
        else:
            ds = array_dataset(encode(train_np[0]) if encode else train_np[0], train_np[1], batch)
        loop = KerasLoop(name, _keras_model(inputs, plan["examples"] // batch, jit), ds, batch, spe,
                         keras_predict, note)
        loop.encode = encode
        return loop

    def deepctr_loop(spe, note):
        encoder = deepctr_contender.Encoder(train_np[0], base.layout)
        model = deepctr_contender.build_model(base, encoder.vocabulary_sizes, spe,
                                              _optimizer(c, plan["examples"] // c.batch_size))
        loop = KerasLoop(f"deepctr-spe{spe}", model, array_dataset(encoder(train_np[0]), train_np[1], c.batch_size),
                         c.batch_size, spe, probability_predict, note)
        loop.encode = encoder
        return loop

    def estimator_loop():
        est_dir = os.path.join(workdir, "estimator-model")
        shutil.rmtree(est_dir, ignore_errors=True)
        return EstimatorLoop("estimator-trainer", paths, plan["total_steps"], est_dir,
                             "as shipped: model_fn + tf.compat.v1 Adam, TFRecord input")

    factories = [
        ("keras-trainer", lambda: keras_loop("keras-trainer", "as shipped: spe 20, batch 1024, TFRecord input "
                                                              "parsed once and cached (input_cache auto)")),
        ("estimator-trainer", estimator_loop),
        ("deepctr-spe1", lambda: deepctr_loop(1, "DeepCTR as documented: per-field label-encoded ids, "
                                                 "model.fit on numpy (spe 1)")),
        (f"deepctr-spe{c.steps_per_execution}", lambda: deepctr_loop(
            c.steps_per_execution, "the same, given the Keras trainer's steps_per_execution")),
    ]
    if with_variants:
        factories += [(name, (lambda name=name, note=note, kw=kw: keras_loop(name, note, **kw)))
                      for name, note, kw in variants(plan, c, base.layout.num_ids,
                                                     base.spec.categorical_encoding == "hash")]
    if only:
        unknown = [n for n in only if n not in {f[0] for f in factories}]
        if unknown:
            raise ValueError(f"unknown contender(s) {unknown}; known: {[f[0] for f in factories]}")
        factories = [f for f in factories if f[0] in only or f[0] == "keras-trainer" or f[0].startswith("deepctr")]
    return [make() for _, make in factories]


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    from deepfm_tfx.synthetic.generator import auc
    default = shared["default_runs"]["keras"]
    paths = transform_output(default["pipeline_root"])
    plan = trainer_plan(args.quick, 1500)
    print(f"  loading the Transform output of {default['pipeline_root']}", flush=True)
    base = trainer_inputs(paths["graph"], paths["num_ids"])
    train_np = load_numpy(paths["train"], base)
    eval_np = load_numpy(paths["eval"], base)
    contenders = build_contenders(paths, train_np, plan, args.workdir, with_variants=not args.no_variants,
                                  only=parse_list(args.contenders) if args.contenders else None)
    print(f"  {len(contenders)} contenders x {plan['examples']:,} examples each; windows of "
          f"{plan['window_steps'] * 1024:,} examples, interleaved", flush=True)

    def steps(c, n):
        return n * 1024 // c.batch_size

    times: Dict[str, List[float]] = {c.name: [] for c in contenders}
    warm: Dict[str, float] = {}
    for c in contenders:
        t = time.perf_counter()
        c.step(steps(c, plan["warmup_steps"]))
        warm[c.name] = time.perf_counter() - t
    for r in range(plan["windows"]):
        # Rotated order so no contender always follows the same neighbour.
        for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
            t = time.perf_counter()
            c.step(steps(c, plan["window_steps"]))
            times[c.name].append(time.perf_counter() - t)
    rows = []
    for c in contenders:
        encode = getattr(c, "encode", None)
        probs = c.predict(encode(eval_np[0]) if encode else eval_np[0])
        c.close()
        window_examples = plan["window_steps"] * 1024
        rates = [window_examples / t for t in times[c.name]]
        rows.append({"name": c.name, "note": c.note, "batch_size": c.batch_size,
                     "examples_per_s": median(rates), "min_examples_per_s": min(rates),
                     "max_examples_per_s": max(rates), "warmup_seconds": round(warm[c.name], 2),
                     "train_examples": steps(c, plan["total_steps"]) * c.batch_size,
                     "eval_auc": auc(eval_np[1], probs), "eval_examples": int(len(eval_np[1]))})
    by = {r["name"]: r for r in rows}
    deepctr_best = max((r for r in rows if r["name"].startswith("deepctr")), key=lambda r: r["examples_per_s"])
    keras = by["keras-trainer"]
    documented = by["deepctr-spe1"]
    for r in rows:
        r["vs_deepctr_documented"] = ratio(r["examples_per_s"], documented["examples_per_s"])
        r["vs_deepctr_best"] = ratio(r["examples_per_s"], deepctr_best["examples_per_s"])
        r["auc_minus_deepctr_best"] = r["eval_auc"] - deepctr_best["eval_auc"]
    speedup = keras["vs_deepctr_best"]
    met = speedup >= SPEEDUP_VS_DEEPCTR and keras["eval_auc"] >= deepctr_best["eval_auc"] - AUC_SLACK
    return {"plan": plan, "pipeline_root": default["pipeline_root"], "train_rows": int(len(train_np[1])),
            "contenders": rows, "deepctr_reference": deepctr_best["name"],
            "target": {"keras_trainer_vs_deepctr": speedup, "auc_gap": keras["eval_auc"] - deepctr_best["eval_auc"],
                       "keras_trainer_vs_deepctr_documented": keras["vs_deepctr_documented"],
                       "verdict": "met" if met else "NOT met",
                       "rule": f">= {SPEEDUP_VS_DEEPCTR}x the faster DeepCTR contender's examples/s, "
                               f"AUC not lower by more than {AUC_SLACK}"},
            "machine": machine()}


def show(res: Dict[str, Any]) -> None:
    rows = [[r["name"], r["batch_size"], r["examples_per_s"], r["min_examples_per_s"], r["max_examples_per_s"],
             r["vs_deepctr_documented"], r["vs_deepctr_best"], r["eval_auc"], r["warmup_seconds"]]
            for r in res["contenders"]]
    print(table(["contender", "batch", "ex/s (median)", "min", "max", "x deepctr-spe1", f"x {res['deepctr_reference']}",
                 "eval AUC", "warm-up s"], rows,
                title=f"\nTrainer throughput ({res['plan']['windows']} interleaved windows of "
                      f"{res['plan']['window_steps'] * 1024:,} examples after "
                      f"{res['plan']['warmup_steps'] * 1024:,}; AUC after {res['plan']['examples']:,} examples)"))
    for r in res["contenders"]:
        print(f"  {r['name']}: {r['note']}")
    t = res["target"]
    print(f"  target Keras trainer >= {SPEEDUP_VS_DEEPCTR:g}x DeepCTR at equal AUC: "
          f"{t['keras_trainer_vs_deepctr']:.2f}x the faster DeepCTR "
          f"({t['keras_trainer_vs_deepctr_documented']:.2f}x DeepCTR as documented), "
          f"AUC gap {t['auc_gap']:+.4f} -> {t['verdict']}")
