"""The device side (ARCHITECTURE §7): over-the-air model updates for a station, and its forecast.

- `trust`: TUF repository metadata (root, targets, snapshot, timestamp) written on publish, and
  the keys behind it (`skyedge keys init`).
- `fetch`: HTTP(S)/file downloads for python-tuf's updater and for model objects, with resume.
- `agent`: pull, verify, canary, atomic swap, health check, roll back, report status.
- `predict`: the four-hour forecast from the active model.

Imports stdlib, numpy, onnxruntime, pillow, cryptography, python-tuf and urllib3 only (plus
boto3, lazily, to write a status report to S3): never torch, prefect, dvc or pandas.
"""

from skyedge import __version__

AGENT_VERSION = __version__
