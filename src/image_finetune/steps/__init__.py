"""The step layer: one module per pipeline step, one function per module.

Each step takes typed params and paths, does all the file and registry I/O of its step,
and calls the pure domain functions below it. Each declares what it reads and writes in
its catalog entry in :mod:`.spec`. The CLI commands, the dvc.yaml stages and the Kubeflow
components above it are thin adapters: each calls exactly one step.
"""
