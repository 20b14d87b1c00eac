"""Beam's SDK worker main for the local worker processes of components/beam_workers.py.

Beam's own, except that it counts the records it reads for the console's
progress line (deepfm_tfx.progress), and that the process ends without the
interpreter's teardown: there Transform's TF functions were collected after the
modules their __del__ needs, and each printed a harmless traceback on the
user's terminal.
"""
import os
import sys

if __name__ == "__main__":
    from deepfm_tfx import progress
    last_count = progress.publish_worker_reads()
    from deepfm_tfx.components import beam_caches
    beam_caches.install()
    from apache_beam.runners.worker import sdk_worker_main
    sdk_worker_main.main(sys.argv)  # returns once the runner has closed the control channel
    last_count()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
