"""Package layout; the metadata lives in pyproject.toml.

``kernels/`` is a top-level folder of the repository (the user's layout) installed as the
subpackage ``ssr_engine.kernels``.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["ssr_engine", "ssr_engine.*"]) + ["ssr_engine.kernels"],
    package_dir={"ssr_engine.kernels": "kernels"},
)
