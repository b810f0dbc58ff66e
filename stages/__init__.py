"""DVC stage entry points: one module per stage in dvc.yaml, each a typed `run` and a thin `main`."""
