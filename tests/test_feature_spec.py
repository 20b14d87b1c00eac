import os
import textwrap

import pytest

from deepfm_tfx.schemas import feature_spec
from deepfm_tfx.schemas.feature_spec import FeatureSpecError


def write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_shipped_specs_load():
    synthetic = feature_spec.load(feature_spec.DEFAULT_SPEC)
    assert synthetic.label == "label"
    assert len(synthetic.categorical) == 26 and len(synthetic.numerical) == 13
    assert os.path.isfile(synthetic.schema_file)
    kaggle = feature_spec.load(os.path.join(feature_spec.SPEC_DIR, "criteo_kaggle.yaml"))
    assert kaggle.delimiter == "\t" and not kaggle.header and kaggle.column_names[0] == "label"


def test_multivalent_spec_round_trips(tmp_path):
    path = write(tmp_path, """
        label: clicked
        categorical: [user]
        numerical: [age]
        multivalent: [{name: genres, separator: "|", max_length: 4}]
        """)
    spec = feature_spec.load(path)
    assert spec.multivalent[0].separator == "|" and spec.multivalent[0].max_length == 4
    assert feature_spec.FeatureSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("body, complaint", [
    ("categorical: [a]\n", "'label'"),
    ("label: y\n", "no feature columns"),
    ("label: y\ncategorical: [a, a]\n", "more than once"),
    ("label: y\ncategorical: [a]\nformat: orc\n", "'format'"),
    ("label: y\ncategorical: [a]\npartitions: [dt]\n", "'partitions'"),
    ("label: y\ncategorical: [a]\nheader: false\n", "'column_names' is required"),
    ("label: y\ncategorical: [a]\nheader: false\ncolumn_names: [y]\n", "not in 'column_names'"),
    ("label: y\ncategorical: [a]\ncategorical_encoding: onehot\n", "'categorical_encoding'"),
    ("label: y\ncategorical: [a]\noov_buckets: 0\n", "'oov_buckets'"),
    ("label: y\ncategorical: [a]\nschema: missing.pbtxt\n", "does not exist"),
    ("label: y\ncategorical: [a]\nlabels: x\n", "unknown key"),
    ("label: y\nmultivalent: [{name: g, separator: ','}]\n", "separator"),
    ("label: y\ncategorical: a\n", "must be a list"),
    ("- just\n- a list\n", "mapping"),
])
def test_bad_specs_are_rejected_with_file_and_key(tmp_path, body, complaint):
    path = write(tmp_path, body)
    with pytest.raises(FeatureSpecError) as e:
        feature_spec.load(path)
    assert path in str(e.value) and complaint in str(e.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(FeatureSpecError, match="not found"):
        feature_spec.load(str(tmp_path / "nope.yaml"))
