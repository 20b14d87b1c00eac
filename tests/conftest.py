import os
import sys

# Quiet TF before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHARED_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "..", "shared", "data", "criteo_sample.txt")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs the real pipeline on small data (minutes)")
