"""Evaluation you can see: run reports, the repository page and TensorBoard's runs.

- `run_data`: one run's report data, from ml-metadata and its artifacts.
- `html`, `charts`: HTML pages with inline SVG plots (written directly), offline.
- `publish`: where a run's report goes (pipeline root, model repository) and
  the TensorBoard log folder with readable run names and weekly scalars.
- `repository`: `deepfm-tfx models report`, one page for the repository.
"""
