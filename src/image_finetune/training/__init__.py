"""The training code, one job per module: the classifier and its parts (model), augmentation,
the frozen rung plan (plan), the runtime (runtime) and the replicas (distribute), the feature
cache (features), checkpoints and resume (checkpoints), the L-BFGS head solver (head_solver)
and fitting one rung (fit)."""
