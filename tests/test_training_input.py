"""The training split is parsed once and served from memory when it fits."""
from deepfm_tfx.trainer_modules import training_setup
from deepfm_tfx.trainer_modules.hparams import TrainingConfig


def test_auto_caches_a_split_that_fits_and_not_one_that_does_not(tmp_path, monkeypatch):
    (tmp_path / "part-0.gz").write_bytes(b"x" * 1000)
    (tmp_path / "part-1.gz").write_bytes(b"x" * 1000)
    pattern = str(tmp_path / "*.gz")
    assert training_setup._files_bytes([pattern]) == 2000
    assert training_setup.cache_in_memory([pattern], TrainingConfig())
    monkeypatch.setattr(training_setup, "CACHE_MAX_BYTES", 2000 * training_setup.PARSED_OVER_COMPRESSED - 1)
    assert not training_setup.cache_in_memory([pattern], TrainingConfig())
    assert training_setup.cache_in_memory([pattern], TrainingConfig(input_cache="memory"))
    assert not training_setup.cache_in_memory([pattern], TrainingConfig(input_cache="off"))
