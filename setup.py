"""gasp-plugin: Geometric-Aware Spatial Priors as a plug-in for VLM fine-tuning."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

EXTRAS = {
    "deepspeed": ["deepspeed>=0.15"],
    "flash": ["flash-attn>=2.5"],  # GPU only: builds from source against CUDA
    "video": ["decord>=0.6"],
    "scannetpp": ["lz4>=4"],  # ScanNet++ iPhone depth.bin streams compressed with lz4 (uint16 mm)
}
EXTRAS["test"] = [
    "pytest>=7",
    "deepspeed>=0.15",
    "decord>=0.6",
    "av>=12",  # writes the mp4 the decord tests read
    "lz4>=4",  # reads and writes the lz4 depth.bin of the ScanNet++ reader tests
]

setup(
    name="gasp-plugin",
    version="0.1.0",
    description="GASP: teach a VLM's language model 3D geometry with per-layer correspondence heads",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # recipes/ ships inside the package as gasp_plugin.recipes, so `gasp train --recipe tiny_cpu`
    # and `gasp demo` work from a wheel as from a checkout
    packages=find_packages(include=["gasp_plugin", "gasp_plugin.*"]) + ["gasp_plugin.recipes"],
    package_dir={"gasp_plugin.recipes": "recipes"},
    package_data={
        # eval/tasks/<task>/: lmms-eval task templates and their utils.py (read by path, not imported)
        "gasp_plugin": ["assets/*/*", "assets/*/*/*", "eval/tasks/*/*"],
        "gasp_plugin.recipes": ["*.yaml", "*.json", "*.sh"],
    },
    include_package_data=True,
    # lower bounds: what the code needs (transformers 5.4 first ships the PIL Qwen2-VL image
    # processor) or the lowest release the tests have run against (peft 0.18.1 and accelerate
    # 1.11 in the LLaMA-Factory test); README.md, "Compatibility", lists what runs where
    install_requires=[
        "torch>=2.4",
        "transformers>=5.4,<6",
        "peft>=0.18",
        "accelerate>=1.11",
        "tokenizers>=0.21",
        "numpy>=1.24",
        "einops>=0.7",
        "safetensors>=0.4",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.7",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["gasp=gasp_plugin.cli:main"]},
)
