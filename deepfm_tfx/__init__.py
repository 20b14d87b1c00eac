"""deepfm-tfx: weekly TFX retraining of a DeepFM click-through-rate model.

The one import root. `deepfm_tfx.pipeline`, `.components`, `.trainer_modules`
and `.schemas` are the design card's top-level folders, mapped in by setup.py;
the modules here hold the contracts those folders share and the tools around
the pipeline (model repository, synthetic data and simulation).
"""
