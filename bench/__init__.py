"""The benchmark: a tool run from the checkout (`make bench`, `python -m bench`),
not part of the installed package or the image.

    __main__.py           the dispatcher: flags, section order, results file
    common.py             statistics, tables, the results file, quieting TF
    runs.py               `deepfm-tfx run` as a subprocess; the shared default runs
    pipeline.py           section: the pipeline at several sizes, cached re-runs, Beam modes
    trainer.py            section: Keras and Estimator trainers vs DeepCTR, interleaved
    parity.py             section: Keras vs Estimator trainer, AUC and speed
    serving_inprocess.py  section: the pushed SavedModel called in this process
    serving.py            section (when present): a TF Serving-compatible server over its APIs
    transformed_data.py   the Transform output as TFRecords, tf.data cache or numpy
    loops.py              pausable training loops (Keras train function, Estimator in a child)
    deepctr_contender.py  DeepCTR 0.9.4's DeepFM as documented (requirements-bench.txt)
"""
