"""The benchmark: a tool run from the checkout (`make bench`, `python -m bench`),
not part of the installed package or the image.

    __main__.py           the dispatcher: flags, section order, results file
    common.py             statistics, tables, the results file, quieting TF
    runs.py               `deepfm-tfx run` as a subprocess; the shared default runs
    pipeline.py           section: the pipeline at several sizes, cached re-runs, Beam modes, against
                          the plain-TFX reference (plain_tfx.py) run on the same data
    plain_tfx.py          the reference: what the TFX taxi template gives for this data
    scale.py              section: Trainer examples/s, memory and peak RSS against hash buckets
    learning_curve.py     section: AUC against the Bayes AUC at 100k, 500k and 2M rows
    trainer.py            section: Keras and Estimator trainers vs DeepCTR, interleaved
    parity.py             section: Keras vs Estimator trainer, AUC and speed
    serving_inprocess.py  section: the pushed SavedModel called in this process
    serving.py            section (when present): a TF Serving-compatible server over its APIs
    transformed_data.py   the Transform output as TFRecords or numpy
    loops.py              pausable training loops (Keras train function, Estimator in a child)
    deepctr_contender.py  DeepCTR 0.9.4's DeepFM as documented (requirements-bench.txt)
"""
