"""The Kubeflow pipeline (pipeline.py), its local runner (local.py) and command line (cli.py)."""
