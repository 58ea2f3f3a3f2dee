"""ecgjax: JAX/Flax ECG foundation models (hybrid self-supervised pretraining + probes)."""
from setuptools import find_packages, setup

setup(
    name="ecgjax",
    version="0.1.0",
    description="Pretrain ECG foundation models with hybrid self-supervised learning in JAX",
    python_requires=">=3.11",
    packages=find_packages(include=["ecgjax", "ecgjax.*", "data_pipelines", "data_pipelines.*",
                                    "configs"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "grain>=0.2.18",
        "ml_collections>=1.1",
        "absl-py",
        "numpy",
        "scipy",
        "pandas",
        "h5py",
        "wfdb>=4",
        "neurokit2",
        "crc32c",
        "protobuf",
        "tensorflow-datasets",  # only for the tf.train.Example proto (no TensorFlow import).
        "safetensors",
        "tensorboardX",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist"],
        "tf": ["tensorflow-cpu"],       # interop tests / tf.data baseline only.
        "beam": ["apache-beam"],        # data_pipelines.beam_convert (multi-machine conversion).
        "bench": ["torch", "einops"],   # PyTorch reference in benchmarks/ only.
    },
)
