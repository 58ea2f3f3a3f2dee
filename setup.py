"""ecgjax: JAX/Flax ECG foundation models (hybrid self-supervised pretraining + probes)."""
from setuptools import find_packages, setup

setup(
    name="ecgjax",
    version="0.1.0",
    description="Pretrain ECG foundation models with hybrid self-supervised learning in JAX",
    python_requires=">=3.11",
    packages=find_packages(include=["ecgjax", "ecgjax.*", "data_pipelines", "data_pipelines.*",
                                    "configs", "ecgjax_reference"]),
    # What the runtime imports. Upper bounds are the tested ranges: CI runs jax 0.10.x on
    # Python 3.11, the GPU machines jax 0.11.2 / flax 0.12.10 on 3.12. constraints.txt pins
    # every package of the CI run (pip install -e . -c constraints.txt).
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12,<0.13",
        "grain>=0.2.18,<0.3",
        "ml_collections>=1.1",
        "absl-py",
        "numpy",
        "scipy",
        "pandas",
        "h5py",
        "wfdb>=4",
        "crc32c",
        "protobuf",
        "tensorflow-datasets",  # only for the tf.train.Example proto (no TensorFlow import).
        "safetensors",
        "tensorboardX",
        "tqdm",
        "matplotlib",
        "fsspec",  # gs:// and other URLs wherever a path is taken (ecgjax/storage.py).
        "gcsfs",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "tensorboard", "gcp-storage-emulator"],
        "viz": ["tensorboard"],         # `tensorboard --logdir=WORKDIR` (the writer is tensorboardX).
        "tf": ["tensorflow-cpu"],       # interop tests / tf.data baseline only.
        "beam": ["apache-beam"],        # data_pipelines.beam_convert (multi-machine conversion).
        "bench": ["torch", "einops", "neurokit2"],  # benchmarks/ only (PyTorch twin, R-peak baselines).
    },
    entry_points={"console_scripts": [
        "ecgjax-convert=data_pipelines.convert:main",
        "ecgjax-embed=ecgjax.inference.embed:main",
    ]},
)
