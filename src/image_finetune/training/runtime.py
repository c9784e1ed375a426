"""The Keras backend's runtime, set up in one place: what devices it sees (every branch on
the backend lives here), the seeds, determinism on a CPU and the precision policy."""

from __future__ import annotations

import functools

import keras

from image_finetune.errors import ConfigError


def accelerator_available() -> bool:
    """Whether the current Keras backend sees a GPU."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def configure_backend(seed: int, mixed_precision: str) -> bool:
    """Seed everything, make CPU runs deterministic, choose the precision (``auto``: mixed on
    a GPU); return whether it is mixed. Call it once the devices are chosen
    (:func:`image_finetune.training.distribute.start_replicas`)."""
    keras.utils.set_random_seed(seed)
    gpu = accelerator_available()
    if keras.config.backend() == "tensorflow" and not gpu:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    mixed = mixed_precision == "on" or (mixed_precision == "auto" and gpu)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if mixed else "float32")
    return mixed


@functools.cache
def split_host(backend: str, host_devices: int) -> None:
    """Split the CPU into ``host_devices`` logical devices (before the runtime starts)."""
    if backend == "jax":
        import jax

        jax.config.update("jax_num_cpu_devices", host_devices)
        return
    if backend != "tensorflow":
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * host_devices
        )
    except RuntimeError as exc:  # the runtime started before: the split is fixed by now
        raise ConfigError(
            f"train.host_devices {host_devices}: TensorFlow's devices were set "
            f"up before training started in this process ({exc})"
        ) from exc


def local_devices(backend: str) -> int:
    """How many devices this process could train on: GPUs, else (logical) CPUs."""
    if backend == "jax":
        import jax

        return len(jax.devices())
    if backend != "tensorflow":
        return 1
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpu = tf.config.list_physical_devices("CPU")[0]
    return len(gpus) or len(tf.config.get_logical_device_configuration(cpu) or [cpu])
